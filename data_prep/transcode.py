"""Re-encode videos to H.264 (short side 320, keyframe every 16 frames) for fast seeking, optionally trimming.

PyAV does the work (no `ffmpeg` binary is needed). Outputs are written to a temporary name and renamed when
complete, so a killed run never leaves a half file that looks finished; `transcode_many` skips finished outputs
and runs in parallel processes. Audio is dropped: the models read only frames.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from multiprocessing import get_context
from pathlib import Path

import av
from tqdm import tqdm

log = logging.getLogger(__name__)


class TranscodeError(RuntimeError):
    """A video that could not be re-encoded; names the source and the reason."""

    def __init__(self, src: str | Path, reason: str):
        super().__init__(f"{src}: {reason}")
        self.src, self.reason = str(src), reason


@dataclass(frozen=True)
class TranscodeJob:
    """Re-encode `src` into `dst`; `start`/`end` (seconds from the start of the file) trim it."""

    src: Path
    dst: Path
    start: float | None = None
    end: float | None = None


@dataclass(frozen=True)
class TranscodeResult:
    """What was written: frame count, frame rate and size of the output."""

    num_frames: int
    fps: float
    width: int
    height: int


def output_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Scale (width, height) so the shorter side is `short_side` (0 keeps the size); both sides even."""
    if short_side <= 0:
        w, h = width, height
    elif width <= height:
        w, h = short_side, round(height * short_side / width)
    else:
        w, h = round(width * short_side / height), short_side
    return max(2, w - w % 2), max(2, h - h % 2)


def transcode(
    src: Path,
    dst: Path,
    *,
    start: float | None = None,
    end: float | None = None,
    short_side: int = 320,
    gop: int = 16,
    crf: int = 23,
    preset: str = "veryfast",
) -> TranscodeResult:
    """Decode `src` (frames whose time lies in [start, end) when given), resize and encode H.264 into `dst`."""
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.stem}.tmp-{os.getpid()}{dst.suffix}")
    count = 0
    try:
        with av.open(str(src)) as container:
            if not container.streams.video:
                raise TranscodeError(src, "no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = stream.average_rate or stream.guessed_rate or Fraction(25)
            offset = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
            if start:
                container.seek(
                    int((start + offset) / stream.time_base), stream=stream, backward=True, any_frame=False
                )
            width, height = output_size(stream.codec_context.width, stream.codec_context.height, short_side)
            with av.open(str(tmp), mode="w", format="mp4") as out:
                ostream = out.add_stream("libx264", rate=rate)
                ostream.width, ostream.height, ostream.pix_fmt = width, height, "yuv420p"
                ostream.options = {
                    "crf": str(crf),
                    "preset": preset,
                    "threads": "1",
                    "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0",
                }
                for frame in container.decode(stream):
                    t = (frame.time if frame.time is not None else 0.0) - offset
                    if start is not None and t < start - 1e-6:
                        continue
                    if end is not None and t >= end - 1e-6:
                        break
                    image = frame.reformat(width=width, height=height, format="yuv420p")
                    image.pts = count
                    image.pict_type = av.video.frame.PictureType.NONE  # source keyframes must not force ours
                    image.time_base = Fraction(1) / rate
                    out.mux(ostream.encode(image))
                    count += 1
                out.mux(ostream.encode(None))
        if count == 0:
            raise TranscodeError(src, f"no frames in [{start}, {end}) s; the segment lies outside the video")
        os.replace(tmp, dst)
    except av.error.FFmpegError as err:
        raise TranscodeError(src, f"decoder/encoder error: {err}") from err
    finally:
        tmp.unlink(missing_ok=True)
    return TranscodeResult(count, float(rate), width, height)


def _run(job: TranscodeJob, options: dict) -> tuple[TranscodeJob, TranscodeResult | None, str | None]:
    try:
        return job, transcode(job.src, job.dst, start=job.start, end=job.end, **options), None
    except (TranscodeError, OSError) as err:
        return job, None, str(err)


def transcode_many(
    jobs: Sequence[TranscodeJob], *, workers: int = 1, progress: bool = True, **options
) -> tuple[list[TranscodeJob], dict[Path, str]]:
    """Run the jobs whose output does not exist yet in `workers` processes.

    Returns (jobs done now or before, {dst: reason} for the failures). Options go to `transcode`.
    """
    todo = [j for j in jobs if not Path(j.dst).exists()]
    done = [j for j in jobs if Path(j.dst).exists()]
    failed: dict[Path, str] = {}
    if not todo:
        return done, failed
    bar = tqdm(total=len(todo), desc="transcode", unit="video", disable=not progress)
    if workers <= 1:
        results = (_run(j, options) for j in todo)
        pool = None
    else:
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
        results = pool.map(_run, todo, [options] * len(todo), chunksize=4)
    try:
        for job, _result, error in results:
            if error is None:
                done.append(job)
            else:
                failed[Path(job.dst)] = error
                log.warning("transcode failed: %s", error)
            bar.update(1)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown()
    return done, failed
