"""The ``textseg`` command line: Lightning's ``fit``/``validate``/``test``/``predict`` and the workflow tools.

* :mod:`textseg.cli.main` -- the entry point (:func:`main`), dispatching the workflow commands before LightningCLI;
* :mod:`textseg.cli.runner` -- runs a Lightning command and turns input errors into one line;
* :mod:`textseg.cli.lightning` -- :class:`~textseg.cli.lightning.TextSegCLI` (LightningCLI with ``--seed`` and
  ``--run_dir``);
* :mod:`textseg.cli.data` (``textseg data``), :mod:`textseg.cli.report` (``textseg report``) and
  :mod:`textseg.cli.grid` (``textseg grid``): plain argparse commands that do not import Lightning.

This is the top layer of the package (``docs/architecture.md``): nothing below it imports from here.
"""

from textseg.cli.main import main

__all__ = ["main"]
