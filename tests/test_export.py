"""`python -m src.export`: a checkpoint trained by the command line, exported to ONNX and TorchScript, checked
against eager PyTorch at batch sizes 1 and 3, with its sidecar; a UniFormer (D = 0); bad files; missing extra."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from task_fixtures import OneThread

from tests.helpers.cli_runs import env, ok

ROOT = Path(__file__).resolve().parents[1]


def run_export(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "src.export", *args],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def printed_max_diff(stdout: str) -> float:
    match = re.search(r"max abs diff (\S+)", stdout)
    assert match, stdout
    return float(match.group(1))


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint) -> Path:
    """structvit_xs (D = 4) fitted 2 epochs on the tiny synthetic index by `python -m src.cli fit`: the
    session's run (tests/conftest.py), read-only."""
    return tiny_checkpoint


@pytest.fixture(scope="module")
def uniformer_checkpoint(checkpoint: Path, tmp_path_factory) -> Path:
    """The same run as a UniFormer (structure_dim 0): the checkpoint file with the StructSA filters taken out
    and the backbone config saying D = 0, as a D = 0 fit would have written it (saves a second training)."""
    payload = torch.load(checkpoint, map_location="cpu", weights_only=False)
    payload["hyper_parameters"]["backbone"] = {**payload["hyper_parameters"]["backbone"], "structure_dim": 0}
    payload["state_dict"] = {
        k: v for k, v in payload["state_dict"].items() if ".k_struct." not in k and ".v_struct." not in k
    }
    path = tmp_path_factory.mktemp("uniformer") / "uniformer.ckpt"
    torch.save(payload, path)
    return path


