"""Write every shipped config from one table, so that the grid stays consistent.

Run ``python configs/_generate.py`` after editing; ``tests/test_configs.py`` checks that the YAML files on disk
equal what this script produces, and instantiates every one of them.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
RATIO_TAGS = {0.01: "1", 0.02: "2", 0.05: "5", 0.15: "15", 0.25: "25", 0.5: "50", 1.0: "100"}
ROOTS = {"qata": "data/QaTa-COV19", "mosmed": "data/MosMedDataPlus"}
CXR_BERT = "microsoft/BiomedVLP-CXR-BERT-specialized"
HF_CONVNEXT = "facebook/convnext-tiny-224"
FB_22K = "pretrained/convnext_tiny_22k_224.pth"


def trainer(name: str, monitor: str = "val_dice", patience: int = 30) -> dict[str, Any]:
    """Real-data trainer: 20-100 epochs, best checkpoint on val Dice, early stopping (``methods.md`` §7).

    Every shipped config saves ``last.ckpt`` (``save_last``), which ``--ckpt_path last`` resumes from.

    bf16 mixed precision (with channels-last networks, see ``encoders``) is the default for GPU runs; pass
    ``--trainer.precision 32-true`` to reproduce the references' fp32 exactly.
    """
    return {
        "accelerator": "auto",
        "devices": 1,
        "precision": "bf16-mixed",
        "min_epochs": 20,
        "max_epochs": 100,
        "log_every_n_steps": 20,
        "logger": {
            "class_path": "textseg.engine.loggers.CSVLogger",
            "init_args": {"save_dir": "runs", "name": name},
        },
        "callbacks": [
            {
                "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {"monitor": monitor, "mode": "max", "filename": "best", "save_last": True},
            },
            {
                "class_path": "lightning.pytorch.callbacks.EarlyStopping",
                "init_args": {"monitor": monitor, "mode": "max", "patience": patience, "min_delta": 0.001},
            },
            {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor"},
        ],
    }


def budget(ratio: float) -> str:
    """The step budget of an epoch: one unlabeled pass below 100 % labels, else one labeled pass.

    Semi-supervised runs and their supervised partners alike (the same optimizer steps and labeled batches).
    """
    return "unlabeled_pass" if ratio < 1.0 else "labeled_pass"


def data(dataset: str, ratio: float, semi: bool) -> dict[str, Any]:
    """Real-data DataModule: 224 px, 32 labeled (+ 32 unlabeled) per step, 8 for evaluation."""
    return {
        "dataset": dataset,
        "root": ROOTS[dataset],
        "labeled_ratio": ratio,
        "image_size": 224,
        "batch_size": 32,
        "eval_batch_size": 8,
        "num_workers": 8,
        "seed": 42,
        "use_unlabeled": semi and ratio < 1.0,
        "epoch": budget(ratio),
    }


def encoders(backbone: str) -> dict[str, Any]:
    """Pretrained weights as the references use them (hub ids or local paths the user provides), channels-last."""
    if backbone == "mmiunet":
        return {
            "vision_encoder": "convnext-tiny",
            "vision_checkpoint": FB_22K,
            "text_encoder": CXR_BERT,
            "channels_last": True,
        }
    # GuideDecoder and TextMoE: HF ConvNeXt-T (ImageNet-1k) + CXR-BERT (methods.md §1.1, §4).
    return {"vision_encoder": HF_CONVNEXT, "text_encoder": CXR_BERT, "channels_last": True}


def supervised(backbone: str, dataset: str, ratio: float) -> dict[str, Any]:
    """Labeled-only baseline at ``ratio``."""
    name = f"supervised_{backbone}_{dataset}_{RATIO_TAGS[ratio]}"
    return {
        "seed_everything": 42,
        "trainer": trainer(name),
        "model": {
            "class_path": "textseg.SupervisedModule",
            "init_args": {
                "backbone": backbone,
                **encoders(backbone),
                "loss": "dice_ce",
                "lr": 3e-4,
                "lr_t_max": 200,
            },
        },
        "data": data(dataset, ratio, semi=False),
    }


SEMIMEDREF_PAPER = {
    "burn_in_epochs": 5,
    "lambda_u": 0.3,
    "lambda_u_ramp_epochs": 15,
    "ema_start": 0.99,
    "ema_end": 0.999,
    "ema_ramp_epochs": 20,
    "confidence": 0.55,
    "text_aug": "posaug",
    "posaug_rho": 0.5,
    "mix": "tpatchmix",
    "mix_mode": "pos",
    "mix_block": 16,
    "mix_prob": 0.08,
    "contrastive": "itcl",
    "itcl_temperature": 0.07,
    "lambda_itcl_sup": 0.02,
    "lambda_itcl_unsup": 0.1,
}


def semimedref(backbone: str, dataset: str, ratio: float, name: str | None = None, **over: Any) -> dict[str, Any]:
    """Semi-MedRef with the paper's hyper-parameters (``methods.md`` §6); ``over`` switches components off."""
    args = {"backbone": backbone, **encoders(backbone), "lr": 3e-4, "lr_t_max": 200, **SEMIMEDREF_PAPER}
    if ratio >= 1.0:  # methods.md §6.6: lambda_u, unlabeled ITC and T-PatchMix off; labeled ITC stays
        args.update(lambda_u=0.0, lambda_itcl_unsup=0.0, mix="none")
    args.update(over)
    name = name or f"semimedref_{backbone}_{dataset}_{RATIO_TAGS[ratio]}"
    return {
        "seed_everything": 42,
        "trainer": trainer(name),
        "model": {"class_path": "textseg.SemiMedRefModule", "init_args": args},
        "data": data(dataset, ratio, semi=True),
    }


