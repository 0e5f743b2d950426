"""`--model.compile`: torch.compile of the backbone in the command line's fit, evaluation, resume and DDP runs,
with the checkpoint and export of an eager run.

Inductor compiling structvit_xs's training and evaluation graphs is most of this file's time, so one compiled
fit and one eager fit of the same seed run together (a module fixture) and every comparison reads them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers.cli_runs import ROOT, env, ok, run_args, run_cli_together

COMPILE = ["--model.compile", "true"]
# float32 (bf16 rounding would hide nothing but widen the tolerance); 2 epochs of 4 steps, validation after each
FIT = ["--trainer.precision", "32-true", "--trainer.max_epochs", "2"]
# Compiled and eager float32 logits agree to ~1e-7 (inductor fuses and reorders sums); over 8 AdamW steps at
# lr 1e-3 the losses differed by at most 1e-7 (training) and 3e-6 (validation), relative. A real difference
# (a step lost, another batch, a weight not updated) moves the loss by 1e-2 or more.
LOSS_RTOL = 1e-4


def _scalars(run: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def _checkpoint(run: Path) -> dict:
    """The run's last.ckpt as saved (state_dict, hyper_parameters, global_step, ...)."""
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def fits(tiny_index: Path, tmp_path_factory) -> dict[str, Path]:
    """An eager and a compiled `fit` of structvit_xs, same seed and data, run at once; their run folders."""
    runs = tmp_path_factory.mktemp("compile-runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_LOGS", "dynamo")  # dynamo's steps on stderr: proof that a compiler ran, and which
        eager, compiled = run_cli_together(
            ["fit", *run_args(tiny_index, runs, "eager", "fit"), *FIT],
            ["fit", *run_args(tiny_index, runs, "compiled", "fit"), *FIT, *COMPILE],
            timeout=420,
        )
    ok(eager)
    ok(compiled)
    assert "done compiler function inductor" in compiled.stderr
    assert "compiler function" not in eager.stderr
    return {"eager": runs / "eager" / "fit", "compiled": runs / "compiled" / "fit"}


def test_the_switch_is_off_by_default_and_never_stored_in_a_checkpoint():
    from src.task import VideoClassifier

    eager = VideoClassifier(backbone={"variant": "structvit_xs"}, num_classes=5)
    eager.configure_model()
    assert eager.compile_options is None and eager.backbone._compiled_call_impl is None
    compiled = VideoClassifier(
        backbone={"variant": "structvit_xs"}, num_classes=5, compile=True, compile_mode="max-autotune"
    )
    keys = list(compiled.state_dict())
    compiled.configure_model()
    compiled.configure_model()  # a second stage of the same process (fit, then test) compiles nothing new
    assert compiled.backbone._compiled_call_impl is not None
    assert compiled.compile_options == {"backend": "inductor", "mode": "max-autotune", "dynamic": None}
    # hyper-parameters go into checkpoints, where --ckpt_path would apply them over the command line
    assert not {"compile", "compile_mode", "compile_dynamic", "compile_backend"} & set(compiled.hparams)
    assert list(compiled.state_dict()) == keys == list(eager.state_dict())


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_compiled_fit_follows_the_eager_loss_curve(fits):
    eager, compiled = (_scalars(fits[k], "train/loss_step") for k in ("eager", "compiled"))
    assert [s for s, _ in compiled] == [s for s, _ in eager] and len(eager) == 8
    for (step, a), (_, b) in zip(eager, compiled):
        assert abs(a - b) <= LOSS_RTOL * abs(a), f"step {step}: eager loss {a}, compiled {b}"
    val = [_scalars(fits[k], "val/loss")[-1][1] for k in ("eager", "compiled")]
    assert abs(val[0] - val[1]) <= LOSS_RTOL * abs(val[0])  # the compiled evaluation graph too


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_compiled_checkpoint_has_the_eager_key_names_and_no_compile_setting(fits):
    eager, compiled = (_checkpoint(fits[k]) for k in ("eager", "compiled"))
    assert list(compiled["state_dict"]) == list(eager["state_dict"])
    assert not any("_orig_mod" in k for k in compiled["state_dict"])
    assert "compile" not in compiled["hyper_parameters"]
    assert compiled["global_step"] == eager["global_step"] == 8


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_export_from_a_compiled_run_passes_its_check(fits, tmp_path):
    import json
    import subprocess
    import sys

    out = tmp_path / "model.pt"
    ckpt = fits["compiled"] / "checkpoints" / "last.ckpt"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "src.export",
            "--ckpt",
            str(ckpt),
            "--format",
            "torchscript",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    ok(result)
    assert json.loads(Path(f"{out}.json").read_text())["check"]["passed"] is True


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_compiled_run_resumes_compiled_under_gloo_ddp_on_two_processes(fits, tiny_index, tmp_path):
    """The compiled run's last.ckpt resumed for a third epoch by two processes (DDP over gloo), each compiling
    its backbone; the result is a checkpoint with the plain key names, 2 steps further on.

    Backend aot_eager: dynamo captures the graphs (split at DDP's gradient buckets) and AOTAutograd traces
    their backward exactly as for inductor, whose code generation (minutes for each new graph on 2 cores)
    the `fits` run already proves."""
    import os
    import signal
    import subprocess
    import sys

    ckpt = fits["compiled"] / "checkpoints" / "last.ckpt"
    ddp = ["--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.max_epochs", "3"]
    backend = ["--model.compile_backend", "aot_eager"]
    command = ["fit", *run_args(tiny_index, tmp_path, "ddp", "fit"), *FIT, *COMPILE, *backend, *ddp]
    log = tmp_path / "ddp.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "src.cli", *command, "--ckpt_path", str(ckpt)],
            cwd=ROOT,
            env=env(TORCH_LOGS="dynamo"),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the rank Lightning starts joins the group: a hang kills both
        )
    try:
        proc.wait(timeout=420)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"hung: no exit after 420 s\n{log.read_text()[-4000:]}")
    assert proc.returncode == 0, log.read_text()[-5000:]
    # on each rank; under DDP, dynamo hands the graph to its DDPOptimizer (`compile_fn`), which splits it at
    # the gradient buckets and calls the backend on each piece
    assert log.read_text().count("done compiler function") >= 2
    resumed = _checkpoint(tmp_path / "ddp" / "fit")
    assert resumed["global_step"] == 8 + 2  # 8 training clips over 2 ranks of batch 2: 2 steps
    assert list(resumed["state_dict"]) == list(_checkpoint(fits["compiled"])["state_dict"])
