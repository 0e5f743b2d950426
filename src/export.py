"""Take a trained model out of Python: ONNX or TorchScript, checked against eager PyTorch.

    python -m src.export --ckpt runs/synthetic/version_0/checkpoints/best.ckpt --format onnx --out model.onnx
    python -m src.export --ckpt runs/synthetic/version_0/checkpoints/best.ckpt --format torchscript --out model.pt

The checkpoint is rebuilt by `src.trained.load_trained` and its backbone is exported: one input, a batch of
clips (batch, 3, T, H, W) float32 with T, H, W fixed by the checkpoint's evaluation protocol and the batch
dimension free; one output, logits (batch, K). The exported network does NOT normalise: the caller samples
and crops frames as the protocol says, scales them to [0, 1] and normalises each RGB channel with the
protocol's `mean` / `std`, which the JSON sidecar `<out>.json` records (with the class names, the variant
and the check's result), so the exported file is usable without the checkpoint. docs/export.md shows how.

After export the file is run on random clips at two batch sizes (1 and --check-clips, proving the batch
dimension is dynamic): ONNX through onnxruntime's CPUExecutionProvider, TorchScript through `torch.jit.load`.
The largest absolute difference from eager PyTorch is printed; above --atol the command exits with status 3
(the file and sidecar stay, marked `"passed": false`, for inspection). Any other error exits with status 1 and
one message naming the file and the fix; a bad argument exits with status 2 and one line. An existing --out (or
its sidecar) is replaced only with --overwrite, and never when it is the checkpoint itself. ONNX needs the
`export` extra: pip install '.[export]'.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from src.paths import file_identity

FORMATS = ("onnx", "torchscript")
INPUT_NAME = "video"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 17
DYNAMO_MIN_OPSET = 18  # the lowest opset torch's dynamo exporter has implementations for
DEFAULT_ATOL = 1e-4
EXIT_ERROR = 1
EXIT_MISMATCH = 3
INSTALL_HINT = (
    "install the export extra: pip install '.[export]' (in a checkout: pip install -e '.[export]'; `make install` "
    "includes it), or pip install onnx onnxruntime"
)
# onnxscript (and onnx-ir, its dependency) is not in the export extra: only the optional --dynamo exporter uses it
DYNAMO_INSTALL_HINT = "pip install onnxscript (not part of the export extra: only --dynamo uses it)"
PREPROCESSING = (
    "frames sampled and cropped as eval_protocol says (num_frames, sampling, crop_size; test_views views per "
    "video), RGB scaled to [0, 1], then (x - mean) / std per channel with eval_protocol.mean / eval_protocol.std; "
    "layout (batch, 3, T, H, W), float32. The exported network does not normalise."
)


class ExportError(RuntimeError):
    """An export that could not be made or run; the message names the file and the fix."""


class ExportMismatchError(ExportError):
    """The exported file disagrees with eager PyTorch by more than the tolerance."""


def require(module: str, purpose: str, hint: str = INSTALL_HINT) -> ModuleType:
    """Import an optional package, or raise ExportError saying how to install it (`hint`)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExportError(f"{purpose} needs the `{module}` package, which is not installed: {hint}") from None


@contextmanager
def _exporting(model: nn.Module) -> Iterator[None]:
    """Eval mode, no autograd, and quiet about what tracing is expected to do here.

    Silenced: TracerWarnings from the shape checks of StructSA / StructViT (they compare T, H, W and the
    channel count, fixed by the protocol, so freezing them is right; the batch size is never checked), and the
    deprecation notices of torch.jit.trace / the TorchScript-based ONNX exporter (chosen on purpose, see
    `export_onnx`)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\..*")
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\..*")
            warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export.*")
            yield
    finally:
        model.train(was_training)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def example_clips(clip_shape: Sequence[int], batch: int, seed: int = 0) -> Tensor:
    """`batch` random normalised-looking clips (batch, *clip_shape), float32, from a fixed seed."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *clip_shape, generator=generator)


