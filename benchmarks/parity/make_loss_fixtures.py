"""Parity fixtures of the losses: the reference functions on fixed tensors (``tests/ops/fixtures/parity_losses.pt``).

* Segmentation loss: ``monai.losses.DiceCELoss`` of **MONAI 1.0.1** (the reference pin, ``docs/methods.md`` §1.4) as
  the reference code calls it -- ``DiceCELoss()`` on sigmoid probabilities (GuideDecoder, MMI-UNet, TextMoE) and
  ``DiceCELoss(sigmoid=True)`` on logits (Semi-MedRef's MMI-UNet); one output channel.
* ITCL ("PACL"): ``MMIUNet_SemiWrapper._itc_loss`` of ``aierwaixi/Semi-MedRef: engine/wrapper_semi.py``.
* TextMoE: ``TextmoeSegWrapper.distanceloss`` (differential loss) and ``frequency_domain_replace`` (frequency
  exchange, with the global RNG seeded so that its ``randperm`` is reproducible) of ``jgfiuuuu/TextMoE:
  engine/wrapper.py``.

The wrapper methods are extracted verbatim with :mod:`ast` and run as functions (the wrapper modules import PL 1.x,
torchvision and the reference models, none of which the losses use). This script does not import textseg: run it in
an environment with ``monai==1.0.1`` (textseg needs a current MONAI), e.g.::

    python -m venv /tmp/monai101 && /tmp/monai101/bin/pip install torch monai==1.0.1
    /tmp/monai101/bin/python benchmarks/parity/make_loss_fixtures.py --textmoe REF/TextMoE --semimedref REF/Semi-MedRef
"""

from __future__ import annotations

import argparse
import ast
import itertools
import math
import subprocess
import types
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[2]
SEED = 20240529


def commit_of(path: Path) -> str:
    """The snapshot's commit (``COMMIT`` file, else ``git rev-parse``)."""
    marker = path / "COMMIT"
    if marker.is_file():
        return marker.read_text().strip()
    result = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def methods_of(path: Path, cls_name: str, names: tuple[str, ...]) -> types.SimpleNamespace:
    """The named methods of class ``cls_name`` in the file ``path``, extracted verbatim and bound to a namespace."""
    tree = ast.parse(path.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls_name)
    funcs: list[ast.stmt] = [n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name in names]
    missing = set(names) - {f.name for f in funcs if isinstance(f, ast.FunctionDef)}
    assert not missing, f"{path}: {cls_name} has no {missing}"
    scope: dict[str, Any] = {"torch": torch, "F": F, "itertools": itertools, "math": math}
    exec(compile(ast.Module(body=funcs, type_ignores=[]), str(path), "exec"), scope)
    this = types.SimpleNamespace()
    for name in names:
        setattr(this, name, types.MethodType(scope[name], this))
    return this


def seg_losses(gen: torch.Generator) -> dict[str, Any]:
    """MONAI 1.0.1 ``DiceCELoss`` as the reference code calls it, on fixed logits and masks."""
    import monai
    from monai.losses import DiceCELoss

    logits = 3.0 * torch.randn(3, 1, 16, 16, generator=gen)
    mask = (torch.rand(3, 1, 16, 16, generator=gen) > 0.6).float()
    mask[2] = 0.0  # an empty mask
    return {
        "seg_logits": logits,
        "seg_mask": mask,
        "seg_dicece_probs": DiceCELoss()(logits.sigmoid(), mask),
        "seg_dicece_sigmoid": DiceCELoss(sigmoid=True)(logits, mask),
        "monai_version": monai.__version__,
    }


def itcl(semimedref: Path, gen: torch.Generator) -> dict[str, Any]:
    """Semi-MedRef's ``_itc_loss`` on fixed embeddings and positional labels (two all-zero rows)."""
    this = methods_of(semimedref / "engine" / "wrapper_semi.py", "MMIUNet_SemiWrapper", ("_itc_loss",))
    image, text = torch.randn(6, 16, generator=gen), torch.randn(6, 16, generator=gen)
    positions = (torch.rand(6, 6, generator=gen) > 0.5).float()
    positions[4:] = 0.0
    return {
        "itcl_image": image,
        "itcl_text": text,
        "itcl_positions": positions,
        "itcl_loss": this._itc_loss(image, text, 0.07, positions),
        "semimedref_commit": commit_of(semimedref),
    }


def textmoe(snapshot: Path, gen: torch.Generator) -> dict[str, Any]:
    """TextMoE's differential loss and frequency exchange on fixed tensors."""
    names = ("sim", "distanceloss", "to_frequency_domain", "to_spatial_domain", "get_high_frequency")
    this = methods_of(snapshot / "engine" / "wrapper.py", "TextmoeSegWrapper", (*names, "frequency_domain_replace"))
    experts = [torch.randn(3, 2, 8, 6, 5, generator=gen), torch.randn(3, 2, 4, 10, 12, generator=gen)]
    image = torch.randn(4, 3, 32, 40, generator=gen)
    torch.manual_seed(SEED)
    permutation = torch.randperm(image.shape[0])
    torch.manual_seed(SEED)  # frequency_domain_replace draws the same randperm
    exchanged = this.frequency_domain_replace((image, None, None), cutoff=10)[0]
    return {
        "diff_experts": experts,
        "diff_loss": this.distanceloss(experts),
        "freq_image": image,
        "freq_seed": SEED,
        "freq_permutation": permutation,
        "freq_exchanged": exchanged,
        "textmoe_commit": commit_of(snapshot),
    }


def main() -> None:
    """Write ``tests/ops/fixtures/parity_losses.pt``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--textmoe", type=Path, required=True)
    parser.add_argument("--semimedref", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "ops" / "fixtures" / "parity_losses.pt")
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(SEED)
    fixture = {"seed": SEED, **seg_losses(gen), **itcl(args.semimedref, gen), **textmoe(args.textmoe, gen)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(fixture, args.out)
    for key in ("seg_dicece_probs", "seg_dicece_sigmoid", "itcl_loss", "diff_loss"):
        print(f"{key}: {float(fixture[key]):.8g}")


if __name__ == "__main__":
    main()
