"""The synthetic motion benchmark: classes defined by motion, exact time-reversed pairs, real H.264 files in the
index contract, deterministic for a seed whatever the worker count, cached."""

import csv
import json
import time
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest

from data_prep.synthetic import (
    CLASSES,
    REVERSED_PAIRS,
    clip_rng,
    generate_dataset,
    main,
    render_clip,
)

FRAMES, SIZE = 8, 32
TINY = {"train": 2 * len(CLASSES), "val": len(CLASSES), "test": len(CLASSES), "frames": FRAMES, "size": SIZE}


def decode(path: Path) -> np.ndarray:
    """All frames of a video file as (T, H, W, 3) uint8 RGB, decoded with PyAV."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def read_split(root: Path, split: str) -> list[dict]:
    with open(root / f"{split}.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def tiny_index(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synthetic")
    return out, generate_dataset(out, **TINY, seed=3)


def test_there_are_10_to_16_classes_and_at_least_half_come_in_reversed_pairs():
    assert 10 <= len(CLASSES) <= 16
    paired = {c for pair in REVERSED_PAIRS for c in pair}
    assert len(paired) == 2 * len(REVERSED_PAIRS) >= len(CLASSES) / 2


@pytest.mark.parametrize("forward,backward", REVERSED_PAIRS)
def test_the_second_class_of_a_pair_is_the_first_played_backwards(forward, backward):
    ahead = render_clip(forward, np.random.default_rng(11), FRAMES, SIZE)
    behind = render_clip(backward, np.random.default_rng(11), FRAMES, SIZE)
    assert ahead.shape == (FRAMES, SIZE, SIZE, 3) and ahead.dtype == np.uint8
    np.testing.assert_array_equal(behind, ahead[::-1])
    assert not np.array_equal(ahead, ahead[::-1]), "a clip equal to its own reversal shows no direction"


def test_a_clip_depends_only_on_its_seed():
    first = render_clip(6, clip_rng(0, "train", 5), FRAMES, SIZE)
    again = render_clip(6, clip_rng(0, "train", 5), FRAMES, SIZE)
    other = render_clip(6, clip_rng(1, "train", 5), FRAMES, SIZE)
    np.testing.assert_array_equal(first, again)
    assert np.abs(first.astype(int) - other).mean() > 10


def test_every_class_moves_something_between_first_and_last_frame():
    for label in range(len(CLASSES)):
        clip = render_clip(label, np.random.default_rng(label), 16, 64).astype(int)
        changed = (np.abs(clip[0] - clip[-1]).max(axis=-1) > 60).mean()
        assert changed > 0.03, f"{CLASSES[label]}: only {changed:.1%} of the pixels change over the clip"


def test_the_index_follows_the_contract_and_classes_are_balanced(tiny_index):
    root, manifest = tiny_index
    assert (root / "classes.txt").read_text().splitlines() == list(CLASSES)
    for split in ("train", "val", "test"):
        rows = read_split(root, split)
        assert list(rows[0]) == ["path", "label", "num_frames", "fps"]
        assert len(rows) == TINY[split] == manifest["counts"][split]
        per_class = Counter(int(r["label"]) for r in rows)
        assert set(per_class) == set(range(len(CLASSES)))
        assert max(per_class.values()) - min(per_class.values()) <= 1
        for row in rows:
            assert not Path(row["path"]).is_absolute() and (root / row["path"]).is_file()
            assert int(row["num_frames"]) == FRAMES and float(row["fps"]) > 0
    on_disk = json.loads((root / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["dataset"] == "synthetic" and manifest["num_classes"] == len(CLASSES)
    assert manifest["reversed_pairs"] == [list(p) for p in REVERSED_PAIRS]
    assert manifest["generation"]["seed"] == 3 and manifest["generation"]["size"] == SIZE
    assert sum(manifest["failed_counts"].values()) == 0


def test_the_files_are_h264_and_decode_to_the_rendered_clip(tiny_index):
    root, _ = tiny_index
    for row_index in (0, 7):
        row = read_split(root, "val")[row_index]
        with av.open(str(root / row["path"])) as container:
            assert container.streams.video[0].codec_context.name == "h264"
        frames = decode(root / row["path"])
        assert frames.shape == (FRAMES, SIZE, SIZE, 3)
        rendered = render_clip(int(row["label"]), clip_rng(3, "val", row_index), FRAMES, SIZE)
        # lossy H.264 in yuv420p: close to the rendered pixels, not bit-equal
        assert np.abs(frames.astype(int) - rendered).mean() < 12


def test_decord_reads_every_frame(tiny_index):
    decord = pytest.importorskip("decord")
    root, _ = tiny_index
    row = read_split(root, "test")[0]
    reader = decord.VideoReader(str(root / row["path"]))
    assert len(reader) == FRAMES
    assert reader.get_batch(list(range(FRAMES))).asnumpy().shape == (FRAMES, SIZE, SIZE, 3)


def test_a_second_call_with_the_same_options_is_a_cache_hit(tiny_index):
    root, manifest = tiny_index
    clip = root / read_split(root, "train")[0]["path"]
    stamp = clip.stat().st_mtime_ns
    start = time.perf_counter()
    again = generate_dataset(root, **TINY, seed=3)
    assert time.perf_counter() - start < 1.0
    assert again == manifest and clip.stat().st_mtime_ns == stamp


def test_other_options_regenerate_and_change_the_fingerprint(tmp_path):
    small = dict(TINY, train=len(CLASSES), val=0, test=0)
    first = generate_dataset(tmp_path, **small, seed=0)
    second = generate_dataset(tmp_path, **small, seed=1)
    assert second["generation"]["seed"] == 1 and second["fingerprint"] != first["fingerprint"]
    folders = [p.name for p in tmp_path.iterdir() if p.is_dir()]
    assert len(folders) == 1, f"clips of the old generation left behind: {folders}"
    assert len(list(tmp_path.glob("clips_*/train/*.mp4"))) == len(CLASSES)


@pytest.mark.slow
def test_parallel_workers_write_the_same_clips_as_one_process(tmp_path):
    small = dict(TINY, train=len(CLASSES), val=2, test=2)
    one = generate_dataset(tmp_path / "one", **small, seed=5, workers=1)
    two = generate_dataset(tmp_path / "two", **small, seed=5, workers=2)
    assert one["fingerprint"] == two["fingerprint"]
    for split in ("train", "val", "test"):
        for row in read_split(tmp_path / "one", split):
            np.testing.assert_array_equal(
                decode(tmp_path / "one" / row["path"]), decode(tmp_path / "two" / row["path"])
            )


def test_bad_options_are_refused_with_the_value_and_the_fix(tmp_path):
    with pytest.raises(ValueError, match="--size must be even"):
        generate_dataset(tmp_path, size=33)
    with pytest.raises(ValueError, match="--frames"):
        generate_dataset(tmp_path, frames=1)
    with pytest.raises(ValueError, match="--seed must be >= 0"):
        generate_dataset(tmp_path, seed=-1)
    with pytest.raises(ValueError, match="class_index 14"):
        render_clip(len(CLASSES), np.random.default_rng(0), FRAMES, SIZE)
    (tmp_path / "manifest.json").write_text(json.dumps({"dataset": "ssv2"}))
    with pytest.raises(ValueError, match="holds the dataset 'ssv2'"):
        generate_dataset(tmp_path, **TINY)


def test_command_line_generates_then_reports_the_cache(tmp_path, capsys):
    args = [
        "--out",
        str(tmp_path),
        "--train",
        "14",
        "--val",
        "0",
        "--test",
        "0",
        "--frames",
        str(FRAMES),
        "--size",
        str(SIZE),
    ]
    assert main(args) == 0
    assert "generated in" in capsys.readouterr().out
    assert main(args) == 0
    assert "cached" in capsys.readouterr().out
    assert main(args[:-1] + ["31"]) == 2
    assert "--size must be even" in capsys.readouterr().err