def export_onnx(
    model: nn.Module,
    clip_shape: Sequence[int],
    out: str | Path,
    *,
    batch: int = 2,
    opset: int = DEFAULT_OPSET,
    dynamo: bool = False,
) -> Path:
    """Write `model` ((B, *clip_shape) -> (B, K)) as ONNX with a dynamic batch dimension; returns the path."""
    out = Path(out)
    onnx = require("onnx", "ONNX export")
    out.parent.mkdir(parents=True, exist_ok=True)
    example = example_clips(clip_shape, batch)
    # The exporter: torch 2.14's default (dynamo=True, through torch.export) also exports StructViT and
    # UniFormer and matches as closely, but it needs two more packages (onnxscript, onnx-ir) and is slower
    # (docs/export.md). The TorchScript-based exporter (dynamo=False) needs only torch, marks
    # the batch axis dynamic with `dynamic_axes`, and its graph is checked below and by `check_export` at two
    # batch sizes. Tracing sees the plain depthwise convolution (DepthwiseConv3d skips its autograd Function
    # under tracing) and SDPA, which opset >= 14 expresses with MatMul / Softmax. `dynamo=True` stays available
    # (`--dynamo`) for a torch where the TorchScript-based exporter is gone.
    if dynamo:
        require("onnxscript", "ONNX export with --dynamo", DYNAMO_INSTALL_HINT)
        opset = max(
            opset, DYNAMO_MIN_OPSET
        )  # below it, the dynamo exporter converts down and often fails noisily
    kwargs: dict[str, Any] = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset)
    if dynamo:
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
        kwargs["external_data"] = False  # one self-contained file, as the TorchScript-based exporter writes
        kwargs["verbose"] = False
    else:
        kwargs["dynamic_axes"] = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
        kwargs["do_constant_folding"] = True
    try:
        with _exporting(model):
            torch.onnx.export(model, (example,), str(out), dynamo=dynamo, **kwargs)
        onnx.checker.check_model(str(out))
    except ExportError:
        raise
    except Exception as err:  # noqa: BLE001 - any exporter failure becomes one message naming the file
        reason = _first_line(err)
        raise ExportError(
            f"{out}: ONNX export failed ({type(err).__name__}: {reason}). Try the default opset "
            f"(--opset {DEFAULT_OPSET}) or --format torchscript"
        ) from err
    return out


def onnx_opset(path: str | Path) -> int:
    """The default-domain opset an ONNX file was written with."""
    onnx = require("onnx", "Reading the ONNX file")
    model = onnx.load(str(path), load_external_data=False)
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), -1)


def export_torchscript(
    model: nn.Module, clip_shape: Sequence[int], out: str | Path, *, batch: int = 2
) -> Path:
    """Write `model` ((B, *clip_shape) -> (B, K)) as a traced TorchScript file; returns the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    example = example_clips(clip_shape, batch)
    # Tracing, not torch.jit.script: StructViT's Python (tuple grids, getattr over stages, checkpointing)
    # is not TorchScript, and for a fixed clip shape the traced graph is the whole network; sizes read from
    # the batch axis are recorded as operations, so other batch sizes run (checked by `check_export`).
    try:
        with _exporting(model):
            traced = torch.jit.trace(model, example, check_trace=False)
            torch.jit.save(traced, str(out))
    except Exception as err:  # noqa: BLE001
        reason = _first_line(err)
        raise ExportError(
            f"{out}: TorchScript export failed ({type(err).__name__}: {reason}); try --format onnx"
        ) from err
    return out


def load_exported(path: str | Path, fmt: str, threads: int | None = None) -> Callable[[Tensor], Tensor]:
    """The exported file as a function (B, 3, T, H, W) float32 CPU tensor -> (B, K) logits tensor."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no exported file there; write it with python -m src.export")
    if fmt == "onnx":
        ort = require("onnxruntime", "Running the ONNX file")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        def run_onnx(clips: Tensor) -> Tensor:
            return torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: clips.numpy()})[0])

        return run_onnx
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu").eval()

        def run_torchscript(clips: Tensor) -> Tensor:
            with torch.no_grad():
                return module(clips)

        return run_torchscript
    raise ValueError(f"unknown format {fmt!r}; use one of {FORMATS}")


def runtime_name(fmt: str) -> str:
    """What runs the exported file in `check_export`, with its version."""
    if fmt == "onnx":
        ort = require("onnxruntime", "Running the ONNX file")
        return f"onnxruntime {ort.__version__} CPUExecutionProvider"
    return f"torch.jit.load (torch {torch.__version__})"


