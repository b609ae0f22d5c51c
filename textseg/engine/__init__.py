"""Run plumbing: what a training run needs around the method (callbacks, checkpoints, guards, loggers, run files).

* :mod:`textseg.engine.checkpointing` -- safe checkpoint loading and the mid-epoch resume state;
* :mod:`textseg.engine.guards` -- the non-finite loss/gradient guard;
* :mod:`textseg.engine.loggers` -- the CSV logger;
* :mod:`textseg.engine.progress` -- one line per epoch on stdout (:class:`~textseg.engine.progress.EpochSummary`);
* :mod:`textseg.engine.wandb` -- the W&B logger and run naming;
* :mod:`textseg.engine.overlays` -- W&B image overlays;
* :mod:`textseg.engine.predictions` -- the prediction writer;
* :mod:`textseg.engine.runcard` -- ``run_card.json``;
* :mod:`textseg.engine.runfiles` -- the run folder's file names and writers.

The engine may read data files (:mod:`textseg.data.io`) and use :mod:`textseg.ops`, but never imports the methods or
the CLI (``docs/architecture.md``).
"""
