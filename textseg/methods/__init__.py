"""Training methods: one LightningModule per method over a small base."""

from textseg import cuda_env
from textseg.methods.base import TextSegModule
from textseg.methods.semimedref import SemiMedRefModule
from textseg.methods.supervised import SupervisedModule
from textseg.methods.textmoe import TextMoEModule

cuda_env.drop_monai_default()  # MONAI is imported now; its cuBLAS setting slows every matmul (textseg.cuda_env)

__all__ = ["SemiMedRefModule", "SupervisedModule", "TextMoEModule", "TextSegModule"]