@dataclass
class CheckResult:
    """Exported vs eager logits on random clips: the largest absolute difference, overall and per batch size."""

    runtime: str
    batch_sizes: list[int]
    per_batch: dict[int, float]
    atol: float

    @property
    def max_abs_diff(self) -> float:
        return max(self.per_batch.values())

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.atol

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: what the sidecar records."""
        return {
            "runtime": self.runtime,
            "batch_sizes": self.batch_sizes,
            "max_abs_diff": self.max_abs_diff,
            "max_abs_diff_per_batch": {str(b): d for b, d in self.per_batch.items()},
            "atol": self.atol,
            "passed": self.passed,
            "inputs": "random normal clips, seeded",
        }


def check_export(
    model: nn.Module,
    path: str | Path,
    fmt: str,
    clip_shape: Sequence[int],
    *,
    batch_sizes: Sequence[int] = (1, 3),
    atol: float = DEFAULT_ATOL,
    seed: int = 0,
) -> CheckResult:
    """Run the exported file and eager `model` on the same random clips at each batch size; compare logits."""
    run = load_exported(path, fmt)
    per_batch: dict[int, float] = {}
    for i, size in enumerate(batch_sizes):
        clips = example_clips(clip_shape, size, seed=seed + 1 + i)
        with _exporting(model):
            expected = model(clips)
        try:
            got = run(clips)
        except Exception as err:  # noqa: BLE001
            reason = _first_line(err)
            raise ExportError(
                f"{path}: the exported {fmt} file fails on a batch of {size} clips ({reason})"
            ) from err
        if tuple(got.shape) != tuple(expected.shape):
            raise ExportMismatchError(
                f"{path}: output shape {tuple(got.shape)} for a batch of {size}, eager gives {tuple(expected.shape)}"
            )
        per_batch[int(size)] = float((got.float() - expected.float()).abs().max())
    return CheckResult(runtime_name(fmt), [int(b) for b in batch_sizes], per_batch, float(atol))


def sidecar_path(out: str | Path) -> Path:
    """`model.onnx` -> `model.onnx.json`."""
    out = Path(out)
    return out.with_name(out.name + ".json")


@dataclass
class ExportReport:
    """What `export_checkpoint` wrote and measured."""

    path: Path
    format: str
    size_bytes: int
    sidecar: Path
    seconds: float
    check: CheckResult | None
    metadata: dict[str, Any] = field(default_factory=dict)


def sidecar_metadata(
    *,
    fmt: str,
    out: Path,
    variant: str,
    class_names: Sequence[str],
    protocol: Any,
    opset: int | None,
    dynamo: bool,
    check: CheckResult | None,
    backbone: dict | None = None,
    source: Path | None = None,
) -> dict[str, Any]:
    """The sidecar's content: what a caller needs to feed the exported file and read its output."""
    clip_shape = list(protocol.clip_shape)
    exporter = (
        ("torch.onnx.export(dynamo=True)" if dynamo else "torch.onnx.export(dynamo=False, TorchScript-based)")
        if fmt == "onnx"
        else "torch.jit.trace"
    )
    return {
        "format": fmt,
        "file": out.name,
        "size_bytes": out.stat().st_size,
        "variant": variant,
        "backbone": dict(backbone) if backbone is not None else None,
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "eval_protocol": protocol.to_dict(),
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", *clip_shape],
            "dtype": "float32",
            "preprocessing": PREPROCESSING,
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["batch", len(class_names)],
            "dtype": "float32",
            "meaning": "logits; softmax over the last axis, then the mean over a video's views",
        },
        "check": check.to_dict() if check is not None else None,
        "exporter": {
            "method": exporter,
            "opset": opset if fmt == "onnx" else None,
            "torch": torch.__version__,
        },
        "source_checkpoint": str(source) if source is not None else None,
    }


