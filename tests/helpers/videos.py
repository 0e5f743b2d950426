"""Write real test videos whose pixels encode the frame number, and read that number back.

Used by the data tests and by anyone who needs a small real mp4/webm/JPEG clip: `write_test_video` encodes
frame i so that `frame_index_of(decoded_frame) == i` after lossy H.264 or VP9 coding, which lets a test
check that a decoder returned exactly the requested frames.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

NUM_BITS = 10  # frame numbers 0..1023 are encoded; longer clips wrap around
_CODECS = {"h264": ("libx264", "mp4"), "vp9": ("libvpx-vp9", "webm")}


def frame_pattern(index: int, height: int, width: int, pattern: str = "frame_index") -> np.ndarray:
    """The (H, W, 3) uint8 picture of frame `index`.

    `frame_index`: the top half shows the index in binary as NUM_BITS black/white vertical bars (MSB left),
    the bottom half a grey ramp that moves with time (so codecs see motion).
    `textured`: the same bars over a moving textured scene, closer to real video for decode benchmarks.
    """
    if width < NUM_BITS * 2 or height < 8:
        raise ValueError(f"test video size {width}x{height} is too small; use at least {NUM_BITS * 2}x8")
    img = np.zeros((height, width, 3), dtype=np.uint8)
    xs = np.arange(width)
    ys = np.arange(height)
    if pattern == "frame_index":
        ramp = ((xs[None, :] * 4 + index * 8) % 256).astype(np.uint8)
        img[:] = ramp[:, :, None].repeat(height, axis=0)
    elif pattern == "textured":
        yy, xx = np.meshgrid(ys, xs, indexing="ij")
        scene = (
            96
            + 60 * np.sin((xx + 3 * index) / 9.0) * np.cos((yy - 2 * index) / 13.0)
            + 40 * np.sin((xx * yy) / 500.0 + index / 5.0)
        )
        img[:] = np.clip(scene, 0, 255).astype(np.uint8)[:, :, None]
        img[..., 1] = np.roll(img[..., 1], index, axis=1)
    else:
        raise ValueError(f"unknown pattern {pattern!r}; use 'frame_index' or 'textured'")
    band = max(4, height // 2) if pattern == "frame_index" else max(4, height // 6)
    bar = width // NUM_BITS
    code = index % (1 << NUM_BITS)
    for bit in range(NUM_BITS):
        value = 255 if (code >> (NUM_BITS - 1 - bit)) & 1 else 0
        img[:band, bit * bar : (bit + 1) * bar] = value
    return img


def frame_index_of(frame: np.ndarray) -> int:
    """Read back the frame number from a decoded (H, W, 3) frame written by `frame_pattern`."""
    frame = np.asarray(frame)
    height, width = frame.shape[:2]
    band = max(4, height // 6)  # the part of the bars both patterns share
    bar = width // NUM_BITS
    code = 0
    for bit in range(NUM_BITS):
        cell = frame[1 : band - 1, bit * bar + 1 : (bit + 1) * bar - 1]
        code = (code << 1) | int(cell.mean() > 127)
    return code


def write_test_video(
    path: Path | str,
    num_frames: int,
    size: int | tuple[int, int] = 64,
    codec: str = "h264",
    fps: int | float = 25,
    pattern: str = "frame_index",
    gop: int = 12,
    frame_times: list[float] | None = None,
) -> Path:
    """Encode `num_frames` frames of `frame_pattern` into `path` (H.264 in mp4 or VP9 in webm).

    `size` is a square side or (height, width). `frame_times` (seconds, increasing) makes a variable frame
    rate video. Returns the path. Quality is high enough that `frame_index_of` reads every frame back exactly.
    """
    if codec not in _CODECS:
        raise ValueError(f"unknown codec {codec!r}; use one of {sorted(_CODECS)}")
    height, width = (size, size) if isinstance(size, int) else size
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    encoder, _ = _CODECS[codec]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(encoder, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.gop_size = gop
        if codec == "h264":
            stream.options = {"crf": "12", "preset": "ultrafast", "bf": "2"}
        else:
            stream.options = {"crf": "15", "b": "0", "deadline": "realtime", "cpu-used": "8"}
        if frame_times is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(frame_pattern(i, height, width, pattern), format="rgb24")
            if frame_times is not None:
                frame.pts, frame.time_base = round(frame_times[i] * 1000), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_test_frames(folder: Path | str, num_frames: int, size: int | tuple[int, int] = 64) -> Path:
    """Write a folder of JPEG frames 00001.jpg, 00002.jpg, ... (Something-Something V1's layout)."""
    from PIL import Image

    height, width = (size, size) if isinstance(size, int) else size
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(num_frames):
        Image.fromarray(frame_pattern(i, height, width)).save(folder / f"{i + 1:05d}.jpg", quality=95)
    return folder
