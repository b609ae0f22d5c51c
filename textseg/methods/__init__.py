"""Training methods: one LightningModule per method over a small base."""

from textseg.methods.base import TextSegModule
from textseg.methods.semimedref import SemiMedRefModule
from textseg.methods.supervised import SupervisedModule
from textseg.methods.textmoe import TextMoEModule

__all__ = ["SemiMedRefModule", "SupervisedModule", "TextMoEModule", "TextSegModule"]