def export_checkpoint(
    ckpt: str | Path,
    fmt: str,
    out: str | Path,
    *,
    batch: int = 2,
    opset: int = DEFAULT_OPSET,
    check_clips: int = 3,
    atol: float = DEFAULT_ATOL,
    dynamo: bool = False,
    overwrite: bool = False,
) -> ExportReport:
    """Export a checkpoint's backbone, check it, write the sidecar. Raises ExportMismatchError past `atol`;
    ExportError, before loading anything, for an `out` (or sidecar) that is the checkpoint or, unless
    `overwrite`, exists."""
    from src.models.checkpoints import CheckpointFileError
    from src.trained import load_trained

    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if batch < 1:
        raise ExportError(f"--batch {batch}: the example batch must hold at least one clip")
    if check_clips == 1 or check_clips < 0:
        raise ExportError(
            f"--check-clips {check_clips}: give N >= 2 (batches of 1 and N clips are run) or 0 to skip"
        )
    if not math.isfinite(atol) or atol < 0:
        raise ExportError(f"--atol {atol}: give a finite tolerance >= 0 (default {DEFAULT_ATOL:g})")
    if dynamo and fmt != "onnx":
        raise ExportError("--dynamo chooses the ONNX exporter: drop it, or use --format onnx")
    # before the minutes of loading and exporting: fail now if a package is missing or the output is taken
    if fmt == "onnx":
        require("onnx", "ONNX export")
        if check_clips:
            require("onnxruntime", "Checking the ONNX file")
        if dynamo:
            require("onnxscript", "ONNX export with --dynamo", DYNAMO_INSTALL_HINT)
    out = Path(out)
    check_output(Path(ckpt), out, fmt, overwrite=overwrite)
    try:
        trained = load_trained(ckpt)
    except (CheckpointFileError, FileNotFoundError):
        raise
    except Exception as err:  # noqa: BLE001 - e.g. a text file trips torch's safe unpickler with a KeyError
        raise CheckpointFileError(
            f"{ckpt}: cannot be read as a checkpoint ({type(err).__name__}: {_first_line(err)}); give a .ckpt file "
            "written by `python -m src.cli fit` (runs/<name>/version_<n>/checkpoints/)"
        ) from None
    model, protocol = trained.module.backbone, trained.protocol
    start = time.perf_counter()
    if fmt == "onnx":
        export_onnx(model, protocol.clip_shape, out, batch=batch, opset=opset, dynamo=dynamo)
    else:
        export_torchscript(model, protocol.clip_shape, out, batch=batch)
    seconds = time.perf_counter() - start
    if fmt == "onnx":
        opset = onnx_opset(out)  # what the file holds (the dynamo exporter raises a lower request to 18)
    check = None
    if check_clips:
        check = check_export(model, out, fmt, protocol.clip_shape, batch_sizes=(1, check_clips), atol=atol)
    metadata = sidecar_metadata(
        fmt=fmt,
        out=out,
        variant=trained.variant,
        class_names=trained.class_names,
        protocol=protocol,
        opset=opset,
        dynamo=dynamo,
        check=check,
        backbone=dict(trained.module.hparams.backbone),
        source=trained.path,
    )
    sidecar = sidecar_path(out)
    sidecar.write_text(json.dumps(metadata, indent=2) + "\n")
    report = ExportReport(out, fmt, out.stat().st_size, sidecar, seconds, check, metadata)
    if check is not None and not check.passed:
        raise ExportMismatchError(
            f"{out}: the exported {fmt} model differs from eager PyTorch by {check.max_abs_diff:.3g} > --atol "
            f"{atol:g} (batch sizes {check.batch_sizes}; {check.runtime}). The file and {sidecar.name} are kept "
            "for inspection, marked passed=false: do not use it as is. Try another --opset, or --format torchscript "
            "(with --overwrite to replace this file)"
        )
    return report


def check_output(ckpt: Path, out: Path, fmt: str, *, overwrite: bool = False) -> None:
    """Raise ExportError for an `out` that is a directory, an `out` or sidecar that is the checkpoint (hard and
    symbolic links count), or one that exists when not `overwrite`."""
    if out.is_dir():
        raise ExportError(
            f"--out {out} is a directory; give the exported file's name in it, e.g. "
            f"--out {out / default_out(ckpt, fmt).name}"
        )
    source = file_identity(ckpt)
    for path in (out, sidecar_path(out)):
        if not path.exists():
            continue
        name = f"--out {out}" if path == out else f"the sidecar {path} of --out {out}"
        if source is not None and file_identity(path) == source:
            raise ExportError(
                f"{name} is the checkpoint --ckpt {ckpt}: writing it would destroy the checkpoint; give another "
                f"file, e.g. --out {default_out(ckpt, fmt)}"
            )
        if path.is_dir():
            raise ExportError(f"{name} is a directory; give another --out")
        if not overwrite:
            raise ExportError(f"{name} already exists; pass --overwrite to replace it, or give another --out")


