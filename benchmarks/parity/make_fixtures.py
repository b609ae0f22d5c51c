"""Parity fixtures: run the public reference networks and losses with seeded weights and store their outputs.

For each reference network -- MMI-UNet (``nguyenpbui/MMI-UNet``, ``MMIUNet_V2``), GuideDecoder
(``Junelin2333/LanGuideMedSeg-MICCAI2023``, ``LanGuideMedSeg``) and the TextMoE network (``jgfiuuuu/TextMoE``,
``TextmoeSeg``) -- this script

1. builds the reference network at its hard-coded full size (ConvNeXt-T 96-768, d_t 768, project_dim 768);
2. builds textseg's core of the same size, fills it with :func:`textseg.models.convert.seeded_state_dict` (a function
   of the seed, the key and the shape only), converts those weights with
   :func:`textseg.models.convert.to_reference` and loads them into the reference network with ``strict=True``;
3. runs both in fp32 eval mode on the same inputs (a 96 x 96 image batch, whose stage-4 side 3 is odd as MMI-UNet's
   hard-coded ``output_padding`` needs, and one text batch) and stores the inputs, the seed and the reference outputs
   (logits before the sigmoid, read with a forward hook on the reference's ``out`` block, and per-channel means of
   intermediate features) in ``tests/models/fixtures/<backbone>.pt``.

The hub models of the reference code are not downloaded: the ConvNeXt of GuideDecoder and TextMoE is built from the
``facebook/convnext-tiny-224`` config with random weights (then overwritten with the seeded ones), and the CXR-BERT is
replaced by a stub that returns fixed hidden states (``hidden_states[1]``, ``[2]`` and ``[-1]``, stored in the
fixture) -- the text encoder outputs are fed as fixed tensors. GuideDecoder's hard-coded spatial sizes
(``spatial_dim = [7, 14, 28, 56]`` for 224 px) are set to the 96 px sizes ``[3, 6, 12, 24]`` on the built modules.
TextMoE's ``utils/model.py`` imports matplotlib, pandas and cv2 without using them; missing ones are stubbed.

The losses are in ``make_loss_fixtures.py`` (it needs MONAI 1.0.1, the reference pin).

It also writes a reference-format Lightning checkpoint of each network (``--ckpt-dir``, large) for ``textseg
convert``. Run it outside the repository's venv, with the reference snapshots' dependencies (einops)::

    python benchmarks/parity/make_fixtures.py --mmiunet /work/scratch/ref/MMI-UNet \\
        --guidedecoder /work/scratch/ref/LanGuideMedSeg --textmoe /work/scratch/ref/TextMoE --ckpt-dir /tmp/refckpt
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from textseg.models import build_core  # noqa: E402
from textseg.models.convert import seeded_state_dict, to_reference  # noqa: E402
from textseg.models.types import TextFeatures  # noqa: E402

SEED = 20240528
BATCH, SIDE, TEXT_LEN, TEXT_DIM, PROJECT_DIM = 2, 96, 24, 768, 768
#: Real tokens per text (the rest is padding), so that the padding-mask deviation shows.
TEXT_LENGTHS = (17, 11)


def commit_of(path: Path) -> str:
    """The snapshot's commit: ``COMMIT`` file written when it was extracted, else ``git rev-parse``, else unknown."""
    marker = path / "COMMIT"
    if marker.is_file():
        return marker.read_text().strip()
    try:
        return subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"


def import_reference(path: Path, module: str) -> types.ModuleType:
    """Import ``module`` (e.g. ``utils.model``) from the snapshot at ``path``, isolated from the other snapshots."""
    for name in [n for n in sys.modules if n == "utils" or n.startswith("utils.")]:
        del sys.modules[name]
    for name in ("matplotlib", "matplotlib.pyplot", "pandas", "cv2"):  # imported, unused by the maths
        try:
            importlib.import_module(name)
        except ImportError:
            sys.modules[name] = types.ModuleType(name)
    sys.path.insert(0, str(path))
    try:
        return importlib.import_module(module)
    finally:
        sys.path.remove(str(path))


def make_inputs() -> dict[str, Tensor]:
    """The fixed inputs: image, token ids and mask, and the text encoder's hidden states 1, 2 and -1."""
    gen = torch.Generator().manual_seed(SEED)
    mask = torch.zeros(BATCH, TEXT_LEN, dtype=torch.long)
    for i, n in enumerate(TEXT_LENGTHS):
        mask[i, :n] = 1
    ids = torch.randint(1000, 30000, (BATCH, TEXT_LEN), generator=gen) * mask
    ids[:, 0] = 2  # [CLS] of CXR-BERT's vocabulary
    return {
        "image": torch.randn(BATCH, 3, SIDE, SIDE, generator=gen),
        "input_ids": ids,
        "attention_mask": mask,
        "hidden": 0.5 * torch.randn(3, BATCH, TEXT_LEN, TEXT_DIM, generator=gen),
        "modality": torch.tensor([0, 1]),
    }


