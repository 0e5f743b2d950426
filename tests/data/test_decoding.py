"""read_frames / probe return exactly the requested frames for every backend and container."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from src.data.decoding import BACKENDS, DecodeError, VideoInfo, probe, read_frames
from tests.helpers.videos import frame_index_of, write_test_video

INDEX_SETS = [[0, 1, 2, 3], [39, 0, 17, 17, 5], list(range(0, 40, 4)), list(range(39, -1, -7))]


def decoded_indices(frames: torch.Tensor) -> list[int]:
    return [frame_index_of(f) for f in frames.numpy()]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["clip.mp4", "clip.webm"])
def test_read_frames_returns_exactly_the_requested_indices(media_dir: Path, name: str, backend: str) -> None:
    for indices in INDEX_SETS:
        frames = read_frames(media_dir / name, indices, backend=backend)
        assert frames.dtype == torch.uint8 and frames.shape == (len(indices), 48, 64, 3)
        assert decoded_indices(frames) == indices


@pytest.mark.parametrize("backend", BACKENDS)
def test_variable_frame_rate_video_is_read_by_frame_number(tmp_path: Path, backend: str) -> None:
    times = [0.0]
    for i in range(1, 30):
        times.append(times[-1] + (0.02 if i % 3 else 0.1))  # 50 fps bursts with 100 ms gaps
    path = write_test_video(tmp_path / "vfr.mp4", 30, (48, 64), frame_times=times)
    assert probe(path).num_frames == 30
    indices = [0, 1, 2, 3, 14, 15, 29, 7]
    assert decoded_indices(read_frames(path, indices, backend=backend)) == indices


def test_jpeg_folder_reads_frames_by_file_order(media_dir: Path) -> None:
    frames = read_frames(media_dir / "frames", [0, 9, 39, 9])
    assert frames.shape == (4, 48, 64, 3)
    assert decoded_indices(frames) == [0, 9, 39, 9]


@pytest.mark.parametrize("backend", BACKENDS)
def test_segment_indices_count_from_the_segment_start(media_dir: Path, backend: str) -> None:
    # 0.4 s .. 1.2 s at 25 fps = frames 10..29 of the file
    frames = read_frames(media_dir / "clip.mp4", [0, 5, 19], backend=backend, segment=(0.4, 1.2))
    assert decoded_indices(frames) == [10, 15, 29]
    with pytest.raises(DecodeError, match="outside 0..19"):
        read_frames(media_dir / "clip.mp4", [20], backend=backend, segment=(0.4, 1.2))


def test_probe_reports_frames_fps_size_codec(media_dir: Path) -> None:
    assert probe(media_dir / "clip.mp4") == VideoInfo(40, 25.0, 64, 48, "h264")
    assert probe(media_dir / "clip.webm") == VideoInfo(40, 25.0, 64, 48, "vp9")
    assert probe(media_dir / "frames") == VideoInfo(40, None, 64, 48, "jpeg")


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_sources_raise_decode_error_naming_the_file(
    tmp_path: Path, media_dir: Path, backend: str
) -> None:
    empty = tmp_path / "empty.mp4"
    empty.touch()
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(bytes(range(256)) * 64)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes((media_dir / "clip.mp4").read_bytes()[:600])
    cases = {
        tmp_path / "missing.mp4": "does not exist",
        empty: "empty",
        garbage: "cannot decode",
        truncated: "cannot decode",
    }
    for path, reason in cases.items():
        with pytest.raises(DecodeError, match=reason) as info:
            read_frames(path, [0, 10, 39], backend=backend)
        assert info.value.path == str(path)
    with pytest.raises(DecodeError, match="outside 0..39"):
        read_frames(media_dir / "clip.mp4", [40], backend=backend)


def test_unknown_backend_is_refused(media_dir: Path) -> None:
    with pytest.raises(ValueError, match="unknown decode backend 'opencv'"):
        read_frames(media_dir / "clip.mp4", [0], backend="opencv")


def test_failures_that_no_retry_can_fix_are_their_own_types(tmp_path: Path) -> None:
    """Retries are decided by the exception's type, not by matching its message."""
    from src.data.decoding import DecodeError, DecodeTimeoutError, MissingVideoError

    with pytest.raises(MissingVideoError, match="does not exist") as missing:
        probe(tmp_path / "gone.mp4")
    (tmp_path / "empty.mp4").touch()
    with pytest.raises(MissingVideoError, match="empty") as empty:
        read_frames(tmp_path / "empty.mp4", [0])
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    with pytest.raises(DecodeError) as junk:
        read_frames(tmp_path / "junk.mp4", [0], "pyav")
    assert not missing.value.retryable and not empty.value.retryable and junk.value.retryable
    assert not DecodeTimeoutError("x", "slow").retryable and isinstance(
        DecodeTimeoutError("x", "y"), DecodeError
    )
    import pickle

    assert type(pickle.loads(pickle.dumps(missing.value))) is MissingVideoError  # crosses worker processes