# Paper Table 2 (QaTa, MMI-UNet): component rows; Table 3: augmentation / alignment rows.
OFF = {"use_teacher": False, "text_aug": "none", "mix": "none", "contrastive": "none", "image_strong": False}
TABLE2: dict[str, dict[str, Any]] = {
    "baseline": OFF,
    "ts_ema": {**OFF, "use_teacher": True, "image_strong": True},
    "posaug": {"text_aug": "posaug", "mix": "none", "contrastive": "none"},
    "tpatchmix": {"text_aug": "posaug", "mix": "tpatchmix", "contrastive": "none"},
    "itcl": {},
}
TS = {"use_teacher": True, "image_strong": True, "text_aug": "none", "mix": "none", "contrastive": "none"}
TABLE3: dict[str, dict[str, Any]] = {
    "textstrong": {**TS, "text_aug": "textstrong"},
    "cutmix": {**TS, "mix": "cutmix"},
    "spc": {**TS, "spc": True},
    "v1_posaug": {**TS, "text_aug": "posaug"},
    "v2_tpatchmix": {**TS, "mix": "tpatchmix"},
    "v3_clip": {"contrastive": "clip"},
    "all": {},
}


TEXTMOE_PAPER = {
    "expert": "tmoe",
    "num_experts": 2,
    "use_teacher": True,
    "pretrain_epochs": 0,
    "lambda_u": 1.0,
    "pseudo_threshold": 0.5,
    "ema_max": 0.99,
    "exchange_mode": "amplitude",
    "exchange_beta": 0.05,
    "lambda_diff": 0.1,
    "diff_mode": "squared_cosine",
}
# TextMoE paper Table 2 (composite QaTa + MosMed): component rows, in order.
TEXTMOE_TABLE2: dict[str, dict[str, Any]] = {
    "sup_only": {"use_teacher": False, "exchange_mode": "none", "lambda_diff": 0.0},
    "plain_moe": {"expert": "plain", "exchange_mode": "none", "lambda_diff": 0.0},
    "tmoe": {"exchange_mode": "none", "lambda_diff": 0.0},
    "cr": {"lambda_diff": 0.0},
    "diff": {},
}


def textmoe(ratio: float, name: str, **over: Any) -> dict[str, Any]:
    """TextMoE on composite QaTa + MosMed (``methods.md`` §5): 32 mixed images per step in the labeled share."""
    args = {"backbone": "textmoe", **encoders("textmoe"), "lr": 3e-4, "lr_t_max": 200, **TEXTMOE_PAPER, **over}
    labeled = max(1, round(32 * ratio))
    semi = bool(args["use_teacher"])
    return {
        "seed_everything": 42,
        "trainer": {**trainer(name), "max_epochs": 200},
        "model": {"class_path": "textseg.TextMoEModule", "init_args": args},
        "data": {
            "dataset": ["qata", "mosmed"],
            "root": [ROOTS["qata"], ROOTS["mosmed"]],
            "labeled_ratio": ratio,
            "oversample": None,
            "image_size": 224,
            "batch_size": labeled,
            "unlabeled_batch_size": 32 - labeled,
            "eval_batch_size": 8,
            "num_workers": 8,
            "seed": 42,
            "use_unlabeled": semi,
            "epoch": budget(ratio),
        },
    }


DEMO_CLASSES = {"semimedref": "SemiMedRefModule", "supervised": "SupervisedModule", "textmoe": "TextMoEModule"}


