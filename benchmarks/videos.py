"""Generated benchmark videos shaped like Kinetics-400 and Something-Something V2 (and V1's JPEG-frame
folders), cached between runs.

Content is a panned, low-frequency texture with a moving disc and mild noise: it compresses like natural
footage (motion compensation works, bitrate is moderate), unlike pure noise (worst case) or flat colour
(trivially fast). Written with PyAV and an index in the project's index contract (src.data.index), so the
real decoders and the real VideoDataModule read them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from src.data.index import IndexRow, write_index


@dataclass(frozen=True)
class VideoKind:
    """How one dataset's videos look: container, codec, size, frame rate and duration range (seconds)."""

    name: str
    suffix: str
    codec: str
    width: int
    height: int
    fps: int
    seconds: tuple[float, float]
    dataset: str  # the dataset config (configs/<dataset>.yaml) whose recipe matches these videos
    # keyframe intervals (frames), cycled file by file; () keeps the encoder's default (x264: 250)
    gops: tuple[int, ...] = ()


# Kinetics-400 as commonly prepared: H.264 mp4, short side 320, 30 fps, 10 s clips.
KINETICS = VideoKind("k400", ".mp4", "libx264", 568, 320, 30, (10.0, 10.0), "k400")
# Something-Something V2 as distributed: VP9 webm, height 240, 12 fps, 3-5 s.
SSV2 = VideoKind("ssv2", ".webm", "libvpx-vp9", 427, 240, 12, (3.0, 5.0), "ssv2")
# The decoder benchmark's Kinetics-like files (benchmarks/decoders.py): short side 340 as the dataset is commonly
# stored, keyframe intervals of YouTube's 2-5 s and x264's default 250 frames (8.3 s), B-frames on.
KINETICS_340P = VideoKind(
    "k400-340p", ".mp4", "libx264", 604, 340, 30, (10.0, 10.0), "k400", gops=(60, 150, 250, 120)
)
# Something-Something V1 as distributed: a folder of JPEG frames per video, 100 px high, 12 fps, 2-6 s.
SSV1 = VideoKind("ssv1", "", "jpeg", 176, 100, 12, (2.0, 6.0), "ssv1")
KINDS = {k.name: k for k in (KINETICS, SSV2, KINETICS_340P, SSV1)}


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth random RGB texture (uint8), made by upsampling coarse noise."""
    coarse = rng.integers(0, 256, size=(height // 16 + 2, width // 16 + 2, 3)).astype(np.float32)
    fine = np.repeat(np.repeat(coarse, 16, axis=0), 16, axis=1)
    kernel = np.ones(9, dtype=np.float32) / 9
    for axis in (0, 1):  # a separable box blur softens the block edges
        fine = np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="same"), axis, fine)
    return fine[:height, :width].astype(np.uint8)


def _frames(kind: VideoKind, count: int, rng: np.random.Generator, scale: float):
    """Yield `count` RGB frames (H, W, 3) of a panned texture with a moving disc and sensor-like noise."""
    width, height = int(kind.width * scale) // 2 * 2, int(kind.height * scale) // 2 * 2
    texture = _texture(rng, height + 64, width + count + 64).astype(np.int16)
    noise_bank = rng.integers(-8, 9, size=(7, height, width, 3), dtype=np.int16)  # cycled: cheap to make
    radius = max(2, height // 8)
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    disc = xx**2 + yy**2 <= radius**2
    vx, vy = rng.uniform(1, 4), rng.uniform(-2, 2)
    for t in range(count):
        frame = texture[32 : 32 + height, t : t + width] + noise_bank[t % len(noise_bank)]
        cx = int(radius + (width / 4 + vx * t) % (width - 2 * radius - 1))
        cy = int(radius + (height / 2 + vy * t) % (height - 2 * radius - 1))
        frame[cy - radius : cy + radius + 1, cx - radius : cx + radius + 1][disc] = (255, 220, 40)
        yield np.clip(frame, 0, 255).astype(np.uint8)


def write_video(
    path: Path, kind: VideoKind, seconds: float, seed: int, scale: float = 1.0, gop: int | None = None
) -> int:
    """Encode one video of `kind` lasting `seconds` to `path` (a keyframe every `gop` frames, None: the
    encoder's default); returns its frame count."""
    import av

    rng = np.random.default_rng(seed)
    count = int(round(seconds * kind.fps))
    width, height = int(kind.width * scale) // 2 * 2, int(kind.height * scale) // 2 * 2
    if kind.codec == "jpeg":  # a folder of frames 00001.jpg, 00002.jpg, ... (src.data.decoding.frames_reader)
        from PIL import Image

        path.mkdir(parents=True, exist_ok=True)
        for t, frame in enumerate(_frames(kind, count, rng, scale)):
            Image.fromarray(frame).save(path / f"{t + 1:05d}.jpg", quality=90)
        return count
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(kind.codec, rate=kind.fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # Fast encoder settings keep generation short; the bitstream features (CABAC, B-frames for H.264)
        # that drive decoding cost stay on.
        if kind.codec == "libvpx-vp9":
            stream.options = {"deadline": "realtime", "cpu-used": "8", "row-mt": "1"}
        elif kind.codec == "libx264":
            stream.options = {"preset": "veryfast"}
        if gop is not None:
            stream.codec_context.gop_size = gop
        for frame in _frames(kind, count, rng, scale):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return count


def video_set(kind: VideoKind, count: int, cache_dir: Path, *, scale: float = 1.0) -> Path:
    """An index folder of `count` generated videos of `kind` (one class per video), built once and cached."""
    # fields left at their default stay out of the key, so sets cached before they existed are reused
    spec = {
        "kind": {k: v for k, v in asdict(kind).items() if v != ()},
        "count": count,
        "scale": scale,
        "format": 1,
    }
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    out = Path(cache_dir) / f"{kind.name}-{count}-{digest}"
    if (out / "manifest.json").exists():
        return out
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "videos").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(count):
        seconds = float(rng.uniform(*kind.seconds))
        rel = f"videos/{kind.name}_{i:03d}{kind.suffix}"
        gop = kind.gops[i % len(kind.gops)] if kind.gops else None
        frames = write_video(tmp / rel, kind, seconds, seed=i, scale=scale, gop=gop)
        fps = None if kind.codec == "jpeg" else float(kind.fps)  # a frame folder has no frame rate
        rows.append(IndexRow(rel, i, num_frames=frames, fps=fps))
    classes = [f"class_{i:03d}" for i in range(count)]
    write_index(
        tmp,
        dataset=f"bench-{kind.name}",
        classes=classes,
        splits={"train": rows, "val": rows},
        version="generated",
        extra={"generator": spec},
    )
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def video_set_in_clean_process(kind: VideoKind, count: int, cache_dir: Path) -> Path:
    """`video_set`, written by a fresh interpreter when this one has loaded decord: when decord (with its bundled
    FFmpeg) is imported before PyAV, PyAV's libvpx-vp9 encoder fails to open (avcodec_open2 returns EINVAL) and
    no webm can be written; the import order is unknown here, so any loaded decord sends the job out."""
    if "decord" not in sys.modules:
        return video_set(kind, count, cache_dir)
    code = (
        "import json, sys\n"
        "from benchmarks.videos import VideoKind, video_set\n"
        "spec = json.loads(sys.argv[1])\n"
        "kind = VideoKind(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})\n"
        "print(video_set(kind, int(sys.argv[2]), sys.argv[3]))\n"
    )
    args = [sys.executable, "-c", code, json.dumps(asdict(kind)), str(count), str(Path(cache_dir).resolve())]
    done = subprocess.run(args, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"writing the {kind.name} videos failed:\n{done.stderr[-2000:]}")
    return Path(done.stdout.strip().splitlines()[-1])
