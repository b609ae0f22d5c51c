"""The thin base LightningModule of every method: networks, losses, metrics, evaluation, AdamW + cosine (§7).

Subclasses implement ``training_step``; the semi-supervised ones share their EMA teacher through
:class:`~textseg.methods.teacher.TeacherStudentModule`. Every network call goes through
:meth:`TextSegModule.forward_batch`, which always passes the batch's modality. Run plumbing and options are in
:class:`~textseg.methods.runtime.RunHooks`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from textseg.engine.runfiles import write_test_metrics
from textseg.methods.runtime import RunHooks
from textseg.models import build_core
from textseg.models.encoders import TextEncoder
from textseg.models.types import SegOutput
from textseg.ops.losses import build_seg_loss
from textseg.ops.metrics import GroupedSegMetrics, binarize_logits

#: Base arguments passed on to :func:`~textseg.models.build_core` by name.
CORE_ARGS = ("vision_checkpoint", "use_padding_mask", "guide_alpha", "use_eca", "project_dim")


class TextSegModule(RunHooks):
    """Base of all textseg methods.

    Args:
        backbone: ``"guidedecoder"``, ``"mmiunet"`` or ``"textmoe"`` (TMoE decoder with default experts).
        vision_encoder: ConvNeXt spec (``"tiny"``, ``"convnext-tiny"``, hub id or local directory).
        text_encoder: Text encoder spec (``"tiny"``, ``"minilm"``, hub id or local directory of a BERT-family model).
        vision_checkpoint: Optional original FB ConvNeXt ``.pth`` (MMI-UNet's ImageNet-22k weights).
        max_length: Tokenizer length (24 in every reference).
        use_padding_mask: Key-padding masks in text attention (``False`` reproduces the public code).
        text_cache_size: Entries of the frozen text encoder's feature cache (0 disables it).
        guide_alpha: GuideDecoder's initial alpha (0.01, Semi-MedRef's copy).
        use_eca: ECA on MMI-UNet skips.
        project_dim: ITCL projection dimension.
        loss: ``"dice_ce"`` (Dice + BCE on logits) or ``"dice_only"`` (what the papers effectively trained).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        min_lr: Cosine annealing floor.
        lr_t_max: Cosine period in epochs; ``None`` = ``trainer.max_epochs``.
        eval_teacher: Evaluate the EMA teacher instead of the student (methods with a teacher).
        **kwargs: Run options of :class:`~textseg.methods.runtime.RunHooks` (``channels_last``, ``compile``,
            ``nonfinite``).
    """

    def __init__(
        self,
        backbone: Literal["guidedecoder", "mmiunet", "textmoe"] = "guidedecoder",
        vision_encoder: str = "tiny",
        text_encoder: str = "tiny",
        vision_checkpoint: str | None = None,
        max_length: int = 24,
        use_padding_mask: bool = True,
        text_cache_size: int = 4096,
        guide_alpha: float = 0.01,
        use_eca: bool = False,
        project_dim: int = 768,
        loss: Literal["dice_ce", "dice_only"] = "dice_ce",
        lr: float = 3e-4,
        weight_decay: float = 0.01,
        min_lr: float = 1e-6,
        lr_t_max: int | None = None,
        eval_teacher: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)  # RunHooks saves every constructor argument as self.hparams
        self.configure_models()
        self.configure_losses()
        self.configure_metrics()

    @property
    def hp(self) -> Any:
        """The saved constructor arguments (``self.hparams``) with attribute access."""
        return self.hparams

    def configure_models(self) -> None:
        """Build the frozen text encoder and the trainable student network ``self.net``."""
        hp = self.hp
        self.text_encoder = TextEncoder(
            hp.text_encoder, hp.max_length, hp.use_padding_mask, cache_size=hp.text_cache_size
        )
        core_args = {k: hp[k] for k in CORE_ARGS} | self.core_kwargs()
        self.net = build_core(hp.backbone, hp.vision_encoder, self.text_encoder.hidden_size, **core_args)

    def core_kwargs(self) -> dict[str, Any]:
        """Extra keyword arguments of :func:`~textseg.models.build_core` (method-specific networks)."""
        return {}

    def configure_losses(self) -> None:
        """Build the segmentation loss (``docs/methods.md`` §1.4)."""
        self.seg_loss = build_seg_loss(self.hp.loss)

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

    def forward(
        self, image: Tensor, texts: Sequence[str], net: nn.Module | None = None, modality: Tensor | None = None
    ) -> SegOutput:
        """Run ``net`` (default: the student) on images ``[B, 1|3, H, W]``, their texts and modality codes ``[B]``.

        The modality is passed on only to cores that declare ``takes_modality`` (TextMoE's gate).
        """
        net = net or self.net
        if self.hp.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        extra = {"modality": modality} if getattr(net, "takes_modality", False) else {}
        return net(image, self.text_encoder(list(texts)), **extra)

    def forward_batch(
        self,
        part: Mapping[str, Any],
        net: nn.Module | None = None,
        image: Tensor | None = None,
        texts: Sequence[str] | None = None,
    ) -> SegOutput:
        """Run ``net`` (default: the student) on a batch part, always with the part's modality codes.

        Args:
            part: A batch dict with ``image``, ``text`` and (optionally) ``modality`` (:mod:`textseg.data.transforms`).
            net: The network to run (student by default; the teacher or :attr:`eval_net`).
            image: Images to use instead of ``part["image"]`` (e.g. a mixed strong view of the same samples).
            texts: Texts to use instead of ``part["text"]`` (e.g. augmented texts of the same samples).

        Returns:
            The network's :class:`~textseg.models.types.SegOutput`.
        """
        image = part["image"] if image is None else image
        texts = part["text"] if texts is None else texts
        return self(image, texts, net, part.get("modality"))

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

    def configure_optimizers(self) -> Any:
        """AdamW on the student only, cosine annealing per epoch to ``min_lr`` (``docs/methods.md`` §7)."""
        hp = self.hp
        params = [p for p in self.net.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        t_max = hp.lr_t_max or max(1, self.trainer.max_epochs or 1)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t_max, eta_min=hp.min_lr)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