def demo(method: str) -> dict[str, Any]:
    """The synthetic demo: tiny MMI-UNet, packaged MiniLM text encoder, 64 px, CPU, a few minutes."""
    model: dict[str, Any] = {
        "backbone": "mmiunet",
        "vision_encoder": "tiny",
        "text_encoder": "minilm",
        "project_dim": 64,
        "lr": 2e-3,
        "min_lr": 1e-5,
    }
    if method == "textmoe":  # two stages (2 labeled-only epochs), as the code: a cold teacher can collapse runs
        model = {k: v for k, v in model.items() if k != "project_dim"}
        model.update(TEXTMOE_PAPER, backbone="textmoe", pretrain_epochs=2)
    if method == "semimedref":
        model.update(
            burn_in_epochs=2,
            lambda_u=0.3,
            lambda_u_ramp_epochs=2,
            ema_ramp_epochs=3,
            mix_prob=0.5,
            mix_block=8,
        )
    config: dict[str, Any] = {
        "seed_everything": 42,
        "test_after_fit": True,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": 6,
            "log_every_n_steps": 5,
            "logger": {
                "class_path": "textseg.engine.loggers.CSVLogger",
                "init_args": {"save_dir": "runs", "name": f"demo_{method}"},
            },
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"monitor": "val_dice", "mode": "max", "filename": "best", "save_last": True},
                }
            ],
        },
        "model": {
            "class_path": f"textseg.{DEMO_CLASSES[method]}",
            "init_args": model,
        },
        "data": {
            "dataset": "synthetic",
            "root": "data/synthetic",
            "labeled_ratio": 0.25,
            "image_size": 64,
            "batch_size": 8,
            "eval_batch_size": 16,
            "num_workers": 0,
            "seed": 42,
            "use_unlabeled": method != "supervised",
            "epoch": "unlabeled_pass",
        },
    }
    if method == "textmoe":
        config["data"].update(
            dataset=["synthetic", "synthetic_ct"],
            root=["data/synthetic", "data/synthetic_ct"],
            batch_size=4,
            unlabeled_batch_size=12,
        )
    return config


def all_configs() -> dict[str, dict[str, Any]]:
    """Relative path -> config of every shipped config."""
    out: dict[str, dict[str, Any]] = {
        "demo_semimedref.yaml": demo("semimedref"),
        "demo_supervised.yaml": demo("supervised"),
        "demo_textmoe.yaml": demo("textmoe"),
        "textmoe_composite.yaml": textmoe(0.25, "textmoe_composite"),
        "semimedref_mmiunet.yaml": semimedref("mmiunet", "qata", 0.02, name="semimedref_mmiunet"),
        "semimedref_guidedecoder.yaml": semimedref("guidedecoder", "qata", 0.02, name="semimedref_guidedecoder"),
    }
    for dataset in ("qata", "mosmed"):
        for ratio in (0.01, 0.02, 0.05, 0.15, 0.25, 0.5, 1.0):
            tag = RATIO_TAGS[ratio]
            out[f"supervised/guidedecoder_{dataset}_{tag}.yaml"] = supervised("guidedecoder", dataset, ratio)
            out[f"supervised/mmiunet_{dataset}_{tag}.yaml"] = supervised("mmiunet", dataset, ratio)
        for ratio in (0.01, 0.02, 0.05, 0.15, 1.0):
            for backbone in ("mmiunet", "guidedecoder"):
                out[f"semimedref/{backbone}_{dataset}_{RATIO_TAGS[ratio]}.yaml"] = semimedref(backbone, dataset, ratio)
    for ratio in (0.25, 0.5):
        tag = RATIO_TAGS[ratio]
        out[f"textmoe/composite_{tag}.yaml"] = textmoe(ratio, f"textmoe_composite_{tag}")
        for row, over in TEXTMOE_TABLE2.items():
            name = f"ablation_textmoe_table2_{row}_{tag}"
            out[f"ablations/textmoe_table2_{row}_composite_{tag}.yaml"] = textmoe(ratio, name, **over)
    for table, rows in (("table2", TABLE2), ("table3", TABLE3)):
        for row, over in rows.items():
            for ratio in (0.01, 0.02):
                name = f"ablation_{table}_{row}_{RATIO_TAGS[ratio]}"
                out[f"ablations/{table}_{row}_qata_{RATIO_TAGS[ratio]}.yaml"] = semimedref(
                    "mmiunet", "qata", ratio, name=name, **copy.deepcopy(over)
                )
    return out


def render(config: dict[str, Any]) -> str:
    """YAML text of one config, with a header naming the generator."""
    header = "# Generated by configs/_generate.py -- edit the generator, not this file.\n"
    return header + yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


def main() -> None:
    """Write all configs under ``configs/``."""
    for rel, cfg in all_configs().items():
        path = HERE / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(cfg))
    print(f"wrote {len(all_configs())} configs")


if __name__ == "__main__":
    main()
