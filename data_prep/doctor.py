"""The dataset doctor: decode every video of an index the way training does, quarantine the ones that fail.

Each video is probed and three frames (first, middle, last) are decoded with `src.data.decoding` and the
training backend, inside a worker subprocess with a timeout: a decoder that hangs or crashes costs that worker
(which is replaced), never the run. Results: `quarantine.txt` (`path<TAB>reason`, read by the data pipeline,
which skips those rows) and `doctor.json` (counts by codec, resolution, fps, and the failures), both atomic.

python -m data_prep.doctor INDEX_DIR [--workers N --timeout 60 --backend decord]
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing as mp
import queue
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from data_prep.doctor_worker import Check, worker_loop
from src.data.index import SPLITS, atomic_write_text, quarantine_line


class _Slot:
    """One worker subprocess and its pipe; replaced after a timeout or a crash."""

    def __init__(self, ctx, root: str, backend: str):
        self.ctx, self.root, self.backend = ctx, root, backend
        self._start()

    def _start(self) -> None:
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=worker_loop, args=(child, self.root, self.backend), daemon=True)
        self.proc.start()
        child.close()

    def run(self, check: Check, timeout: float) -> dict:
        try:
            self.conn.send(check)
            if self.conn.poll(timeout):
                return self.conn.recv()
            self.proc.kill()
            self.proc.join()
            self._start()
            return {"error": f"timed out after {timeout:g}s (decoder hang)"}
        except (EOFError, OSError, BrokenPipeError):
            self.proc.join(timeout=5)
            code = self.proc.exitcode
            self._start()
            return {"error": f"decoder crashed the worker (exit code {code})"}

    def close(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


def read_checks(index_dir: Path, splits: Sequence[str] = SPLITS) -> list[Check]:
    """Every distinct (path, segment) of the index's split CSVs."""
    checks: dict[tuple, Check] = {}
    for split in splits:
        path = Path(index_dir) / f"{split}.csv"
        if not path.is_file():
            continue
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                start = float(row["start"]) if row.get("start") else None
                end = float(row["end"]) if row.get("end") else None
                segment = (start, end) if start is not None or end is not None else None
                checks.setdefault((row["path"], segment), Check(row["path"], segment))
    if not checks:
        raise FileNotFoundError(
            f"{index_dir}: no train.csv/val.csv/test.csv rows to check; is this an index folder?"
        )
    return list(checks.values())


def run_checks(
    index_dir: Path,
    checks: Sequence[Check],
    *,
    workers: int = 2,
    timeout: float = 60.0,
    backend: str = "decord",
    progress: bool = True,
) -> dict[Check, dict]:
    """Check every video in `workers` subprocesses, each answer within `timeout` seconds."""
    # forkserver: a clean server process imports the decoders once; each worker (and each replacement after
    # a hang) is a cheap fork of it, and inherits no decoder state from this process
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["src.data.decoding", "data_prep.doctor_worker"])
    todo: queue.Queue = queue.Queue()
    for check in checks:
        todo.put(check)
    results: dict[Check, dict] = {}
    lock = threading.Lock()
    bar = tqdm(total=len(checks), desc="doctor", unit="video", disable=not progress)

    def serve() -> None:
        slot = _Slot(ctx, str(Path(index_dir).resolve()), backend)
        try:
            while True:
                try:
                    check = todo.get_nowait()
                except queue.Empty:
                    return
                result = slot.run(check, timeout)
                with lock:
                    results[check] = result
                    bar.update(1)
        finally:
            slot.close()

    threads = [threading.Thread(target=serve) for _ in range(max(1, min(workers, len(checks))))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bar.close()
    return results


def summarize(results: dict[Check, dict]) -> dict:
    """Counts by codec, resolution and fps of the good videos, and the failures with reasons."""
    good = [r for r in results.values() if "error" not in r]
    failures = sorted((c.path, r["error"]) for c, r in results.items() if "error" in r)
    return {
        "checked": len(results),
        "ok": len(good),
        "failed": len(failures),
        "codecs": dict(Counter(r["codec"] for r in good).most_common()),
        "resolutions": dict(Counter(f"{r['width']}x{r['height']}" for r in good).most_common()),
        "fps": dict(Counter(str(r["fps"]) for r in good).most_common()),
        "failures": [{"path": p, "reason": reason} for p, reason in failures],
    }


def doctor(
    index_dir: Path,
    *,
    workers: int = 2,
    timeout: float = 60.0,
    backend: str = "decord",
    progress: bool = True,
) -> dict:
    """Check an index folder; write quarantine.txt and doctor.json there; return the summary."""
    index_dir = Path(index_dir)
    checks = read_checks(index_dir)
    results = run_checks(
        index_dir, checks, workers=workers, timeout=timeout, backend=backend, progress=progress
    )
    summary = summarize(results)
    lines = ["# written by python -m data_prep.doctor: path<TAB>reason; the data loader skips these rows\n"]
    seen = set()
    for failure in summary["failures"]:
        if failure["path"] not in seen:
            seen.add(failure["path"])
            lines.append(quarantine_line(failure["path"], failure["reason"]))
    atomic_write_text(index_dir / "quarantine.txt", "".join(lines))
    atomic_write_text(index_dir / "doctor.json", json.dumps({**summary, "backend": backend}, indent=2) + "\n")
    return summary


def format_summary(summary: dict, index_dir: Path) -> str:
    """The human-readable report printed at the end."""
    out = [
        f"doctor {index_dir}: {summary['checked']} videos, {summary['ok']} ok, {summary['failed']} quarantined"
    ]
    for key in ("codecs", "resolutions", "fps"):
        items = list(summary[key].items())
        shown = ", ".join(f"{k}: {v}" for k, v in items[:8]) + (
            f", ... ({len(items)} kinds)" if len(items) > 8 else ""
        )
        out.append(f"  {key}: {shown or '-'}")
    for failure in summary["failures"][:20]:
        out.append(f"  FAIL {failure['path']}: {failure['reason']}")
    if summary["failed"] > 20:
        out.append(f"  ... {summary['failed'] - 20} more in {index_dir / 'quarantine.txt'}")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep.doctor", description=__doc__.split("\n")[0])
    parser.add_argument("index_dir", type=Path, help="a prepared index folder (with train.csv, val.csv, ...)")
    parser.add_argument("--workers", type=int, default=mp.cpu_count())
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds per video before it counts as hung"
    )
    parser.add_argument(
        "--backend",
        choices=("pyav", "decord", "torchcodec"),
        default="decord",
        help="the training decoder (data.backend of the config; decord in all shipped configs)",
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit with status 1 when anything is quarantined"
    )
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    summary = doctor(
        args.index_dir,
        workers=args.workers,
        timeout=args.timeout,
        backend=args.backend,
        progress=not args.quiet,
    )
    print(format_summary(summary, args.index_dir))
    return 1 if args.strict and summary["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