class FixedBert(nn.Module):
    """Stands in for the hub CXR-BERT: returns the stored hidden states whatever the token ids."""

    def __init__(self, hidden: Tensor) -> None:
        super().__init__()
        self.hidden = hidden

    def forward(self, input_ids: Tensor, attention_mask: Tensor, **_: Any) -> dict[str, Any]:
        h1, h2, last = self.hidden
        return {"hidden_states": (torch.zeros_like(h1), h1, h2, last)}


def pretrained_dirs(tmp: Path) -> tuple[str, str]:
    """Local ``AutoModel`` folders: ConvNeXt-T (facebook/convnext-tiny-224 config) and a 1-layer BERT of width 768."""
    from transformers import BertConfig, BertModel, ConvNextConfig, ConvNextModel

    vision = tmp / "convnext-tiny-224"
    ConvNextModel(ConvNextConfig(depths=[3, 3, 9, 3], hidden_sizes=[96, 192, 384, 768])).save_pretrained(vision)
    bert = tmp / "bert"
    config = BertConfig(
        hidden_size=768, num_hidden_layers=1, num_attention_heads=12, intermediate_size=64, vocab_size=64
    )
    BertModel(config).save_pretrained(bert)
    return str(bert), str(vision)


def textseg_core(backbone: str, padding_mask: bool = False) -> nn.Module:
    """textseg's core at the reference size with the seeded weights, in eval mode."""
    torch.manual_seed(0)
    core = build_core(backbone, "convnext-tiny", TEXT_DIM, use_padding_mask=padding_mask, project_dim=PROJECT_DIM)  # type: ignore[arg-type]
    core.load_state_dict(seeded_state_dict(core.state_dict(), SEED))
    return core.eval()


def text_features(inputs: dict[str, Tensor], padding_mask: bool) -> TextFeatures:
    """textseg's text features from the stored hidden states (all tokens pooled, as the reference)."""
    h1, h2, last = inputs["hidden"]
    mask = (
        inputs["attention_mask"].bool() if padding_mask else torch.ones_like(inputs["attention_mask"], dtype=torch.bool)
    )
    w = mask.unsqueeze(-1).float()
    pooled = torch.stack([(h * w).sum(1) / w.sum(1) for h in (h1, h2, last)]).mean(0)
    return TextFeatures(tokens=last, mask=mask, pooled=pooled)


def capture(module: nn.Module, store: dict[str, Tensor], name: str, pick: Any = None) -> None:
    """Forward hook that stores ``pick(output)`` under ``name``."""

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        store[name] = (pick(out) if pick else out).detach().clone()

    module.register_forward_hook(hook)


def channel_means(x: Tensor) -> Tensor:
    """``[B, C, ...]`` -> ``[B, C]`` mean over the spatial axes."""
    return x.flatten(2).mean(-1)


def load_strict(ref: nn.Module, state: dict[str, Tensor]) -> None:
    """Load converted weights into the reference network; every key must match."""
    result = ref.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys, result


def mmiunet(snapshot: Path, inputs: dict[str, Tensor], dirs: tuple[str, str]) -> tuple[dict[str, Any], nn.Module]:
    """Run ``MMIUNet_V2``; return the fixture entries and the reference network."""
    ref_mod = import_reference(snapshot, "utils.model")
    ref = ref_mod.MMIUNet_V2(dirs[0], dirs[1], PROJECT_DIM)
    ref.text_encoder.model = FixedBert(inputs["hidden"])
    core = textseg_core("mmiunet")
    load_strict(ref, to_reference(core.state_dict(), "mmiunet"))
    ref.eval()
    out: dict[str, Tensor] = {}
    capture(ref.out, out, "logits")
    for k in range(1, 5):
        capture(getattr(ref, f"fusion{k}"), out, f"itm{k}_vis", lambda o: channel_means(o[0]))
        capture(getattr(ref, f"fusion{k}"), out, f"itm{k}_txt", lambda o: o[1].mean(1))
    with torch.no_grad():
        prob = ref((inputs["image"], {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}))
        out["text_embed"] = ref.text_encoder(inputs["input_ids"], inputs["attention_mask"])["project"]
    assert torch.allclose(prob, out["logits"].sigmoid())
    return out, ref


