"""Transcoding gives H.264 at the requested short side with a keyframe every GOP frames, trims exactly, and
never leaves a half file under the final name."""

from __future__ import annotations

import av
import pytest

from data_prep.transcode import TranscodeError, TranscodeJob, output_size, transcode, transcode_many
from tests.helpers.videos import frame_index_of, write_test_video


def _frames_and_keyframes(path):
    """Decoded frames and, in presentation order, whether each is a keyframe."""
    with av.open(str(path)) as c:
        decoded = list(c.decode(video=0))
    return [f.to_ndarray(format="rgb24") for f in decoded], [f.key_frame for f in decoded]


def test_output_size_scales_the_short_side_and_keeps_even_sides():
    assert output_size(640, 480, 320) == (426, 320)
    assert output_size(480, 854, 320) == (320, 568)
    assert output_size(101, 51, 0) == (100, 50)


def test_transcode_resizes_to_h264_with_a_short_gop(tmp_path):
    src = write_test_video(tmp_path / "src.webm", 40, (120, 160), codec="vp9", fps=25)
    result = transcode(src, tmp_path / "out.mp4", short_side=60, gop=8)
    assert (result.num_frames, result.width, result.height) == (40, 80, 60)
    frames, keys = _frames_and_keyframes(tmp_path / "out.mp4")
    with av.open(str(tmp_path / "out.mp4")) as c:
        assert c.streams.video[0].codec_context.name == "h264"
    assert [i for i, k in enumerate(keys) if k] == [0, 8, 16, 24, 32]
    assert [frame_index_of(f) for f in frames] == list(range(40))


def test_trimming_keeps_exactly_the_frames_inside_the_segment(tmp_path):
    src = write_test_video(tmp_path / "src.mp4", 100, (48, 64), fps=25)
    result = transcode(src, tmp_path / "cut.mp4", start=1.0, end=2.0, short_side=0)
    frames, _ = _frames_and_keyframes(tmp_path / "cut.mp4")
    assert result.num_frames == 25
    assert [frame_index_of(f) for f in frames] == list(range(25, 50))


def test_a_segment_outside_the_video_is_an_error_and_writes_nothing(tmp_path):
    src = write_test_video(tmp_path / "src.mp4", 10, (48, 64), fps=25)
    with pytest.raises(TranscodeError, match="outside the video"):
        transcode(src, tmp_path / "cut.mp4", start=50.0, end=51.0)
    assert list(tmp_path.glob("*cut*")) == []


def test_transcode_many_skips_finished_outputs_and_reports_bad_inputs(tmp_path):
    good = write_test_video(tmp_path / "good.mp4", 16, (48, 64))
    bad = tmp_path / "bad.mp4"
    bad.write_text("this is not a video")
    jobs = [TranscodeJob(good, tmp_path / "o" / "good.mp4"), TranscodeJob(bad, tmp_path / "o" / "bad.mp4")]
    done, failed = transcode_many(jobs, workers=1, progress=False, short_side=32)
    assert [j.dst.name for j in done] == ["good.mp4"] and list(failed) == [tmp_path / "o" / "bad.mp4"]
    assert "bad.mp4" in failed[tmp_path / "o" / "bad.mp4"]
    mtime = (tmp_path / "o" / "good.mp4").stat().st_mtime_ns
    done, _ = transcode_many(jobs[:1], workers=2, progress=False, short_side=32)
    assert (tmp_path / "o" / "good.mp4").stat().st_mtime_ns == mtime and len(done) == 1
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["good.mp4"]
