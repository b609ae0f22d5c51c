"""Pure functions of the training methods.

Text parsing and augmentation, mixing, frequency exchange, losses, metrics and the EMA teacher's update.

Nothing here knows about Lightning, datasets or files: every function takes tensors (or strings) and, where it draws
random numbers, a ``torch.Generator``. The methods (:mod:`textseg.methods`) compose them.

* :mod:`textseg.ops.text` -- positional labels parsed from the referring text;
* :mod:`textseg.ops.text_aug` -- PosAug, span mixing and the text probes' word swaps;
* :mod:`textseg.ops.boxes` / :mod:`textseg.ops.mixing` -- region boxes, T-PatchMix and pseudo-labels;
* :mod:`textseg.ops.frequency` -- TextMoE's frequency-space exchange;
* :mod:`textseg.ops.losses` -- segmentation, ITCL/PACL and differential losses;
* :mod:`textseg.ops.metrics` -- Dice and IoU, pooled and per image;
* :mod:`textseg.ops.ema` -- the teacher's momentum schedules and update.
"""
