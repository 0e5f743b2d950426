"""The index contract of a prepared dataset, written and read here only: classes, split CSVs, manifest.

Layout of an index folder: `classes.txt` (line number = label), `<split>.csv` with header `path,label` plus
the optional columns `start,end` (seconds inside a longer file) and `num_frames,fps` (cached probe results),
paths relative to the folder, `manifest.json` (counts, missing/failed items with reasons, fingerprint of the
CSVs, tool version) and, once the dataset doctor ran, `quarantine.txt` (`path<TAB>reason`, rows skipped).

`write_index` (every `python -m data_prep.<dataset>`) writes each file to a temporary name and renames it, so
a killed run never leaves a half index; `read_classes`, `read_split` and `read_fingerprint` (the data
pipeline) read it back.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from src import __version__

INDEX_VERSION = 1
SPLITS = ("train", "val", "test")
OPTIONAL_COLUMNS = ("start", "end", "num_frames", "fps")

log = logging.getLogger(__name__)


class IndexContractError(ValueError):
    """The index folder is absent or malformed; the message names the file and the fix."""


# ------------------------------------------------------------------------------------------- writing
@dataclass(frozen=True)
class IndexRow:
    """One video (or a segment of one) of a split, as written. `path` is relative to the index folder."""

    path: str
    label: int
    start: float | None = None
    end: float | None = None
    num_frames: int | None = None
    fps: float | None = None


def class_name_problem(name: str) -> str | None:
    """Why `name` cannot be one line of classes.txt (None when it can): `read_classes` gives back every other
    name exactly, spaces, non-breaking spaces, quotes, `$`, `%` and the rest included."""
    if not isinstance(name, str) or name == "":
        return "is empty"
    if "\n" in name or "\r" in name:
        return "holds a line break"
    return None


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def rows_to_csv(rows: Sequence[IndexRow]) -> str:
    """Serialise rows with `path,label` and only the optional columns that some row fills."""
    columns = ["path", "label"] + [
        c for c in OPTIONAL_COLUMNS if any(getattr(r, c) is not None for r in rows)
    ]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        values = []
        for column in columns:
            value = getattr(row, column)
            if value is None:
                values.append("")
            elif isinstance(value, float):
                values.append(f"{value:.6g}")
            else:
                values.append(value)
        writer.writerow(values)
    return buf.getvalue()


def fingerprint_of(texts: Iterable[str]) -> str:
    """A short content hash of the split lists and class list: equal fingerprints mean equal data."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def write_index(
    out_dir: Path,
    *,
    dataset: str,
    classes: Sequence[str],
    splits: Mapping[str, Sequence[IndexRow]],
    version: str = "",
    missing: Mapping[str, Sequence[Mapping]] | None = None,
    failed: Mapping[str, Sequence[Mapping]] | None = None,
    extra: Mapping | None = None,
) -> dict:
    """Write the index files of one prepared dataset into `out_dir` and return the manifest.

    `missing` / `failed` map a split to records such as `{"id": ..., "reason": ...}`; they are counted
    and listed in the manifest so a user sees exactly what was lost and why.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)} for {out_dir}; use {SPLITS}")
    for name, rows in splits.items():
        for row in rows:
            if "\r" in row.path:  # csv quotes a field only for the line end it writes, "\n"
                raise ValueError(
                    f"{dataset}/{name}: path {row.path!r} holds a carriage return (\\r), which {name}.csv "
                    "cannot hold; rename the file"
                )
            if not (row.label == -1 or 0 <= row.label < len(classes)):
                raise ValueError(
                    f"{dataset}/{name}: label {row.label} of {row.path} is outside 0..{len(classes) - 1}"
                )

    for label, name in enumerate(classes):
        problem = class_name_problem(name)
        if problem:
            raise ValueError(
                f"{dataset}: class {label} {name!r} {problem}: classes.txt holds one name per line; rename it"
            )
    classes_text = "".join(f"{c}\n" for c in classes)
    csv_texts = {name: rows_to_csv(rows) for name, rows in splits.items()}
    atomic_write_text(out_dir / "classes.txt", classes_text)
    for name, text in csv_texts.items():
        atomic_write_text(out_dir / f"{name}.csv", text)

    missing = {k: list(v) for k, v in (missing or {}).items()}
    failed = {k: list(v) for k, v in (failed or {}).items()}
    manifest = {
        "dataset": dataset,
        "version": version,
        "index_version": INDEX_VERSION,
        "num_classes": len(classes),
        "counts": {name: len(rows) for name, rows in splits.items()},
        "missing_counts": {name: len(items) for name, items in missing.items()},
        "failed_counts": {name: len(items) for name, items in failed.items()},
        "missing": missing,
        "failed": failed,
        "fingerprint": fingerprint_of([classes_text] + [csv_texts[n] for n in sorted(csv_texts)]),
        "tool": f"structvit-lightning {__version__}",  # the tool version that wrote the index
        "written": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if extra:
        manifest.update(extra)
    atomic_write_text(out_dir / "manifest.json", json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return manifest


# ------------------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class Entry:
    """One row of a split, as read: absolute path, label (-1 = unlabelled), optional segment and cached probe."""

    path: Path
    label: int
    start: float | None = None
    end: float | None = None
    num_frames: int | None = None
    fps: float | None = None

    @property
    def segment(self) -> tuple[float | None, float | None] | None:
        return None if self.start is None and self.end is None else (self.start, self.end)


def read_classes(root: Path) -> list[str]:
    """Class names of the index at `root`, line number = label."""
    path = Path(root) / "classes.txt"
    if not path.is_file():
        raise IndexContractError(f"{path} not found: {root} is not a prepared dataset index")
    # split at "\n" only (str.splitlines also splits at \x85, \u2028, form feeds ...), keep spaces: a name is
    # exactly what `write_index` wrote; a hand-made file may end its lines with \r\n and start with a BOM
    text = path.read_bytes().decode("utf-8-sig")
    names = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
    while names and names[-1] == "":
        names.pop()
    if not names:
        raise IndexContractError(f"{path} lists no classes")
    return names


def quarantine_line(path: str, reason: str) -> str:
    """One line of quarantine.txt: `path<TAB>reason`, the path JSON-quoted when it holds a tab, a line break or
    starts with a quote (so that every name `write_index` accepts comes back exactly from `read_quarantine`)."""
    needs_quotes = any(c in path for c in "\t\n\r") or path.startswith('"')
    return f"{json.dumps(path) if needs_quotes else path}\t{' '.join(reason.split())}\n"


def read_quarantine(root: Path) -> dict[str, str]:
    """`path -> reason` from the dataset doctor's quarantine.txt (empty when there is none); paths are kept
    exactly (spaces included), as `quarantine_line` wrote them."""
    path = Path(root) / "quarantine.txt"
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_bytes().decode("utf-8-sig").split("\n"):
        line = line[:-1] if line.endswith("\r") else line
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith('"'):
            name, end = json.JSONDecoder().raw_decode(line)
            reason = line[end:]
        else:
            name, _, reason = line.partition("\t")
        out[name] = reason.strip()
    return out


def _optional(value: str | None, cast: Callable):
    return None if value is None or value.strip() == "" else cast(value)


def read_split(
    root: Path, split: str, num_classes: int, *, limit: int | None = None
) -> tuple[list[Entry], int]:
    """Rows of `<root>/<split>.csv` minus quarantined ones; returns (entries, number quarantined)."""
    root = Path(root)
    path = root / f"{split}.csv"
    if not path.is_file():
        raise IndexContractError(f"{path} not found: the index at {root} has no {split!r} split")
    quarantine = read_quarantine(root)
    entries, skipped = [], 0
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
            raise IndexContractError(f"{path}: header must start with 'path,label', got {reader.fieldnames}")
        for row in reader:
            line = reader.line_num  # a quoted path may span lines: the row's last line
            try:
                label = int(row["label"])
                entry = Entry(
                    root / row["path"],
                    label,
                    _optional(row.get("start"), float),
                    _optional(row.get("end"), float),
                    _optional(row.get("num_frames"), int),
                    _optional(row.get("fps"), float),
                )
            except (TypeError, ValueError) as err:
                raise IndexContractError(f"{path}:{line}: bad row {row}: {err}") from err
            if not -1 <= label < num_classes:
                raise IndexContractError(
                    f"{path}:{line}: label {label} outside -1..{num_classes - 1} (classes.txt)"
                )
            if row["path"] in quarantine:
                skipped += 1
                continue
            entries.append(entry)
            if limit is not None and len(entries) >= limit:
                break
    if skipped:
        log.info("%s: skipped %d quarantined videos listed in %s", path, skipped, root / "quarantine.txt")
    return entries, skipped


def read_fingerprint(root: Path) -> str:
    """The fingerprint of the index at `root`: manifest.json's, or computed as `write_index` computes it
    (classes.txt, then the split CSVs present in SPLITS order sorted by name) for a hand-made index."""
    root = Path(root)
    manifest = root / "manifest.json"
    if manifest.is_file():
        return str(json.loads(manifest.read_text(encoding="utf-8")).get("fingerprint", ""))
    texts = [(root / "classes.txt").read_text(encoding="utf-8")]
    present = sorted(s for s in SPLITS if (root / f"{s}.csv").is_file())  # the order write_index hashes
    texts += [(root / f"{s}.csv").read_text(encoding="utf-8") for s in present]
    return fingerprint_of(texts)
