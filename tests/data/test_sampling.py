"""Sampling properties: every index in range for any length, segment coverage, distinct test views."""

from __future__ import annotations

import math

import numpy as np
import pytest

from src.data.sampling import ClipSampler, dense_test, dense_train, segment_test, segment_train

LENGTHS = list(range(1, 130)) + [300, 1001]


@pytest.mark.parametrize("mode", ["dense", "segment"])
def test_no_index_is_ever_out_of_range(mode: str) -> None:
    rng = np.random.default_rng(0)
    for num_frames in (1, 8, 16):
        sampler = ClipSampler(mode, num_frames, stride=4)
        for length in LENGTHS:
            clips = [sampler.train(length, rng) for _ in range(5)]
            clips += [sampler.test(length, v, n) for n in (1, 3, 4) for v in range(n)]
            for clip in clips:
                assert len(clip) == num_frames
                assert all(0 <= i < length for i in clip), (length, clip)
                assert clip == sorted(clip), "frames stay in temporal order"


def test_short_videos_repeat_their_last_frame_in_dense_sampling() -> None:
    assert dense_train(5, 4, 4, np.random.default_rng(0)) == [0, 4, 4, 4]
    assert dense_test(1, 3, 2, 0, 1) == [0, 0, 0]


def test_dense_training_clips_keep_the_stride_and_vary_their_start() -> None:
    rng = np.random.default_rng(1)
    starts = set()
    for _ in range(50):
        clip = dense_train(300, 16, 4, rng)
        assert np.all(np.diff(clip) == 4)
        starts.add(clip[0])
    assert len(starts) > 20 and max(starts) <= 300 - 61


def test_dense_test_clips_span_the_video_from_start_to_end() -> None:
    clips = [dense_test(300, 16, 4, v, 4) for v in range(4)]
    assert [c[0] for c in clips] == [0, 80, 159, 239]
    assert clips[-1][-1] == 299


def test_segment_training_takes_one_frame_from_each_segment() -> None:
    rng = np.random.default_rng(2)
    for length in (16, 37, 100, 301):
        for _ in range(20):
            clip = segment_train(length, 16, rng)
            for t, i in enumerate(clip):
                assert math.floor(t * length / 16) <= i < (t + 1) * length / 16


def test_segment_test_views_are_all_different_and_inside_their_segments() -> None:
    for length in (48, 50, 97, 300):
        views = [segment_test(length, 16, v, 3) for v in range(3)]
        assert len({tuple(v) for v in views}) == 3, f"test views must differ (length {length})"
        for clip in views:
            for t, i in enumerate(clip):
                assert math.floor(t * length / 16) <= i < (t + 1) * length / 16


def test_bad_sampling_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown sampling 'uniform'"):
        ClipSampler("uniform")
    with pytest.raises(ValueError, match="0 frames"):
        segment_train(0, 8, np.random.default_rng(0))
    with pytest.raises(ValueError, match="view 3 outside 0..2"):
        segment_test(50, 8, 3, 3)
