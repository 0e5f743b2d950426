"""`--model.compile`: torch.compile of the backbone in the command line's fit, evaluation, resume and DDP runs,
with the checkpoint and export of an eager run.

One compiled fit and one eager fit of the same seed run together (a module fixture) and every comparison reads
them. The compiled fit uses backend aot_eager: dynamo captures the same training and evaluation graphs and
AOTAutograd traces their backward as for inductor, without inductor's C++ code generation (minutes on 2 cores,
most of this file's time when the fit used it). Inductor itself runs in one small check: the inference graph of
structvit_xs compiled with it, against eager.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers.cli_runs import ROOT, env, ok, run_args, run_cli_together

COMPILE = ["--model.compile", "true"]
AOT_EAGER = ["--model.compile_backend", "aot_eager"]
# float32 (bf16 rounding would hide nothing but widen the tolerance); 2 epochs of 4 steps, validation after each
FIT = ["--trainer.precision", "32-true", "--trainer.max_epochs", "2"]
# aot_eager runs the traced graphs with eager's kernels: over 8 AdamW steps at lr 1e-3 its losses equalled
# eager's to the last bit (an inductor fit's, which fuses and reorders sums, differed by up to 1e-7 in training
# and 3e-6 in validation, relative). A real difference (a step lost, another batch, a weight not updated)
# moves the loss by 1e-2 or more.
LOSS_RTOL = 1e-4
# inductor's float32 logits of structvit_xs differ from eager's by ~2e-7 (largest logit ~0.25): fused and
# reordered sums; a wrong kernel or a dropped op gives O(0.1)
INDUCTOR_ATOL, INDUCTOR_RTOL = 1e-5, 1e-4


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
    """An eager and a compiled (aot_eager) `fit` of structvit_xs, same seed and data, run at once; their run
    folders. The compiled one compiles its training and its evaluation graph, each whole (no graph break)."""
    runs = tmp_path_factory.mktemp("compile-runs")
    with pytest.MonkeyPatch.context() as patch:
        # dynamo's steps on stderr (proof that a compiler ran, and which), and every graph break with its reason
        patch.setenv("TORCH_LOGS", "dynamo,graph_breaks")
        eager, compiled = run_cli_together(
            ["fit", *run_args(tiny_index, runs, "eager", "fit"), *FIT],
            ["fit", *run_args(tiny_index, runs, "compiled", "fit"), *FIT, *COMPILE, *AOT_EAGER],
            timeout=420,
        )
    ok(eager)
    ok(compiled)
    # the evaluation graph (sanity check, validation) and the training graph, at least
    assert compiled.stderr.count("done compiler function aot_eager") >= 2, compiled.stderr[-5000:]
    assert "Graph break" not in compiled.stderr, compiled.stderr[-5000:]  # docs/training.md: none
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
@pytest.mark.timeout(300)
def test_inductor_compiles_the_inference_graph_whole_and_matches_eager():
    """The one inductor compile of the suite: structvit_xs's inference forward at the fits' clip shape, through
    `configure_model` as `--model.compile` runs it. On 2 cores 25-45 s with an empty inductor cache (29 C++
    kernels, built by inductor's pool of compile processes), 3-12 s once its cache (TORCHINDUCTOR_CACHE_DIR)
    holds the graph."""
    from torch._dynamo.utils import counters
    from torch._inductor.async_compile import shutdown_compile_workers

    from src.task import VideoClassifier

    torch.manual_seed(0)
    eager = VideoClassifier(backbone={"variant": "structvit_xs"}, num_classes=5).eval()
    compiled = VideoClassifier(backbone={"variant": "structvit_xs"}, num_classes=5, compile=True).eval()
    compiled.load_state_dict(eager.state_dict())
    compiled.configure_model()
    clips = torch.randn(2, 3, 8, 32, 32)
    counters.clear()
    try:
        with torch.no_grad():
            want, got = eager(clips), compiled(clips)
        graphs, breaks, inductor = (
            counters["stats"]["unique_graphs"],
            dict(counters["graph_break"]),
            dict(counters["inductor"]),
        )
    finally:
        shutdown_compile_workers()  # inductor's pool of compile processes: none left in this test process
        torch._dynamo.reset()
    assert graphs == 1 and not breaks, (graphs, breaks)  # the whole forward in one graph
    # inductor built the graph's code, or loaded what it built before from its cache
    assert inductor.get("fxgraph_cache_miss", 0) + inductor.get("fxgraph_cache_hit", 0) >= 1, inductor
    torch.testing.assert_close(got, want, atol=INDUCTOR_ATOL, rtol=INDUCTOR_RTOL)


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

    Backend aot_eager, as the `fits` run: dynamo captures the graphs (split at DDP's gradient buckets) and
    AOTAutograd traces their backward exactly as for inductor, without its code generation."""
    import os
    import signal
    import subprocess
    import sys

    ckpt = fits["compiled"] / "checkpoints" / "last.ckpt"
    ddp = ["--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.max_epochs", "3"]
    command = ["fit", *run_args(tiny_index, tmp_path, "ddp", "fit"), *FIT, *COMPILE, *AOT_EAGER, *ddp]
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