def default_out(ckpt: Path, fmt: str) -> Path:
    """Beside the checkpoint: `best.ckpt` -> `best.onnx` / `best.torchscript.pt`."""
    return ckpt.with_suffix(".onnx" if fmt == "onnx" else ".torchscript.pt")


def tolerance(text: str) -> float:
    """An --atol value: a finite float >= 0 (argparse type: a bad value is a one-line usage error)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a tolerance: give a finite number >= 0, e.g. {DEFAULT_ATOL:g}"
        )
    return value


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument error is one line on stderr (exit 2), not the usage block followed by the error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The `python -m src.export` arguments."""
    p = OneLineErrorParser(prog="python -m src.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", type=Path, required=True, help="checkpoint written by `python -m src.cli fit`")
    p.add_argument("--format", choices=FORMATS, default="onnx", help="onnx (default) or torchscript")
    p.add_argument(
        "--out",
        type=Path,
        help="exported file (default: beside the checkpoint, .onnx / .torchscript.pt); "
        "the sidecar <out>.json is written beside it",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out and its sidecar (never the checkpoint itself)",
    )
    p.add_argument(
        "--batch",
        type=int,
        default=2,
        help="batch size of the example clips traced (default 2); "
        "the exported batch dimension is dynamic anyway",
    )
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument(
        "--dynamo",
        action="store_true",
        help="ONNX through torch.export instead of the TorchScript-based exporter (needs "
        "pip install onnxscript, which the export extra leaves out)",
    )
    p.add_argument(
        "--check-clips",
        type=int,
        default=3,
        help="check batches of 1 and N random clips against eager PyTorch (default 3; 0 skips the check)",
    )
    p.add_argument(
        "--atol",
        type=tolerance,
        default=DEFAULT_ATOL,
        help=f"largest absolute logit difference accepted (default {DEFAULT_ATOL:g})",
    )
    return p


def _describe(report: ExportReport) -> list[str]:
    meta = report.metadata
    size_mb = report.size_bytes / 1e6
    method = meta["exporter"]["method"] + (
        f", opset {meta['exporter']['opset']}" if report.format == "onnx" else ""
    )
    protocol = meta["eval_protocol"]
    lines = [
        f"exported {meta['variant']} ({meta['num_classes']} classes) to {report.path} ({report.format}, {method}) "
        f"in {report.seconds:.1f} s",
        f"file size {report.size_bytes} bytes ({size_mb:.2f} MB)",
        f"input '{INPUT_NAME}' (batch, {', '.join(map(str, meta['input']['shape'][1:]))}) float32, normalised by the "
        f"caller: mean {protocol['mean']}, std {protocol['std']}; output '{OUTPUT_NAME}' (batch, {meta['num_classes']})",
    ]
    check = report.check
    if check is None:
        lines.append("check skipped (--check-clips 0)")
    else:
        verdict = "OK" if check.passed else "FAILED"
        lines.append(
            f"check against eager PyTorch ({check.runtime}, batch sizes "
            f"{', '.join(map(str, check.batch_sizes))}): max abs diff {check.max_abs_diff:.3g} "
            f"(atol {check.atol:g}) {verdict}"
        )
    lines.append(f"sidecar {report.sidecar}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 error, 3 check failed)."""
    from src.models.checkpoints import CheckpointFileError

    args = build_parser().parse_args(argv)
    out = args.out or default_out(args.ckpt, args.format)
    try:
        report = export_checkpoint(
            args.ckpt,
            args.format,
            out,
            batch=args.batch,
            opset=args.opset,
            check_clips=args.check_clips,
            atol=args.atol,
            dynamo=args.dynamo,
            overwrite=args.overwrite,
        )
    except ExportMismatchError as err:
        print(f"src.export: check failed: {err}", file=sys.stderr)
        return EXIT_MISMATCH
    except (ExportError, CheckpointFileError, FileNotFoundError, ValueError, OSError) as err:
        print(f"src.export: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    for line in _describe(report):
        print(line)
    return 0


__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_OPSET",
    "FORMATS",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "CheckResult",
    "ExportError",
    "ExportMismatchError",
    "ExportReport",
    "check_export",
    "check_output",
    "example_clips",
    "export_checkpoint",
    "export_onnx",
    "export_torchscript",
    "load_exported",
    "sidecar_metadata",
    "sidecar_path",
]

if __name__ == "__main__":
    sys.exit(main())
