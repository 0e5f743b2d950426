"""read_torchcodec returns the very frames PyAV decodes, and fails like the other backends."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from src.data.decoding import DecodeError, MissingVideoError, read_frames, torchcodec_reader
from src.data.decoding.torchcodec_reader import read_torchcodec, torchcodec_available
from tests.helpers.videos import frame_index_of, write_test_video

_UNUSABLE = torchcodec_available()
# only the tests that decode need torchcodec; the refusals before any decoding run everywhere
needs_torchcodec = pytest.mark.skipif(
    _UNUSABLE is not None, reason=f"torchcodec backend unusable: {_UNUSABLE}"
)

INDEX_SETS = [[0, 1, 2, 3], [39, 0, 17, 17, 5], list(range(39, -1, -7)), [20, 20, 20]]


def decoded_indices(frames: torch.Tensor) -> list[int]:
    return [frame_index_of(f) for f in frames.numpy()]


@needs_torchcodec
@pytest.mark.parametrize("name", ["clip.mp4", "clip.webm"])
def test_frames_equal_pyav_for_unsorted_repeated_indices(media_dir: Path, name: str) -> None:
    for indices in INDEX_SETS:
        frames = read_torchcodec(media_dir / name, indices, None, threads=1)
        assert frames.dtype == torch.uint8 and frames.shape == (len(indices), 48, 64, 3)
        assert decoded_indices(frames) == indices
        assert torch.equal(frames, read_frames(media_dir / name, indices, "pyav"))


@needs_torchcodec
@pytest.mark.parametrize("name", ["clip.mp4", "clip.webm"])
def test_segment_indices_count_from_the_segment_start(media_dir: Path, name: str) -> None:
    # 0.4 s .. 1.2 s at 25 fps = frames 10..29 of the file
    frames = read_torchcodec(media_dir / name, [19, 0, 5, 5], (0.4, 1.2), threads=0)
    assert decoded_indices(frames) == [29, 10, 15, 15]
    assert torch.equal(frames, read_frames(media_dir / name, [19, 0, 5, 5], "pyav", segment=(0.4, 1.2)))
    with pytest.raises(DecodeError, match="outside 0..19"):
        read_torchcodec(media_dir / name, [20], (0.4, 1.2), threads=1)


@needs_torchcodec
def test_variable_frame_rate_segment_uses_the_same_average_fps_as_pyav(tmp_path: Path) -> None:
    times = [0.0]
    for i in range(1, 30):
        times.append(times[-1] + (0.02 if i % 3 else 0.1))  # 50 fps bursts with 100 ms gaps
    path = write_test_video(tmp_path / "vfr.mp4", 30, (48, 64), frame_times=times)
    indices = [0, 3, 7, 14, 7]
    for segment in (None, (0.3, 1.0), (0.5, None)):
        frames = read_torchcodec(path, indices, segment, threads=1)
        assert torch.equal(frames, read_frames(path, indices, "pyav", segment=segment)), segment


@needs_torchcodec
def test_size_resizes_in_the_decoder_when_supported(media_dir: Path) -> None:
    frames = read_torchcodec(media_dir / "clip.mp4", [0, 30, 0], None, threads=1, size=(24, 32))
    if not torchcodec_reader.CAN_RESIZE:
        assert frames.shape == (3, 48, 64, 3)
        return
    from torchvision.transforms.v2.functional import resize

    assert frames.dtype == torch.uint8 and frames.shape == (3, 24, 32, 3)
    full = read_frames(media_dir / "clip.mp4", [0, 30, 0], "pyav").permute(0, 3, 1, 2)
    expected = resize(full, [24, 32], antialias=True).permute(0, 2, 3, 1)
    # bilinear + antialias like torchvision; rounding differs by at most one level (measured with 0.17.0)
    assert (frames.int() - expected.int()).abs().max() <= 1


@needs_torchcodec
def test_bad_sources_raise_decode_error_naming_the_file(tmp_path: Path, media_dir: Path) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(bytes(range(256)) * 40)
    truncated = tmp_path / "truncated.mp4"  # cut inside the header: nothing can be opened
    truncated.write_bytes((media_dir / "clip.mp4").read_bytes()[:700])
    webm = (media_dir / "clip.webm").read_bytes()
    half = tmp_path / "half.webm"  # cut mid-stream: the frames past the cut do not exist
    half.write_bytes(webm[: len(webm) // 2])
    cases = {
        garbage: (DecodeError, "torchcodec cannot open it: RuntimeError: .*Invalid data"),
        truncated: (DecodeError, "torchcodec cannot open it"),
        half: (DecodeError, "frame indices \\[39\\] outside"),
    }
    for path, (error, reason) in cases.items():
        with pytest.raises(error, match=reason) as info:
            read_torchcodec(path, [0, 10, 39], None, threads=1)
        assert info.value.path == str(path) and str(path) in str(info.value)
    with pytest.raises(DecodeError, match="outside 0..39"):
        read_torchcodec(media_dir / "clip.mp4", [40], None, threads=1)
    with pytest.raises(ValueError, match="no frame indices"):
        read_torchcodec(media_dir / "clip.mp4", [], None, threads=1)


def test_missing_or_empty_files_and_bad_sizes_are_refused_before_torchcodec_loads(
    tmp_path: Path, media_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unusable():
        raise AssertionError("torchcodec was loaded")

    monkeypatch.setattr(torchcodec_reader, "_load_torchcodec", unusable)
    empty = tmp_path / "empty.mp4"
    empty.touch()
    for path, reason in ((tmp_path / "missing.mp4", "does not exist"), (empty, "empty")):
        with pytest.raises(MissingVideoError, match=reason) as info:
            read_torchcodec(path, [0, 10, 39], None, threads=1)
        assert info.value.path == str(path) and str(path) in str(info.value)
    for size in ((24, 0), (24,), (24.5, 32)):
        with pytest.raises(ValueError, match="size must be"):
            read_torchcodec(media_dir / "clip.mp4", [0], None, threads=1, size=size)


def test_unusable_torchcodec_raises_runtime_error_naming_the_fix(
    media_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torchcodec_reader, "_load_torchcodec", lambda: (None, "torchcodec is not installed"))
    with pytest.raises(RuntimeError, match=r"not installed.*pip install -e '\.\[torchcodec\]'") as info:
        read_torchcodec(media_dir / "clip.mp4", [0], None, threads=1)
    assert not isinstance(info.value, DecodeError)  # not a per-file failure: no retry or skip can fix it
    assert "apt-get install ffmpeg" in str(info.value)
