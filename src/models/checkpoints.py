"""Load UniFormer / StructViT / Lightning checkpoints into any model of the family, with a key report.

Official UniFormer ImageNet checkpoints keep the weights under `model`, SlowFast-style video ones under
`model_state`, Lightning ones under `state_dict` with a `backbone.` prefix; bare state dicts load as they
are. 2-D kernels (4-D tensors of an official image checkpoint, or 3-D kernels of temporal size 1 of this
project's image network) are inflated to the video model's temporal size: UniFormer's way (repeat over time
and divide by the temporal size) or `centre` (the 2-D kernel at the central tap, zeros elsewhere). StructSA's
key/value filters of an image StructViT always take the centre tap: with it, a clip of identical frames gives
each frame's key and value structures exactly what the image model computed, the repeated keys leave the
softmax unchanged, and the temporal taps start at zero to learn motion (docs/imagenet.md). The classifier is dropped when the class
count differs, or remapped row by row when both class lists are known. StructSA filters missing from the
source (a plain-attention checkpoint) are set by `struct_init`: "identity" (the default) makes the network
start out computing exactly what the source computed (with S = 1); "shifted" keeps filter 0 the identity and
starts the others at neighbouring taps (a start that breaks the symmetry of the D filters, at the cost of
a function gap at step 0; BENCHMARKS.md "Motion"). Files are read with `torch.load(weights_only=True)`: a
checkpoint from the internet must not be able to run code.
"""

from __future__ import annotations

import argparse
import logging
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .structsa import STRUCT_INITS, StructSA

_CONTAINER_KEYS = ("state_dict", "model_state", "model")
_PREFIXES = ("backbone.", "model.", "module.")
_INFLATIONS = ("average", "centre", "center")