def eager_and_clips(ckpt: Path, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    from src.trained import load_trained

    trained = load_trained(ckpt)
    clips = torch.randn(batch, *trained.protocol.clip_shape, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        return clips, trained.module(clips)


def check_sidecar(out: Path, fmt: str, structure_dim: int) -> dict:
    meta = json.loads(Path(f"{out}.json").read_text())
    assert meta["format"] == fmt and meta["file"] == out.name and meta["size_bytes"] == out.stat().st_size
    assert meta["variant"] == "structvit_xs" and meta["backbone"]["structure_dim"] == structure_dim
    assert meta["num_classes"] == len(meta["class_names"]) == 14 and "move_right" in meta["class_names"]
    protocol = meta["eval_protocol"]
    assert (protocol["num_frames"], protocol["crop_size"], protocol["sampling"]) == (8, 32, "segment")
    assert protocol["mean"] == [0.45] * 3 and protocol["std"] == [0.225] * 3
    assert meta["input"]["name"] == "video" and meta["input"]["shape"] == ["batch", 3, 8, 32, 32]
    assert meta["output"]["shape"] == ["batch", 14]
    assert meta["check"]["batch_sizes"] == [1, 3] and meta["check"]["passed"] is True
    assert meta["check"]["max_abs_diff"] <= 1e-4
    return meta


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_onnx_export_from_the_command_line_matches_eager_at_batch_1_and_3(checkpoint, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "model.onnx"
    result = ok(run_export("--ckpt", str(checkpoint), "--format", "onnx", "--out", str(out)))
    assert (
        printed_max_diff(result.stdout) <= 1e-4
        and "file size" in result.stdout
        and "onnxruntime" in result.stdout
    )
    check_sidecar(out, "onnx", 4)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["video"]
    for batch in (1, 3):
        clips, expected = eager_and_clips(checkpoint, batch)
        (logits,) = session.run(["logits"], {"video": clips.numpy()})
        assert logits.shape == (batch, 14)
        torch.testing.assert_close(torch.from_numpy(logits), expected, atol=1e-4, rtol=0)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_export_from_the_command_line_matches_eager_at_batch_1_and_3(checkpoint, tmp_path):
    out = tmp_path / "model.pt"
    result = ok(run_export("--ckpt", str(checkpoint), "--format", "torchscript", "--out", str(out)))
    assert printed_max_diff(result.stdout) <= 1e-4 and "torch.jit.load" in result.stdout
    check_sidecar(out, "torchscript", 4)
    module = torch.jit.load(str(out))
    for batch in (1, 3):
        clips, expected = eager_and_clips(checkpoint, batch)
        with torch.no_grad():
            logits = module(clips)
        assert logits.shape == (batch, 14)
        torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_uniformer_exports_and_matches(uniformer_checkpoint, tmp_path, capsys, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    from src.export import main

    out = tmp_path / f"uniformer.{fmt}"
    with OneThread():
        code = main(["--ckpt", str(uniformer_checkpoint), "--format", fmt, "--out", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    assert printed_max_diff(stdout) <= 1e-4
    check_sidecar(out, fmt, 0)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_difference_above_atol_fails_with_status_3_and_keeps_the_file_marked(
    uniformer_checkpoint, tmp_path, capsys
):
    pytest.importorskip("onnxruntime")
    from src.export import EXIT_MISMATCH, main

    out = tmp_path / "strict.onnx"
    with OneThread():
        code = main(["--ckpt", str(uniformer_checkpoint), "--out", str(out), "--atol", "1e-12"])
    err = capsys.readouterr().err
    assert (
        code == EXIT_MISMATCH and "differs from eager PyTorch" in err and "--atol" in err and str(out) in err
    )
    assert json.loads(Path(f"{out}.json").read_text())["check"]["passed"] is False


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_file_that_is_not_a_checkpoint_fails_with_one_line_naming_it(tmp_path):
    text = tmp_path / "notes.ckpt"
    text.write_text("hello\n")  # trips torch's safe unpickler with a KeyError
    result = run_export("--ckpt", str(text), "--format", "torchscript", "--out", str(tmp_path / "m.pt"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (
        result.stderr.count("\n") == 1
        and str(text) in result.stderr
        and "not a file written by torch.save" in result.stderr
    )
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.timeout(120)
def test_corrupt_foreign_and_missing_files_fail_with_the_file_and_the_fix(
    zip_checkpoint_bytes, tmp_path, capsys
):
    from src.export import main

    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(zip_checkpoint_bytes[: len(zip_checkpoint_bytes) // 2])
    foreign = tmp_path / "weights.pth"
    torch.save({"model": {"w": torch.zeros(2)}}, foreign)
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    cases = {
        truncated: "truncated or corrupt",
        foreign: "not a checkpoint written by this project",
        tmp_path / "missing.ckpt": "does not exist",
        # the safe unpickler stops at the text's first byte, an opcode it does not allow
        text: "refused by the safe checkpoint loader",
    }
    for path, reason in cases.items():
        assert main(["--ckpt", str(path), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 1
        err = capsys.readouterr().err
        assert str(path) in err and reason in err and "Traceback" not in err


@pytest.fixture
def zip_checkpoint_bytes(tmp_path) -> bytes:
    """Bytes of a real (zip) torch checkpoint, to truncate: any torch.save file has the same container."""
    path = tmp_path / "whole.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}, "hyper_parameters": {}}, path)
    return path.read_bytes()


def test_a_missing_runtime_names_the_export_extra(monkeypatch, tmp_path, capsys):
    from src.export import ExportError, main, require

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(ExportError, match=r"pip install '\.\[export\]'"):
        require("onnxruntime", "Checking the ONNX file")
    assert main(["--ckpt", str(tmp_path / "any.ckpt"), "--format", "onnx"]) == 1
    assert "pip install '.[export]'" in capsys.readouterr().err


@pytest.mark.timeout(120)
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::FutureWarning")
def test_tracing_with_autograd_on_sees_plain_depthwise_convolutions_and_matches_eager():
    """torch.jit.trace with grad enabled used to stop at DepthwiseConv3d's Python autograd Function."""
    from src.models import build_model

    torch.manual_seed(0)
    with OneThread():
        model = build_model("structvit_xs", num_classes=5).eval()
        clips = torch.randn(2, 3, 4, 32, 32)
        traced = torch.jit.trace(model, clips, check_trace=False)
        other = torch.randn(3, 3, 4, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(traced(other), model(other), atol=1e-5, rtol=0)


@pytest.mark.timeout(120)
def test_python_api_exports_a_random_model_in_both_formats(tmp_path):
    """The functions benchmarks call: a model built by name, exported and checked at batch sizes 1 and 2."""
    from src.export import check_export, export_onnx, export_torchscript
    from src.models import build_model

    torch.manual_seed(0)
    shape = (3, 4, 32, 32)
    with OneThread():
        model = build_model("structvit_xs", num_classes=5).eval()
        path = export_torchscript(model, shape, tmp_path / "m.pt")
        result = check_export(model, path, "torchscript", shape, batch_sizes=(1, 2))
        assert result.passed and result.max_abs_diff <= 1e-5 and sorted(result.per_batch) == [1, 2]
        if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
            path = export_onnx(model, shape, tmp_path / "m.onnx")
            result = check_export(model, path, "onnx", shape, batch_sizes=(1, 2))
            assert result.passed and "onnxruntime" in result.runtime


@pytest.mark.timeout(300)
def test_the_dynamo_exporter_also_works_where_onnxscript_is_installed(tmp_path):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    from src.export import check_export, export_onnx, onnx_opset
    from src.models import build_model

    torch.manual_seed(0)
    shape = (3, 4, 32, 32)
    with OneThread():
        model = build_model("structvit_xs", num_classes=5).eval()
        path = export_onnx(model, shape, tmp_path / "m.onnx", dynamo=True)
        assert onnx_opset(path) >= 18 and not list(tmp_path.glob("*.data"))  # one self-contained file
        assert check_export(model, path, "onnx", shape, batch_sizes=(1, 3)).passed


@pytest.mark.parametrize("value", ["nan", "-1", "inf", "1e-4x"])
def test_an_atol_that_is_not_a_finite_tolerance_is_refused_by_the_parser_in_one_line(value, capsys):
    """`--atol nan` and `--atol -1` were accepted (nan passes no check, -1 fails every one)."""
    from src.export import main

    with pytest.raises(SystemExit) as exit_:
        main(["--ckpt", "any.ckpt", "--atol", value])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert f"argument --atol: '{value}' is not a tolerance: give a finite number >= 0" in err


def file_state(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("link", ["same path", "hard link", "symbolic link", "sidecar"])
def test_an_out_that_is_the_checkpoint_is_refused_before_loading_even_with_overwrite(
    checkpoint, tmp_path, capsys, link
):
    """`--ckpt v2.ckpt --out v2.ckpt` replaced the checkpoint with TorchScript."""
    from src.export import main

    ckpt = tmp_path / "v2.ckpt"  # a copy: the session's checkpoint is read-only
    shutil.copy(checkpoint, ckpt)
    out = {"same path": ckpt, "hard link": tmp_path / "hard.pt", "symbolic link": tmp_path / "sym.pt"}.get(
        link, tmp_path / "v2"
    )
    if link == "hard link":
        os.link(ckpt, out)
    elif link == "symbolic link":
        out.symlink_to(ckpt)
    elif link == "sidecar":
        os.link(ckpt, tmp_path / "v2.json")  # the sidecar of --out v2
    before = file_state(ckpt)
    code = main(["--ckpt", str(ckpt), "--format", "torchscript", "--out", str(out), "--overwrite"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert f"is the checkpoint --ckpt {ckpt}: writing it would destroy the checkpoint" in err
    assert "--out " + str(tmp_path / "v2.torchscript.pt") in err  # the default name, offered instead
    assert file_state(ckpt) == before


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_an_existing_export_is_replaced_only_with_overwrite(checkpoint, tmp_path, capsys):
    from src.export import main

    out = tmp_path / "model.pt"
    out.write_bytes(b"an earlier export")
    args = ["--ckpt", str(checkpoint), "--format", "torchscript", "--out", str(out)]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"--out {out} already exists; pass --overwrite to replace it" in err and err.count("\n") == 1
    assert out.read_bytes() == b"an earlier export" and not Path(f"{out}.json").exists()

    out.unlink()
    Path(f"{out}.json").write_text("{}")  # a sidecar left alone is an earlier result too
    assert (
        main(args) == 1 and f"the sidecar {out}.json of --out {out} already exists" in capsys.readouterr().err
    )
    with OneThread():
        assert main([*args, "--overwrite"]) == 0
    assert "max abs diff" in capsys.readouterr().out and out.stat().st_size > 1e5
    assert json.loads(Path(f"{out}.json").read_text())["file"] == "model.pt"


def test_an_out_that_is_a_directory_is_named_as_such_with_a_file_to_give(
    zip_checkpoint_bytes, tmp_path, capsys
):
    """A directory as --out used to fail inside the exporter with advice to try another opset."""
    from src.export import main

    ckpt = tmp_path / "best.ckpt"
    ckpt.write_bytes(zip_checkpoint_bytes)
    folder = tmp_path / "exported"
    folder.mkdir()
    assert main(["--ckpt", str(ckpt), "--format", "torchscript", "--out", str(folder)]) == 1
    err = capsys.readouterr().err
    assert (
        f"--out {folder} is a directory; give the exported file's name in it, e.g. --out {folder / 'best.torchscript.pt'}"
        in err
    )
    assert "opset" not in err and err.count("\n") == 1


def test_dynamo_without_onnxscript_names_the_package_to_install_before_loading(monkeypatch, tmp_path, capsys):
    """The hint named the export extra, which does not contain onnxscript."""
    from src.export import main

    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import fails as if not installed
    code = main(["--ckpt", str(tmp_path / "missing.ckpt"), "--dynamo", "--out", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert (
        "needs the `onnxscript` package" in err and "pip install onnxscript" in err and ".[export]" not in err
    )
    assert main(["--ckpt", str(tmp_path / "missing.ckpt"), "--dynamo", "--format", "torchscript"]) == 1
    assert "--dynamo chooses the ONNX exporter" in capsys.readouterr().err
