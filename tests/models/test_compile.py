"""Every network compiles as one graph (``fullgraph=True``), and the compiled network computes what the eager one does.

TorchDynamo traces on the CPU here with the ``eager`` backend (no C++ toolchain, seconds), so a graph break -- a
host sync, an unsupported context manager in a library -- fails the default suite, not a GPU run.
"""

from __future__ import annotations

import pytest
import torch

from textseg.methods import SemiMedRefModule, TextMoEModule

TEXTS = [
    "Bilateral pulmonary infection, two infected areas, lower left lung and middle right lung.",
    "Unilateral pulmonary infection, one infected area, upper right lung.",
]


def _net_and_inputs(backbone: str) -> tuple[torch.nn.Module, tuple[object, ...]]:
    torch.manual_seed(0)
    tiny = {"vision_encoder": "tiny", "text_encoder": "tiny", "project_dim": 16}
    module = TextMoEModule(**tiny) if backbone == "textmoe" else SemiMedRefModule(backbone=backbone, **tiny)
    text = module.text_encoder(TEXTS)
    image = torch.randn(2, 1, 64, 64)
    args = (image, text, torch.tensor([0, 1])) if backbone == "textmoe" else (image, text)
    return module.net, args


@pytest.mark.parametrize("backbone", ["guidedecoder", "mmiunet", "textmoe"])
def test_one_graph_and_same_outputs(backbone: str) -> None:
    net, args = _net_and_inputs(backbone)
    net.train()
    explained = torch._dynamo.explain(net)(*args)
    assert explained.graph_break_count == 0, [str(b.reason)[:200] for b in explained.break_reasons]
    assert explained.graph_count == 1
    net.eval()  # no dropout: the two runs must agree
    with torch.no_grad():
        eager = net(*args)
        compiled = torch.compile(net, fullgraph=True, backend="eager")(*args)
    for key in ("logits", "image_embed", "text_embed"):
        if eager.get(key) is not None:
            torch.testing.assert_close(compiled[key], eager[key], rtol=1e-4, atol=1e-5)  # MHA fast path vs traced
