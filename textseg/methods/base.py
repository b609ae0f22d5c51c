"""The thin base LightningModule of every method: networks, loss, AdamW + cosine (``docs/methods.md`` §7).

Subclasses implement ``training_step``; the semi-supervised ones share their EMA teacher through
:class:`~textseg.methods.teacher.TeacherStudentModule`. Forward passes and evaluation are in
:class:`~textseg.methods.evaluation.Evaluation`, run plumbing and options in :class:`~textseg.methods.runtime.RunHooks`.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from textseg.errors import check_range
from textseg.methods.evaluation import Evaluation
from textseg.models import build_core
from textseg.models.encoders import TextEncoder
from textseg.ops.losses import build_seg_loss

#: Base arguments passed on to :func:`~textseg.models.build_core` by name.
CORE_ARGS = ("vision_checkpoint", "use_padding_mask", "guide_alpha", "use_eca", "project_dim")


class TextSegModule(Evaluation):
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
        for name, value, low in (
            ("max_length", max_length, 1),
            ("text_cache_size", text_cache_size, 0),
            ("project_dim", project_dim, 1),
            ("weight_decay", weight_decay, 0),
            ("min_lr", min_lr, 0),
        ):
            check_range(name, value, low)
        check_range("guide_alpha", guide_alpha)
        check_range("lr", lr, 0, open_low=True)
        check_range("lr_t_max", lr_t_max, 1, optional=True)
        super().__init__(**kwargs)  # RunHooks saves every constructor argument as self.hparams
        self.configure_models()
        self.configure_losses()
        self.configure_metrics()

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

    def configure_optimizers(self) -> Any:
        """AdamW on the student only, cosine annealing per epoch to ``min_lr`` (``docs/methods.md`` §7).

        AdamW is fused (one kernel over all parameters) on CPU and CUDA: the same update as the per-parameter loop up
        to float rounding (the demo's test Dice moved from 0.585 to 0.591, within its run-to-run spread,
        ``docs/results.md`` §2), and, being fused, it skips a step flagged by the non-finite guard on the device
        (``found_inf``, :mod:`textseg.engine.guards`) without a host sync.
        """
        hp = self.hp
        params = [p for p in self.net.parameters() if p.requires_grad]
        fused = all(p.device.type in ("cpu", "cuda") for p in params)
        opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay, fused=fused or None)
        t_max = hp.lr_t_max or max(1, self.trainer.max_epochs or 1)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t_max, eta_min=hp.min_lr)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
