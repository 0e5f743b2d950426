"""`experiments.finetune_from_plain`: the step-0 gap of each StructSA filter start against the plain-attention
source it is built from, and the section it writes."""

from __future__ import annotations

from pathlib import Path

import torch

from experiments.finetune_from_plain import FineTune, Gap, function_gap, section_text
from src.data.protocol import CHECKPOINT_KEY, EvalProtocol
from src.task import BackboneConfig, VideoClassifier


def test_identity_start_is_the_plain_model_and_the_other_starts_are_not(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = VideoClassifier(
        BackboneConfig("structvit_xs", structure_dim=0), num_classes=3, class_names=["a", "b", "c"]
    )
    source = tmp_path / "plain.ckpt"
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            CHECKPOINT_KEY: EvalProtocol(8, "segment", 1, 32, (1, 1)).to_dict(),
        },
        source,
    )
    clips, labels = torch.randn(4, 3, 8, 32, 32), torch.tensor([0, 1, 2, 0])
    identity = function_gap(source, "identity", clips, labels)
    assert identity.max_abs_logit_diff < 1e-4 and identity.top1_agreement == 1.0
    assert identity.source_top1 == identity.start_top1
    for init in ("shifted", "random"):
        assert function_gap(source, init, clips, labels).max_abs_logit_diff > 1e-3


def test_section_lists_the_gap_and_the_curve_per_start() -> None:
    gaps = [Gap("identity", 200, 1e-6, 1.0, 0.93, 0.93), Gap("shifted", 200, 2.2, 0.97, 0.93, 0.95)]
    runs = [FineTune("identity", s, f"r{s}", [0.90 + s / 100, 0.92], 0.93, 100.0) for s in (0, 1)]
    runs += [FineTune("shifted", 0, "r", [0.94, 0.95], 0.96, 120.0)]
    text = section_text(
        Path("src.ckpt"), gaps, runs, "python -m experiments.finetune_from_plain ...", ["--x", "1"]
    )
    assert text.startswith("Command: `python -m experiments.finetune_from_plain ...`")
    assert "| identity | 1.00e-06 | 100.0 % | 93.0 % | 93.0 % |" in text
    assert "| identity | 2 | 90.5 ± 0.7 | 92.0 ± 0.0 | 93.0 ± 0.0 | 100 |" in text
    assert "| shifted | 1 | 94.0 | 95.0 | 96.0 | 120 |" in text
