"""Semi-MedRef's batched student call is its three separate calls (``batched_student``, ``docs/methods.md`` §6.6)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from test_methods import NO_BURN_IN, capture_logs, make_dm, semi
from torch import nn

from textseg.models.types import TextChoice
from textseg.ops.text_aug import swap_left_right


@pytest.fixture(scope="module")
def batch_3_2(qata_root: Path) -> dict[str, dict[str, Any]]:
    """3 labeled + 2 unlabeled samples: parts of unequal size."""
    dm = make_dm(qata_root, batch_size=3, zoom_prob=0.0)
    dm.setup("fit")
    batch, _, _ = next(iter(dm.train_dataloader()))
    batch["unlabeled"] = {k: v[:2] for k, v in batch["unlabeled"].items()}
    return batch


def _step(batched: bool, backbone: str, batch: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    module = semi(backbone=backbone, **NO_BURN_IN, mix_prob=1.0, batched_student=batched)
    for m in module.net.modules():  # the calls differ only in their dropout masks: switch dropout off
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        if isinstance(getattr(m, "dropout", None), float):
            m.dropout = 0.0
    module.train()
    calls: list[int] = []
    module.net.register_forward_hook(lambda _m, args, _o: calls.append(args[0].shape[0]))
    logged = capture_logs(module, monkeypatch)
    loss = module.training_step(batch, 0)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in module.net.named_parameters() if p.grad is not None}
    stats = {k: v.clone() for k, v in module.net.state_dict().items() if "running" in k}
    return {"logged": logged, "grads": grads, "stats": stats, "calls": calls}


@pytest.mark.parametrize("backbone", ["guidedecoder", "mmiunet"])
def test_batched_step_is_the_separate_calls(
    backbone: str, batch_3_2: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    separate = _step(False, backbone, batch_3_2, monkeypatch)
    batched = _step(True, backbone, batch_3_2, monkeypatch)
    assert separate["calls"] == [3, 2, 2]  # labeled, mixed strong view, weak view for ITCL
    assert batched["calls"] == [7]
    assert batched["logged"].keys() == separate["logged"].keys()
    for key, value in separate["logged"].items():
        assert batched["logged"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert batched["grads"].keys() == separate["grads"].keys()
    for name, grad in separate["grads"].items():
        torch.testing.assert_close(batched["grads"][name], grad, rtol=1e-3, atol=1e-5, msg=name)
    assert separate["stats"]
    for key, value in separate["stats"].items():
        torch.testing.assert_close(batched["stats"][key], value, msg=key)


def test_burn_in_step_is_one_labeled_call(batch_3_2: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    module = semi(backbone="mmiunet", burn_in_epochs=1)
    calls: list[int] = []
    module.net.register_forward_hook(lambda _m, args, _o: calls.append(args[0].shape[0]))
    capture_logs(module, monkeypatch)
    module.train().training_step(batch_3_2, 0)
    assert calls == [3]


@pytest.mark.parametrize("spc", [False, True])
@pytest.mark.parametrize("confidence", [0.0, 1.0])
def test_span_mixed_text_is_picked_on_the_device(
    confidence: float, spc: bool, batch_3_2: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mixed view's text features are those of the span-mixed text where the mix was accepted, else its own."""
    module = semi(backbone="guidedecoder", **NO_BURN_IN, mix_prob=1.0, mix_mode="random", spc=spc, spc_prob=0.5)
    module.hparams["confidence"] = confidence
    module.train()
    unl = batch_3_2["unlabeled"]
    (_, chosen, _), _, _ = module._unlabeled_view(unl)
    assert isinstance(chosen, TextChoice)  # the accept flags stay on the device
    features = module.encode(chosen)
    # the same draws again (they depend only on the global step), with the accept flags read on the host here
    gen, rng = module.step_generators()
    with torch.no_grad():
        probs = torch.sigmoid(module.forward_batch(unl, module.teacher)["logits"].float())
    texts = [module._augment_text(t, rng) for t in unl["text"]]
    image, target = unl["image_strong"], (probs >= confidence).float()
    _, _, chosen_texts, _ = module._mix(image, probs, target, texts, gen)
    assert isinstance(chosen_texts, TextChoice)
    spans, accepted = chosen_texts.if_true, chosen_texts.condition
    expected = [s if ok else t for s, t, ok in zip(spans, texts, accepted.tolist(), strict=True)]
    assert accepted.tolist() == [confidence == 0.0] * len(texts)  # both branches: every mix accepted, or none
    assert all(s != t for s, t in zip(spans, texts, strict=True))
    if spc:
        flip = (torch.rand(len(texts), generator=gen) < 0.5).tolist()
        expected = [swap_left_right(t) if f else t for t, f in zip(expected, flip, strict=True)]
    reference = module.text_encoder(expected)
    for key in ("tokens", "mask", "pooled"):
        torch.testing.assert_close(getattr(features, key), getattr(reference, key))
