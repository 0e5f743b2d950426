"""Random-dot kinematograms: the motion-only task."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from data_prep.dots import CLASSES, DIRECTIONS, REVERSED_PAIRS, render_dots
from data_prep.synthetic import clip_rng, generate_dataset
from src.data.decoding import read_frames


def test_coherent_dots_move_one_cell_per_frame_in_the_class_direction():
    for label, (_, dy, dx) in enumerate(DIRECTIONS):
        clip = render_dots(
            label, np.random.default_rng(label), frames=4, grid=8, cell=4, dots=16, coherence=1.0
        )
        assert clip.shape == (4, 32, 32, 3) and clip.dtype == np.uint8
        assert ((clip[0].max(-1) > 0).sum()) == 16 * 16  # 16 dots of 4x4 pixels
        for t in range(3):
            assert np.array_equal(clip[t + 1], np.roll(clip[t], (4 * dy, 4 * dx), axis=(0, 1)))


def test_the_reversed_partner_of_a_direction_is_its_clip_played_backwards():
    for a, b in REVERSED_PAIRS:
        clip = render_dots(a, np.random.default_rng(7), coherence=1.0)[::-1]
        _, dy, dx = DIRECTIONS[b]
        assert np.array_equal(clip[1], np.roll(clip[0], (4 * dy, 4 * dx), axis=(0, 1)))
    assert len(CLASSES) == 8 and sorted(x for p in REVERSED_PAIRS for x in p) == list(range(8))


def test_a_single_frame_carries_no_label_information():
    """With the same random state every class draws the same first frame: only the motion differs."""
    first = [render_dots(label, np.random.default_rng(3))[0] for label in range(8)]
    assert all(np.array_equal(first[0], f) for f in first[1:])
    later = [render_dots(label, np.random.default_rng(3))[1] for label in range(8)]
    assert not np.array_equal(later[0], later[1])
    # half the lit cells move coherently, the other half are redrawn
    clip = render_dots(0, np.random.default_rng(3), dots=16, coherence=0.5)
    assert 8 <= (clip[2].max(-1) > 0).sum() / 16 <= 16


def test_dots_are_written_losslessly_and_decode_to_the_rendered_pixels(tmp_path):
    manifest = generate_dataset(tmp_path / "dots", task="dots", train=8, val=2, test=2, frames=4, size=32)
    assert manifest["num_classes"] == 8 and manifest["generation"]["task"] == "dots"
    assert manifest["reversed_pairs"] == [list(p) for p in REVERSED_PAIRS]
    with open(tmp_path / "dots" / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows[:3]:
        label = int(row["label"])
        rendered = render_dots(
            label, clip_rng(0, "train", int(row["path"].split("/")[-1][:5])), frames=4, cell=4
        )
        for backend in ("decord", "pyav"):
            decoded = read_frames(tmp_path / "dots" / row["path"], range(4), backend=backend).numpy()
            assert np.abs(decoded.astype(int) - rendered.astype(int)).max() <= 1
    assert (tmp_path / "dots" / "classes.txt").read_text().split() == list(CLASSES)
    with pytest.raises(ValueError, match="multiple of 8"):
        generate_dataset(tmp_path / "bad", task="dots", train=1, val=1, test=1, frames=4, size=36)
