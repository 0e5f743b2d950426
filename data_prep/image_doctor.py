"""The image doctor: decode every image of a prepared image folder, repair the odd, quarantine the broken.

Every file under `<root>/train` and `<root>/val` with an image suffix (.jpeg/.jpg/.png, any case) is fully
decoded with PIL in worker processes. Three outcomes:
  ok           it decodes: a JPEG in RGB or grayscale (L), or a PNG (loaders convert grayscale and palettes)
  re-encoded   a file named .JPEG/.jpg that is another format (ImageNet's train set has one PNG) or a JPEG in
               another colour space (22 CMYK files): rewritten in place as an RGB JPEG at quality 95, so every
               decoder reads it; the original moves to `<root>/replaced/<same path>`, outside the dataset
  quarantined  undecodable or truncated: listed in `<root>/quarantine.txt` (`src.data.index.quarantine_line`),
               which the DataModule reads to skip it; never fatal
A decoder that crashes its worker costs that worker (it is replaced; the file being decoded is quarantined
with the exit code), never the run. The report, `<root>/image_doctor.json`, lists every re-encoded and
quarantined file and counts the formats met. A rerun finds the re-encoded files fine and writes the same
quarantine.

    python -m data_prep.image_doctor ROOT [--workers N] [--quiet]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
import warnings
from collections import Counter, deque
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait
from pathlib import Path

from src.data.index import atomic_write_text, quarantine_line

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
JPEG_SUFFIXES = (".jpeg", ".jpg")
REENCODE_QUALITY = 95
REPLACED_DIR = "replaced"
REPORT_FILE = "image_doctor.json"
SPLIT_DIRS = ("train", "val")
_BATCH = 64  # files per message to a worker: the answers still come back one by one

Check = Callable[[str, str], dict]


# ----------------------------------------------------------------------------------------------- one file


def check_image(root: str, relpath: str) -> dict:
    """Decode `root/relpath` fully; re-encode it as an RGB JPEG when its name says JPEG but its content is not
    a plain RGB/grayscale JPEG. Returns {"status": "ok" | "reencoded" | "failed", "kind", "reason"}."""
    from PIL import Image

    path = Path(root) / relpath
    try:
        with Image.open(path) as image:
            kind = f"{image.format}/{image.mode}"
            image.load()
            is_jpeg_name = path.suffix.lower() in JPEG_SUFFIXES
            if not is_jpeg_name or (image.format == "JPEG" and image.mode in ("RGB", "L")):
                return {"status": "ok", "kind": kind}
            what = (
                "CMYK JPEG"
                if image.format == "JPEG" and image.mode == "CMYK"
                else f"{kind} named {path.suffix}"
            )
            rgb = image.convert("RGB")
    except Exception as err:  # whatever a broken file provokes in PIL is a finding, not a doctor crash
        return {
            "status": "failed",
            "kind": "undecodable",
            "reason": f"undecodable: {type(err).__name__}: {err}",
        }
    # write the RGB JPEG beside the file, keep a copy of the original outside the dataset, then swap: a killed
    # run leaves either the original (redone next time) or the new file, never a half one
    tmp = path.with_name(f".{path.name}.doctor-tmp")
    rgb.save(tmp, "JPEG", quality=REENCODE_QUALITY)
    kept = Path(root) / REPLACED_DIR / relpath
    kept.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(path, kept)
    os.replace(tmp, path)
    return {
        "status": "reencoded",
        "kind": kind,
        "reason": f"{what}, re-encoded as RGB JPEG (quality {REENCODE_QUALITY}); original in {REPLACED_DIR}/",
    }


def _worker_loop(conn, root: str, check: Check) -> None:
    """Answer each batch of relative paths with one (path, result) message per file, in order."""
    warnings.simplefilter("ignore")  # PIL's EXIF and size warnings: 1.3 M files would flood the log
    conn.send("ready")
    while True:
        try:
            batch = conn.recv()
        except EOFError:
            return
        if batch is None:
            return
        for relpath in batch:
            try:
                result = check(root, relpath)
            except Exception as err:  # the check itself failed (disk full, permissions): report, go on
                result = {"status": "failed", "kind": "error", "reason": f"{type(err).__name__}: {err}"}
            conn.send((relpath, result))


# ----------------------------------------------------------------------------------------------- the pool


class _Worker:
    """One worker process, the batch it was sent and how many answers came back."""

    def __init__(self, ctx, root: str, check: Check):
        self.ctx, self.root, self.check = ctx, root, check
        self.batch: list[str] = []
        self.answered = 0
        self._start()

    def _start(self) -> None:
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker_loop, args=(child, self.root, self.check), daemon=True)
        self.proc.start()
        child.close()
        # a worker that cannot start would otherwise look like a decoder crash on every file
        try:
            ready = self.conn.poll(120) and self.conn.recv() == "ready"
        except (EOFError, OSError):
            ready = False
        if not ready:
            self.proc.kill()
            self.proc.join()
            raise RuntimeError(
                f"an image doctor worker process did not start (exit code {self.proc.exitcode}); run the "
                "doctor as `python -m data_prep.image_doctor ROOT`, or call it from a script file under an "
                '`if __name__ == "__main__":` guard (multiprocessing re-imports the main script in workers)'
            )

    def send(self, batch: list[str]) -> None:
        try:
            self.conn.send(batch)
        except OSError:  # it died between batches: a fresh one takes the batch
            self.restart()
            self.conn.send(batch)
        self.batch, self.answered = batch, 0

    def restart(self) -> int | None:
        """Replace a dead worker; returns the old one's exit code."""
        self.conn.close()
        self.proc.join(timeout=10)
        code = self.proc.exitcode
        self._start()
        self.batch, self.answered = [], 0
        return code

    def close(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


class Progress:
    """One line at every tenth of the work or every 60 s, whichever comes first: fits a 1.3 M-file run."""

    def __init__(self, label: str, total: int, enabled: bool, unit: str = "images"):
        self.label, self.total, self.enabled, self.unit = label, total, enabled, unit
        self.start = self.last = time.perf_counter()
        self.next_step = 1

    def update(self, done: int, note: str = "") -> None:
        """Print `done` of the total (and `note`) when a tenth is passed or 60 s went by."""
        now = time.perf_counter()
        if not self.enabled or not self.total:
            return
        if done * 10 >= self.next_step * self.total or now - self.last >= 60 or done == self.total:
            while done * 10 >= self.next_step * self.total:
                self.next_step += 1
            self.last = now
            print(
                f"{self.label}: {done:,}/{self.total:,} {self.unit} ({100 * done / self.total:.0f}%){note}, "
                f"{now - self.start:.0f} s",
                file=sys.stderr,
                flush=True,
            )


def run_checks(
    root: Path,
    relpaths: Sequence[str],
    *,
    workers: int = 2,
    progress: bool = True,
    check: Check = check_image,
) -> dict[str, dict]:
    """Run `check(root, relpath)` on every file in `workers` processes; returns relpath -> result.

    A worker that dies mid-batch (a decoder crash) is replaced: the file it was on is reported failed, the
    rest of its batch is sent again. `check` must be importable (a module-level function).
    """
    ctx = mp.get_context("forkserver")  # workers fork from a clean server: no threads or state of the caller
    ctx.set_forkserver_preload([__name__])
    todo = deque(list(relpaths[i : i + _BATCH]) for i in range(0, len(relpaths), _BATCH))
    results: dict[str, dict] = {}
    bar = Progress("image doctor", len(relpaths), progress)
    pool: list[_Worker] = []
    try:
        for _ in range(max(1, min(workers, len(todo)))):
            pool.append(_Worker(ctx, str(root), check))
        for worker in pool:
            if todo:
                worker.send(todo.popleft())
        while any(w.batch for w in pool):
            by_conn = {w.conn: w for w in pool if w.batch}
            for conn in wait(list(by_conn)):
                worker = by_conn[conn]
                try:
                    relpath, result = conn.recv()
                except (EOFError, OSError):
                    culprit, rest = worker.batch[worker.answered], worker.batch[worker.answered + 1 :]
                    code = worker.restart()
                    results[culprit] = {
                        "status": "failed",
                        "kind": "crash",
                        "reason": f"the decoder crashed its worker process (exit code {code})",
                    }
                    if rest:
                        todo.appendleft(rest)
                else:
                    results[relpath] = result
                    worker.answered += 1
                    if worker.answered < len(worker.batch):
                        continue
                    worker.batch = []
                if todo:
                    worker.send(todo.popleft())
                bar.update(len(results))
    finally:
        for worker in pool:
            worker.close()
    return results


# ----------------------------------------------------------------------------------------------- the folder


def find_images(root: Path) -> list[str]:
    """Relative paths (with /) of every image file under `root/train` and `root/val`, sorted."""
    found = []
    for split in SPLIT_DIRS:
        for folder, dirs, files in os.walk(Path(root) / split):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            rel = Path(folder).relative_to(root).as_posix()
            found += [
                f"{rel}/{name}" for name in files if name.lower().endswith(IMAGE_SUFFIXES) and name[0] != "."
            ]
    return sorted(found)


def summarize(results: dict[str, dict], seconds: float, workers: int) -> dict:
    """Counts by outcome and by format/mode, and the re-encoded and quarantined files with reasons."""
    by_status = Counter(r["status"] for r in results.values())
    listed = lambda status: [  # noqa: E731
        {"path": p, "kind": r["kind"], "reason": r["reason"]}
        for p, r in sorted(results.items())
        if r["status"] == status
    ]
    return {
        "checked": len(results),
        "ok": by_status["ok"],
        "reencoded": by_status["reencoded"],
        "quarantined": by_status["failed"],
        "kinds": dict(Counter(r["kind"] for r in results.values()).most_common()),
        "reencoded_files": listed("reencoded"),
        "quarantined_files": listed("failed"),
        "seconds": round(seconds, 2),
        "workers": workers,
    }


def doctor(
    root: Path, *, workers: int | None = None, progress: bool = True, check: Check = check_image
) -> dict:
    """Check every image of the prepared folder `root`; write quarantine.txt and image_doctor.json there.

    Returns the summary (counts, re-encoded and quarantined files). A quarantine.txt left by an earlier run
    is replaced: it lists what this run found (a re-encoded file is fine from then on).
    """
    root = Path(root)
    if not (root / "train").is_dir() and not (root / "val").is_dir():
        raise FileNotFoundError(f"{root} has no train/ or val/ folder: is it a prepared image folder?")
    workers = workers or os.cpu_count() or 1
    relpaths = find_images(root)
    start = time.perf_counter()
    results = run_checks(root, relpaths, workers=workers, progress=progress, check=check)
    summary = summarize(results, time.perf_counter() - start, workers)
    lines = [
        "# written by python -m data_prep.image_doctor: path<TAB>reason; the data loader skips these files\n"
    ]
    lines += [quarantine_line(f["path"], f["reason"]) for f in summary["quarantined_files"]]
    atomic_write_text(root / "quarantine.txt", "".join(lines))
    atomic_write_text(root / REPORT_FILE, json.dumps(summary, indent=2) + "\n")
    return summary


def format_summary(summary: dict, root: Path) -> str:
    """The summary line, then the re-encoded and quarantined files (the first 20 of each)."""
    out = [
        f"image doctor {root}: {summary['checked']:,} images, {summary['ok']:,} ok, {summary['reencoded']} "
        f"re-encoded, {summary['quarantined']} quarantined "
        f"({summary['seconds']:.0f} s, {summary['workers']} workers)"
    ]
    for key, label in (("reencoded_files", "RE-ENCODED"), ("quarantined_files", "QUARANTINED")):
        for item in summary[key][:20]:
            out.append(f"  {label} {item['path']}: {item['reason']}")
        if len(summary[key]) > 20:
            out.append(f"  ... {len(summary[key]) - 20} more in {root / REPORT_FILE}")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep.image_doctor", description=__doc__.split("\n")[0]
    )
    parser.add_argument("root", type=Path, help="a prepared image folder (with train/ and val/)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decoding processes")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    try:
        summary = doctor(args.root, workers=args.workers, progress=not args.quiet)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_summary(summary, args.root))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