def guidedecoder(snapshot: Path, inputs: dict[str, Tensor], dirs: tuple[str, str]) -> tuple[dict[str, Any], nn.Module]:
    """Run ``LanGuideMedSeg`` at 96 px; return the fixture entries and the reference network."""
    ref_mod = import_reference(snapshot, "utils.model")
    ref = ref_mod.LanGuideMedSeg(dirs[0], dirs[1], PROJECT_DIM)
    ref.text_encoder.model = FixedBert(inputs["hidden"])
    sizes = [SIDE // 32, SIDE // 16, SIDE // 8, SIDE // 4]
    ref.spatial_dim = sizes  # hard-coded [7, 14, 28, 56] for 224 px
    for name, size in zip(("decoder16", "decoder8", "decoder4"), sizes, strict=False):
        getattr(ref, name).spatial_size = size
    core = textseg_core("guidedecoder")
    load_strict(ref, to_reference(core.state_dict(), "guidedecoder"))
    ref.eval()
    out: dict[str, Tensor] = {}
    capture(ref.out, out, "logits")
    for name in ("decoder16", "decoder8", "decoder4"):
        capture(getattr(ref, name), out, name, lambda o: o.mean(1))  # [B, (H W), C] -> [B, C]
    capture(ref.encoder, out, "image_embed", lambda o: o["project"])
    capture(ref.text_encoder, out, "text_embed", lambda o: o["project"])
    with torch.no_grad():
        ref((inputs["image"], {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}))
    return out, ref


def textmoe(snapshot: Path, inputs: dict[str, Tensor], dirs: tuple[str, str]) -> tuple[dict[str, Any], nn.Module]:
    """Run ``TextmoeSeg``; return the fixture entries (logits of output channel 0) and the reference network."""
    ref_mod = import_reference(snapshot, "utils.model")
    ref = ref_mod.TextmoeSeg(dirs[0], dirs[1], PROJECT_DIM)
    hidden = inputs["hidden"]
    ref.text_encoder.model = FixedBert(hidden)
    core = textseg_core("textmoe")
    load_strict(ref, to_reference(core.state_dict(), "textmoe"))
    ref.eval()
    out: dict[str, Tensor] = {}
    capture(ref.out, out, "logits_all")
    data = (inputs["image"], {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]})
    with torch.no_grad():
        _, os_feat = ref((*data, inputs["modality"]))
    out["logits"] = out.pop("logits_all")[:, :1]
    for i, feat in enumerate(os_feat):
        out[f"experts{i}"] = feat.flatten(3).mean(-1)  # [B, E, C]
    return out, ref


def textseg_outputs(backbone: str, inputs: dict[str, Tensor], padding_mask: bool = False) -> Tensor:
    """textseg's logits for the fixture inputs."""
    core = textseg_core(backbone, padding_mask)
    kwargs = {"modality": inputs["modality"]} if backbone == "textmoe" else {}
    with torch.no_grad():
        return core(inputs["image"], text_features(inputs, padding_mask), **kwargs)["logits"]


def main() -> None:
    """Write the fixtures (and, with ``--ckpt-dir``, reference-format checkpoints)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mmiunet", type=Path, required=True)
    parser.add_argument("--guidedecoder", type=Path, required=True)
    parser.add_argument("--textmoe", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "models" / "fixtures")
    parser.add_argument("--ckpt-dir", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    inputs = make_inputs()
    runners = {"mmiunet": mmiunet, "guidedecoder": guidedecoder, "textmoe": textmoe}
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save({"seed": SEED, **inputs}, args.out / "parity_inputs.pt")
    with tempfile.TemporaryDirectory() as tmp:
        dirs = pretrained_dirs(Path(tmp))
        for backbone, run in runners.items():
            snapshot = getattr(args, backbone)
            ref_out, ref = run(snapshot, inputs, dirs)
            ours = textseg_outputs(backbone, inputs)
            diff = (ours - ref_out["logits"]).abs().max().item()
            masked = (textseg_outputs(backbone, inputs, True) - ref_out["logits"]).abs().max().item()
            scale = ref_out["logits"].abs().max().item()
            print(f"{backbone}: max|logit| {scale:.4g}, max abs diff {diff:.3g} (padding mask on: {masked:.3g})")
            fixture = {"seed": SEED, "commit": commit_of(snapshot), "reference": ref_out}
            torch.save(fixture, args.out / f"parity_{backbone}.pt")
            if args.ckpt_dir:
                args.ckpt_dir.mkdir(parents=True, exist_ok=True)
                state = {f"model.{k}": v for k, v in ref.state_dict().items()}
                torch.save({"state_dict": state, "epoch": 0}, args.ckpt_dir / f"{backbone}_reference.ckpt")


if __name__ == "__main__":
    main()