@dataclass
class LoadReport:
    """What load_pretrained did with every key."""

    source: str
    loaded: list[str] = field(default_factory=list)
    inflated: list[str] = field(default_factory=list)  # 2-D kernels inflated to 3-D (also in loaded)
    # each inflated key: (rule, source shape, model shape)
    inflation: dict[str, tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    missing: list[str] = field(
        default_factory=list
    )  # model keys the source lacks (identity-initialised excluded)
    unexpected: list[str] = field(default_factory=list)  # source keys the model lacks
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    head_dropped: bool = False  # classifier left at its fresh init (class count differs, or not used)
    head_unused: str | None = None  # why the source's classifier was not used at all (use_head=False)
    head_remapped: int | None = None  # classes copied by name when both class lists were given
    identity_init: list[str] = field(default_factory=list)  # StructSA modules whose filters the source lacked
    struct_init: str = "identity"  # how those filters were set

    @property
    def clean(self) -> bool:
        """True when every model key came from the source (apart from a dropped head / identity filters)."""
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        rules = sorted({rule for rule, _, _ in self.inflation.values()})
        by_rule = ", ".join(
            f"{sum(r == rule for r, _, _ in self.inflation.values())} {rule}" for rule in rules
        )
        lines = [
            f"load_pretrained from {self.source}: {len(self.loaded)} tensors loaded"
            f" ({len(self.inflated)} inflated 2-D -> 3-D{f': {by_rule}' if by_rule else ''})"
        ]
        if self.head_unused:
            lines.append(
                f"  head: not used ({self.head_unused}), classifier left at its fresh initialisation"
            )
        elif self.head_dropped:
            lines.append("  head: class count differs, classifier left at its fresh initialisation")
        if self.head_remapped is not None:
            lines.append(f"  head: {self.head_remapped} classes copied by name, the rest freshly initialised")
        if self.identity_init:
            lines.append(
                f"  StructSA filters set to {self.struct_init} (source has none): {len(self.identity_init)} modules"
            )
        for title, keys in (("missing", self.missing), ("unexpected (ignored)", self.unexpected)):
            if keys:
                lines.append(
                    f"  {title} ({len(keys)}): " + ", ".join(keys[:12]) + (" ..." if len(keys) > 12 else "")
                )
        for name, src, dst in self.mismatched:
            lines.append(f"  shape mismatch (not loaded): {name} source {src} model {dst}")
        return "\n".join(lines)

    def inflation_details(self) -> str:
        """One line per inflated tensor: its key, the rule, the source and model shapes (empty when none)."""
        if not self.inflation:
            return ""
        rows = [
            f"  {key}: {rule} {list(src)} -> {list(dst)}" for key, (rule, src, dst) in self.inflation.items()
        ]
        return "inflated 2-D -> 3-D (key: rule source -> model shape):\n" + "\n".join(rows) + "\n"


log = logging.getLogger(__name__)

# Python classes a checkpoint may hold besides tensors and containers: the official UniFormer image training
# script stores its `args` (an argparse.Namespace of plain values) in every checkpoint. Nothing broader.
SAFE_GLOBALS = [argparse.Namespace]


class CheckpointFileError(ValueError):
    """A checkpoint file that is refused (it holds code objects) or cannot be read (truncated, corrupt)."""


def load_checkpoint_file(path: str | Path, *, mmap: bool = False) -> Any:
    """`torch.load(path, weights_only=True)` with `SAFE_GLOBALS` allowed and errors that name the file and the fix.

    A file that holds other Python objects is refused, never loaded with the protection off (unpickling them can
    run code from the file); a truncated or corrupt file says so.
    """
    path = Path(path)
    if path.is_dir() or (path.exists() and not path.is_file()):
        what = "a directory" if path.is_dir() else "a device, pipe or socket"
        raise CheckpointFileError(f"{path} is {what}, not a checkpoint file; name a .ckpt/.pth file")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        what = f"a Python object of type {found.group(1)}" if found else "Python objects other than tensors"
        raise CheckpointFileError(
            f"{path}: refused by the safe checkpoint loader: it holds {what}, which loading would have to execute. "
            "Re-save only its tensors where it was made, e.g. torch.save({'state_dict': model.state_dict()}, "
            "'clean.ckpt'), and use that file."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        reason = str(err).splitlines()[0].split(". ")[0][:200] if str(err) else type(err).__name__
        if isinstance(err, KeyError):  # torch's legacy reader on a file torch.save never wrote (text, ...)
            reason = "not a file written by torch.save"
        raise CheckpointFileError(
            f"{path}: truncated or corrupt ({reason}); not a complete checkpoint. Use another checkpoint of the "
            "run (checkpoints/best-*.ckpt, last.ckpt) or save it again."
        ) from None


def read_state_dict(source: str | Path | Mapping) -> tuple[dict[str, Tensor], str]:
    """The flat tensor state dict of a checkpoint file or dict, with containers and prefixes removed."""
    label = "<dict>"
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():  # a directory or device: load_checkpoint_file says which
            raise FileNotFoundError(
                f"load_pretrained: checkpoint {path} does not exist; pass a .pth/.ckpt file"
            )
        label = str(path)
        source = load_checkpoint_file(path)
    state = dict(source)
    for key in _CONTAINER_KEYS:
        if key in state and isinstance(state[key], Mapping):
            state = dict(state[key])
            break
    state = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    if not state:
        raise ValueError(
            f"load_pretrained: {label} holds no tensors (looked under {', '.join(_CONTAINER_KEYS)})"
        )
    for prefix in _PREFIXES:
        if any(k.startswith(prefix) for k in state):
            # a Lightning checkpoint also holds non-backbone keys (losses, metrics): keep the backbone only
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return state, label


def inflate(weight: Tensor, temporal: int, mode: str = "average") -> Tensor:
    """2-D kernel (O, I, kH, kW), or 3-D of temporal size 1 (O, I, 1, kH, kW) -> 3-D (O, I, temporal, kH, kW):
    repeat and divide, or centre tap only."""
    if weight.dim() == 5:
        if weight.shape[2] != 1:
            raise ValueError(f"inflate: a 3-D kernel of temporal size {weight.shape[2]} is not a 2-D one")
        weight = weight[:, :, 0]
    if mode == "average":
        return weight.unsqueeze(2).repeat(1, 1, temporal, 1, 1) / temporal
    out = weight.new_zeros(weight.shape[0], weight.shape[1], temporal, *weight.shape[2:])
    out[:, :, temporal // 2] = weight
    return out


def is_2d_kernel_of(src: Tensor, dst: Tensor) -> bool:
    """Whether `src` is the 2-D form of the 3-D kernel `dst` (O, I, kT, kH, kW): (O, I, kH, kW), or
    (O, I, 1, kH, kW) of an image network of this project."""
    if dst.dim() != 5 or src.shape[:2] != dst.shape[:2]:
        return False
    if src.dim() == 4:
        return src.shape[2:] == dst.shape[3:]
    return src.dim() == 5 and src.shape[2] == 1 and src.shape[3:] == dst.shape[3:]


def _is_struct_filter(key: str) -> bool:
    return key.endswith(("k_struct.weight", "v_struct.weight"))


def _remap_head(
    key: str, src: Tensor, dst: Tensor, source_classes: list[str], target_classes: list[str]
) -> tuple[Tensor, int]:
    if len(source_classes) != src.shape[0]:
        raise ValueError(
            f"load_pretrained: source_classes lists {len(source_classes)} names but {key} has {src.shape[0]} rows"
        )
    out = dst.clone()
    where = {name: i for i, name in enumerate(source_classes)}
    matched = 0
    for row, name in enumerate(target_classes):
        if name in where:
            out[row] = src[where[name]]
            matched += 1
    return out, matched


def load_pretrained(
    model: nn.Module,
    source: str | Path | dict,
    *,
    target_classes: list[str] | None = None,
    source_classes: list[str] | None = None,
    temporal_inflation: str = "average",
    struct_init: str = "identity",
    use_head: bool = True,
    head_note: str = "its class order is unknown",
) -> LoadReport:
    """Load a checkpoint into model (in place) and return the report of what was loaded, inflated or left out.

    `struct_init` sets the StructSA filters the source lacks (see the module docstring and `STRUCT_INITS`).
    `use_head=False` leaves the classifier fresh whatever its shape (a head whose class order is unknown would
    load silently when the counts agree); `head_note` says why, in the report.
    """
    if struct_init not in STRUCT_INITS:
        raise ValueError(
            f"load_pretrained: struct_init={struct_init!r}; use one of {', '.join(STRUCT_INITS)}"
        )
    if temporal_inflation not in _INFLATIONS:
        raise ValueError(
            f"load_pretrained: temporal_inflation={temporal_inflation!r}; use 'average' or 'centre'"
        )
    state, label = read_state_dict(source)
    report = LoadReport(source=label)
    own = model.state_dict()
    head_keys = {k for k in own if k.startswith("head.")}
    new_state: dict[str, Tensor] = {}
    if not use_head:
        report.head_dropped, report.head_unused = True, head_note
    for key, dst in own.items():
        if key not in state or (key in head_keys and not use_head):
            continue
        src = state[key]
        named = source_classes is not None and target_classes is not None
        if (
            key in head_keys
            and named
            and src.dim() == dst.dim()
            and list(source_classes) != list(target_classes)
        ):
            # other classes (or an other order): rows follow the names, even when the counts agree
            new_state[key], report.head_remapped = _remap_head(key, src, dst, source_classes, target_classes)
            continue
        if src.shape == dst.shape:
            new_state[key] = src
        elif key in head_keys:
            if source_classes is not None and target_classes is not None and src.dim() == dst.dim():
                new_state[key], report.head_remapped = _remap_head(
                    key, src, dst, source_classes, target_classes
                )
            else:
                report.head_dropped = True
            continue
        elif is_2d_kernel_of(src, dst):
            rule = "centre" if temporal_inflation != "average" or _is_struct_filter(key) else "average"
            new_state[key] = inflate(src, dst.shape[2], rule)
            report.inflated.append(key)
            report.inflation[key] = (rule, tuple(src.shape), tuple(dst.shape))
        else:
            report.mismatched.append((key, tuple(src.shape), tuple(dst.shape)))
            continue
        report.loaded.append(key)
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in new_state.items()}, strict=False)

    # StructSA filters the source lacks: by default the identity, i.e. what the source computed.
    for name, module in model.named_modules():
        if isinstance(module, StructSA) and module.k_struct is not None:
            keys = [f"{name}.k_struct.weight", f"{name}.v_struct.weight"]
            if not any(k in new_state for k in keys):
                module.reset_struct_parameters(struct_init)
                report.identity_init.append(name)
    report.struct_init = struct_init
    identity = {f"{n}.{p}.weight" for n in report.identity_init for p in ("k_struct", "v_struct")}
    report.missing = [
        k
        for k in own
        if k not in new_state
        and k not in identity
        and not (k in head_keys and (report.head_dropped or report.head_remapped is not None))
        and k not in {m[0] for m in report.mismatched}
    ]
    report.unexpected = [k for k in state if k not in own]  # an unused head's keys are in `own`: not listed
    log.info("%s", report)  # callers that show it (init_from, the fine-tuning benchmark) print it themselves
    return report
