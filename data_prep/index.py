"""The index writer: train/val/test CSVs, classes.txt and manifest.json, the contract read by src.data.

Layout: `classes.txt` (line number = label), `<split>.csv` with header `path,label` plus the
optional columns `start,end` (seconds inside a longer file) and `num_frames,fps` (cached probe results),
`manifest.json` (counts, missing/failed items with reasons, fingerprint of the CSVs, tool version).
Every file is written to a temporary name and renamed, so a killed run never leaves a half index.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

INDEX_VERSION = 1
SPLITS = ("train", "val", "test")
OPTIONAL_COLUMNS = ("start", "end", "num_frames", "fps")


@dataclass(frozen=True)
class IndexRow:
    """One video (or a segment of one) of a split. `path` is relative to the index folder."""

    path: str
    label: int
    start: float | None = None
    end: float | None = None
    num_frames: int | None = None
    fps: float | None = None


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
            if not (row.label == -1 or 0 <= row.label < len(classes)):
                raise ValueError(
                    f"{dataset}/{name}: label {row.label} of {row.path} is outside 0..{len(classes) - 1}"
                )

    classes_text = "".join(f"{c}\n" for c in classes)
    csv_texts = {name: rows_to_csv(rows) for name, rows in splits.items()}
    atomic_write_text(out_dir / "classes.txt", classes_text)
    for name, text in csv_texts.items():
        atomic_write_text(out_dir / f"{name}.csv", text)

    from src import __version__  # the tool version that wrote the index

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
        "tool": f"structvit-lightning {__version__}",
        "written": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if extra:
        manifest.update(extra)
    atomic_write_text(out_dir / "manifest.json", json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return manifest
