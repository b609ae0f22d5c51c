"""Running a method's networks on batches, and evaluating them: validation, test and predict.

:class:`Evaluation` sits between the run plumbing (:class:`~textseg.methods.runtime.RunHooks`) and the methods' base
(:class:`~textseg.methods.base.TextSegModule`, which builds ``net``, ``text_encoder`` and ``seg_loss``). Every network
call goes through :meth:`Evaluation.forward_batch`, which always passes the batch's modality. Metrics are pooled and
per-image Dice/IoU and HD95 (``docs/data.md`` §10.3-10.4), per dataset for composite data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from textseg.engine.runfiles import write_test_metrics
from textseg.methods.runtime import RunHooks
from textseg.models.encoders import TextEncoder
from textseg.models.parts import PartBatchNorm2d, part_norms, run_parts
from textseg.models.types import SegOutput, TextChoice, TextFeatures
from textseg.ops.metrics import GroupedSegMetrics, binarize_logits

#: Marks :attr:`Evaluation._part_norms` as not looked up yet.
_NOT_FOUND: Any = object()

#: Texts of a batch part: ``B`` strings, their features from the text encoder, or a per-sample choice of two texts.
Texts = Sequence[str] | TextFeatures | TextChoice


class Evaluation(RunHooks):
    """Forward passes, evaluation metrics and the validation/test/predict steps of every method."""

    text_encoder: TextEncoder
    seg_loss: nn.Module
    _part_norms: list[PartBatchNorm2d] | None = _NOT_FOUND

    @property
    def hp(self) -> Any:
        """The saved constructor arguments (``self.hparams``) with attribute access."""
        return self.hparams

    def configure_metrics(self, groups: Sequence[str] = ()) -> None:
        """Pooled and per-image Dice/IoU and HD95 for validation and test (``docs/data.md`` §10.3-10.4), per dataset."""
        self.val_metrics = GroupedSegMetrics("val_", groups)
        self.test_metrics = GroupedSegMetrics("test_", groups)

    def setup(self, stage: str) -> None:
        """Per-dataset metrics for composite data (``val_dice_qata``, ...), then :meth:`RunHooks.setup`."""
        names = list(getattr(getattr(self.trainer, "datamodule", None), "dataset_names", []))
        if len(names) > 1:
            self.configure_metrics(names)
        super().setup(stage)

    @property
    def eval_net(self) -> nn.Module:
        """The network used for evaluation and prediction (student, or the teacher with ``eval_teacher``)."""
        teacher = getattr(self, "teacher", None)
        return teacher if self.hp.eval_teacher and teacher is not None else self.net

    def encode(self, texts: Texts) -> TextFeatures:
        """Text features of ``texts`` from the frozen text encoder (features are passed through)."""
        return self._encode_joined([texts])

    def forward(
        self, image: Tensor, texts: Texts, net: nn.Module | None = None, modality: Tensor | None = None
    ) -> SegOutput:
        """Run ``net`` (default: the student) on images ``[B, 1|3, H, W]``, their texts and modality codes ``[B]``.

        ``texts`` are ``B`` strings or their :class:`~textseg.models.types.TextFeatures`. The modality is passed on
        only to cores that declare ``takes_modality`` (TextMoE's gate).
        """
        net = net or self.net
        if self.hp.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        extra = {"modality": modality} if getattr(net, "takes_modality", False) else {}
        return net(image, self.encode(texts), **extra)

    def forward_batch(
        self,
        part: Mapping[str, Any],
        net: nn.Module | None = None,
        image: Tensor | None = None,
        texts: Texts | None = None,
    ) -> SegOutput:
        """Run ``net`` (default: the student) on a batch part, always with the part's modality codes.

        Args:
            part: A batch dict with ``image``, ``text`` and (optionally) ``modality`` (:mod:`textseg.data.transforms`).
            net: The network to run (student by default; the teacher or :attr:`eval_net`).
            image: Images to use instead of ``part["image"]`` (e.g. a mixed strong view of the same samples).
            texts: Texts (or their features) to use instead of ``part["text"]`` (e.g. augmented texts).

        Returns:
            The network's :class:`~textseg.models.types.SegOutput`.
        """
        image = part["image"] if image is None else image
        texts = part["text"] if texts is None else texts
        return self(image, texts, net, part.get("modality"))

    def forward_parts(
        self, parts: Sequence[tuple[Tensor, Texts, Tensor | None]], batched: bool = True
    ) -> list[SegOutput]:
        """Run the student on several batch parts ``(image, texts, modality)``: one call when the maths allows.

        With ``batched`` the parts go through the student as one concatenated batch whose BatchNorm layers keep
        each part's statistics apart (:mod:`textseg.models.parts`): the outputs, gradients and running statistics of
        separate calls in this order, in one forward and one backward; the texts of all parts are encoded in one
        text-encoder call. It falls back to separate calls when the images differ in channels, size or dtype, when
        only some parts have modality codes, or when a BatchNorm layer cannot keep parts apart (e.g. after a
        ``SyncBatchNorm`` conversion).
        """
        kinds = {(image.shape[1:], image.dtype, modality is None) for image, _, modality in parts}
        norms = self._student_norms() if batched and len(parts) > 1 and len(kinds) == 1 else None
        if norms is None:
            return [self(image, texts, self.net, modality) for image, texts, modality in parts]
        features = self._encode_joined([texts for _, texts, _ in parts])
        images, codes = [p[0] for p in parts], [p[2] for p in parts]
        return run_parts(lambda image, modality: self(image, features, self.net, modality), norms, images, codes)

    def _student_norms(self) -> list[PartBatchNorm2d] | None:
        """The student's per-part BatchNorm layers (:func:`~textseg.models.parts.part_norms`), found once per fit.

        Looked up at the first batched call of a fit, after Lightning's layer conversions (``on_fit_start`` forgets
        them), not at every step.
        """
        if self._part_norms is _NOT_FOUND:
            self._part_norms = part_norms(self.net)
        return self._part_norms  # type: ignore[return-value]

    def on_fit_start(self) -> None:
        """Forget the student's per-part BatchNorm layers: a strategy may have replaced layers (``SyncBatchNorm``)."""
        super().on_fit_start()
        self._part_norms = _NOT_FOUND

    def _encode_joined(self, parts: Sequence[Texts]) -> TextFeatures:
        """The features of every part's texts, concatenated in order, from one text-encoder call.

        Strings of every part (both candidates of a :class:`~textseg.models.types.TextChoice`) go to the encoder
        together; a choice's features are then picked per sample on the device.
        """
        strings = [p for p in parts if not isinstance(p, TextFeatures | TextChoice)]
        if len(strings) == len(parts):  # strings only: the encoder's rows are already in order
            return self.text_encoder([t for texts in strings for t in texts])
        lists: list[list[str]] = []
        for part in parts:
            if isinstance(part, TextChoice):
                lists += [part.if_true, part.if_false]
            elif not isinstance(part, TextFeatures):
                lists.append(list(part))
        encoded = self.text_encoder([t for texts in lists for t in texts]) if lists else None
        pieces = iter(encoded.split([len(texts) for texts in lists]) if encoded is not None else [])
        features = []
        for part in parts:
            if isinstance(part, TextFeatures):
                features.append(part)
            elif isinstance(part, TextChoice):
                chosen, other = next(pieces), next(pieces)
                features.append(chosen.where(part.condition, other))
            else:
                features.append(next(pieces))
        return TextFeatures.cat(features)

    def _evaluate(self, batch: dict[str, Any], prefix: str) -> Tensor:
        out = self.forward_batch(batch, self.eval_net)
        loss = self.seg_loss(out["logits"], batch["mask"])
        metrics = self.val_metrics if prefix == "val_" else self.test_metrics
        metrics.update(binarize_logits(out["logits"]), batch["mask"].long(), batch.get("dataset"))
        self.log(f"{prefix}loss", loss, batch_size=len(batch["text"]), sync_dist=True)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:  # noqa: D102
        return self._evaluate(batch, "val_")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:  # noqa: D102
        return self._evaluate(batch, "test_")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Return ``{"id", "text", "path", "probs"}``: sigmoid probabilities ``[B, 1, S, S]`` at network size."""
        out = self.forward_batch(batch, self.eval_net)
        keys = ("id", "text", "path")
        return {**{k: list(batch[k]) for k in keys}, "probs": torch.sigmoid(out["logits"].float())}

    def on_validation_epoch_end(self) -> None:
        """Log the epoch's validation metrics."""
        self.log_dict(self.val_metrics.compute())
        self.val_metrics.reset()

    def on_test_epoch_end(self) -> None:
        """Log the test metrics and write ``test_metrics.json`` in the run directory."""
        values = {k: float(v) for k, v in self.test_metrics.compute().items()}
        self.test_metrics.reset()
        self.log_dict(values)
        log_dir = self.trainer.log_dir  # a broadcast under DDP: every rank must ask, or rank 0 waits forever
        if self.trainer.is_global_zero and log_dir:
            data = getattr(getattr(self.trainer, "datamodule", None), "hparams", None) or {}
            write_test_metrics(log_dir, type(self).__name__, self.hparams, data, values)
