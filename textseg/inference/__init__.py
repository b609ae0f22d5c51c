"""Use a trained model: :class:`Segmenter` (load a checkpoint, a saved folder or a Hub model; predict; save; share).

See ``docs/architecture.md`` (the ``inference`` layer sits on ``methods``, ``engine``, ``data`` and ``models``).
"""

from textseg.inference.segmenter import Segmenter

__all__ = ["Segmenter"]
