"""How often T-PatchMix's lesion gate (Eq. 7) can accept a block on the synthetic data, with a perfect teacher.

Position-constrained T-PatchMix (paper Sec. 2.3 (i), ``methods.md`` Sec. 6.4) places a block inside the coarse region
named by sample i's first phrase (a sixth of the image: one side x one third) and pastes the block of partner j there
only if the mean teacher probability of j inside the block is >= delta. This script replaces the teacher map by j's
ground-truth mask (the best any teacher can do) and reports, per lesion size, the share of drawn blocks that pass the
gate. Real QaTa masks cover 1-21 % of the image (the 7 examples in ``shared/data``: mean 9 %); the default synthetic
lesions cover 2 %.

Usage (CPU, seconds):

    python benchmarks/tpatchmix_gate.py --sigma 0.03 0.05 --sigma 0.05 0.08 --sigma 0.06 0.10 --block 4 8
    python benchmarks/tpatchmix_gate.py --sigma 0.06 0.10 --taper 0.05 --block 4 8  # qata_sized_config
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from textseg.ops import mixing
from textseg.data.synthetic import SyntheticConfig, caption_for, generate_sample


def gate_acceptance(
    sigma: tuple[float, float], block: int, n: int, size: int, delta: float, seed: int, taper: float = 0.0
) -> tuple[float, float, float]:
    """Return (lesion share of the image, share of samples with a drawn block, accepted share of drawn blocks)."""
    cfg = SyntheticConfig(opacity_sigma=sigma, opacity_edge_taper=taper)
    samples = [generate_sample(seed, "train", i, size, cfg) for i in range(n)]
    masks = torch.from_numpy(np.stack([s.mask for s in samples])).float()[:, None]
    texts = [caption_for(s.position) for s in samples]
    gen = torch.Generator().manual_seed(seed)
    perm = mixing.random_permutation(n, gen)
    boxes, allowed = mixing.position_boxes(texts, perm, size, size)  # the module's rule
    blocks = mixing.sample_box_blocks(boxes, allowed, block, 1.0, size, size, gen)
    drawn = blocks.flatten(1).amax(1) > 0
    accepted = mixing.t_patchmix(masks, masks, perm, blocks, delta, 0.5).accepted  # Eq. 7 with p_j = mask_j
    return masks.mean().item(), drawn.float().mean().item(), accepted.sum().item() / max(drawn.sum().item(), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sigma", type=float, nargs=2, action="append", help="opacity_sigma range (repeatable)")
    parser.add_argument("--block", type=int, nargs="+", default=[4, 8], help="block sides in pixels")
    parser.add_argument("--n", type=int, default=400, help="generated samples")
    parser.add_argument("--size", type=int, default=64, help="image side (the benchmark's network size)")
    parser.add_argument("--delta", type=float, default=0.55, help="lesion gate threshold")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--taper", type=float, default=0.0, help="opacity_edge_taper (QaTa-sized preset: 0.05)")
    args = parser.parse_args()
    print("| opacity_sigma | taper | lesion share of the image | block | samples with a block | accepted / drawn |")
    print("|---|---|---|---|---|---|")
    for sigma in args.sigma or [(0.03, 0.05)]:
        for block in args.block:
            area, drawn, accepted = gate_acceptance(
                tuple(sigma), block, args.n, args.size, args.delta, args.seed, args.taper
            )
            print(f"| {sigma[0]}-{sigma[1]} | {args.taper} | {area:.3f} | {block} | {drawn:.2f} | {accepted:.3f} |")


if __name__ == "__main__":
    main()