def test_pyav_skips_unwanted_non_reference_frames_without_changing_any_frame(tmp_path: Path) -> None:
    """The PyAV reader does not decode B-frames it does not need; the frames it returns are the same as
    decoding every frame (multi-threaded decoding skips nothing) and as decord's."""
    import av

    path = write_test_video(tmp_path / "b_frames.mp4", 90, (48, 64), gop=45)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.skip_frame = "NONREF"
        kept = sum(1 for _ in container.decode(stream))
    assert kept < 80, "the test video must hold non-reference frames for the skip to matter"
    for start in (0, 3, 30, 44, 46, 61):
        indices = list(range(start, min(start + 29, 90), 4))
        skipping = read_frames(path, indices, backend="pyav", threads=1)
        assert decoded_indices(skipping) == indices
        assert torch.equal(skipping, read_frames(path, indices, backend="pyav", threads=2))
        assert torch.equal(skipping, read_frames(path, indices, backend="decord"))


def test_decord_reads_when_another_library_switched_its_bridge_to_torch(media_dir: Path) -> None:
    """pytorchvideo's decord module sets decord's bridge to torch on import; reading must still work
    (it used to fail and fall back to PyAV without a word)."""
    import decord

    decord.bridge.set_bridge("torch")
    try:
        frames = read_frames(media_dir / "clip.mp4", [3, 1], backend="decord")
    finally:
        decord.bridge.set_bridge("native")
    assert decoded_indices(frames) == [3, 1] and frames.dtype == torch.uint8


@pytest.mark.parametrize("codec", ["h264", "vp9"])
def test_decord_gives_pyavs_frames_on_textured_footage_with_long_gops(tmp_path: Path, codec: str) -> None:
    """decord, the default, and PyAV, its fallback, return the same pixels for dense training clips that start
    anywhere in a keyframe interval and cross into the next one (B-frames on for H.264)."""
    suffix = "mp4" if codec == "h264" else "webm"
    path = write_test_video(
        tmp_path / f"long_gop.{suffix}", 150, (90, 160), codec=codec, pattern="textured", gop=60
    )
    for start in (0, 7, 31, 50, 59, 60, 88):
        indices = [min(start + 4 * i, 149) for i in range(16)]
        decord_frames = read_frames(path, indices, backend="decord")
        assert decoded_indices(decord_frames) == indices
        assert torch.equal(decord_frames, read_frames(path, indices, backend="pyav"))


def _write_av1(path: Path, num_frames: int, gop: int = 1) -> Path:
    """An AV1 mp4 (SVT-AV1) whose frames carry their index, a keyframe every `gop` frames: PyAV decodes AV1,
    decord's FFmpeg does not."""
    import av

    from tests.helpers.videos import frame_pattern

    if "libsvtav1" not in av.codecs_available:
        pytest.skip("this PyAV build has no AV1 encoder (libsvtav1)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libsvtav1", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        stream.codec_context.gop_size = gop
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(frame_pattern(i, 64, 64), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_pyav_reads_every_wanted_frame_of_inter_coded_av1(tmp_path: Path) -> None:
    """Non-reference skipping is for the codecs it was proven on: on inter-coded AV1 it lost wanted frames
    ("frame 7 could not be decoded"), and AV1 is exactly what falls back from decord to PyAV."""
    av1 = _write_av1(tmp_path / "inter.mp4", 24, gop=12)
    for indices in ([7], [0, 5, 19], [3, 11, 12, 23], list(range(24))):
        assert decoded_indices(read_frames(av1, indices, backend="pyav")) == indices


def test_decord_is_the_default_and_a_file_it_cannot_read_falls_back_to_pyav(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """AV1 (what YouTube serves more and more of) is a real file decord cannot open: read_frames, left to
    its default, tries decord; the DataModule, left to its default, then reads the video with PyAV."""
    from src.data.datamodule import VideoDataModule
    from src.data.index import IndexRow, write_index

    av1 = _write_av1(tmp_path / "videos" / "av1.mp4", 20)
    with pytest.raises(DecodeError, match="decord cannot open it"):
        read_frames(av1, [0, 5])
    assert decoded_indices(read_frames(av1, [0, 5, 19], backend="pyav")) == [0, 5, 19]
    rows = [IndexRow("videos/av1.mp4", 0, num_frames=20, fps=25.0)]
    write_index(tmp_path, dataset="av1", classes=["a"], splits={"train": rows, "val": rows})
    options = dict(num_frames=4, sampling="segment", crop_size=32, test_views=(1, 1), flip="off")
    dm = VideoDataModule(root=str(tmp_path), num_workers=0, batch_size=1, eval_batch_size=1, **options)
    assert dm.backend == "decord"
    with caplog.at_level("WARNING", logger="src.data.datasets"):
        batch = next(iter(dm.val_dataloader()))  # evaluation never substitutes another video
    assert batch["video"].shape[:2] == (1, 1) and batch["failed_index"].numel() == 0
    assert f"decoded {av1} with pyav after decord failed" in caplog.text  # a fallback is reported, per video
    train = next(iter(dm.train_dataloader()))
    assert int(train["decode_failures"].sum()) == 0 and int(train["index"][0]) == 0
