"""benchmarks.pytorchvideo_compare: a dry run on tiny videos and clips; the harness, not the timings, is checked."""

import importlib.util
import sys
from dataclasses import replace

import pytest
import torch

from benchmarks import pytorchvideo_compare as pvc
from benchmarks.suites import TINY_KINETICS, TINY_SSV2

UNAVAILABLE = pvc.pytorchvideo_unavailable()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=UNAVAILABLE or "")
BACKENDS = ("decord", "pyav") if importlib.util.find_spec("decord") else ("pyav",)
REPS = 1
SHAPE = [3, 4, 32, 32]  # (C, num_frames, crop, crop) of the dry run


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("videos")


@pytest.fixture(scope="module")
def rows(cache):
    return pvc.measure(
        [TINY_KINETICS, TINY_SSV2],
        cache,
        clips=2,
        reps=REPS,
        ours_variants={"ours": {}, "ours-seed1": {"seed": 1}},  # any VideoDataModule option passes through
        crop_size=SHAPE[2],
        num_frames=SHAPE[1],
        backends=BACKENDS,
    )


def test_every_row_measures_both_sides_with_positive_rates_and_the_same_clip_shape(rows):
    clip_rows = [r for r in rows if r["type"] == "clips"]
    assert all(r["status"] == "ok" for r in clip_rows), [r.get("reason") for r in clip_rows]
    for r in clip_rows:
        assert r["clips_per_s"] > 0 and r["clips_per_pass"] == 2 and len(r["pass_s"]) == REPS
    expected = {
        (side, variant, backend, stage)
        for backend in BACKENDS
        for side, variant, stage in [
            ("pytorchvideo", "pytorchvideo", "decode+augment"),
            ("pytorchvideo", "pytorchvideo", "decode"),
            ("ours", "ours", "decode+augment"),
            ("ours", "ours-seed1", "decode+augment"),
            ("ours", "read_frames", "decode"),
        ]
    }
    for dataset in ("k400", "ssv2"):
        here = [r for r in clip_rows if r["dataset"] == dataset]
        assert {(r["side"], r["variant"], r["backend"], r["stage"]) for r in here} == expected
        assert {tuple(r["output_shape"]) for r in here if r["stage"] == "decode+augment"} == {tuple(SHAPE)}
    samplers = {r["dataset"]: r["clip_sampler"] for r in clip_rows if r["side"] == "pytorchvideo"}
    assert samplers["k400"].startswith("random 16/30") and "whole video" in samplers["ssv2"]


def test_ratio_rows_are_computed_from_the_clip_rows(rows):
    clip_rows = [r for r in rows if r["type"] == "clips"]
    ratio_rows = [r for r in rows if r["type"] == "ratio"]
    keys = {(r["dataset"], r["stage"], r["variant"]) for r in ratio_rows}
    assert keys == {
        (d, s, v)
        for d in ("k400", "ssv2")
        for s, v in [("decode+augment", "ours"), ("decode+augment", "ours-seed1"), ("decode", "read_frames")]
    }
    for ratio in ratio_rows:
        here = [r for r in clip_rows if r["dataset"] == ratio["dataset"] and r["stage"] == ratio["stage"]]
        theirs = {r["backend"]: r["clips_per_s"] for r in here if r["side"] == "pytorchvideo"}
        ours = {r["backend"]: r["clips_per_s"] for r in here if r["variant"] == ratio["variant"]}
        assert ratio["ours_over_pytorchvideo"] == round(max(ours.values()) / max(theirs.values()), 3)
        assert ratio["per_backend"] == {b: round(ours[b] / theirs[b], 3) for b in BACKENDS}


def test_the_decord_bridge_is_left_as_found_so_our_decord_reader_still_works(rows, cache):
    # pytorchvideo's decord module switches decord to torch output, which breaks our reader (it would fall
    # back to PyAV silently); measure sets the bridge per pass and restores it
    pytest.importorskip("decord")
    from benchmarks.videos import video_set
    from src.data.decoding import read_frames

    assert pvc._decord_bridge_now() == "native"
    index = video_set(TINY_KINETICS, 2, cache)  # the dry run's videos (cached)
    frames = read_frames(next((index / "videos").iterdir()), [0, 1], "decord")
    assert frames.shape[0] == 2 and frames.dtype == torch.uint8


def test_webm_videos_are_written_by_a_fresh_interpreter_once_decord_is_loaded(tmp_path):
    # decord imported before PyAV (its bundled FFmpeg) stops PyAV from opening libvpx-vp9 in that process
    pytest.importorskip("decord")
    assert "decord" in sys.modules
    index = pvc._video_set(replace(TINY_SSV2, seconds=(1.0, 1.0)), 1, tmp_path)
    assert (index / "manifest.json").is_file() and len(list((index / "videos").glob("*.webm"))) == 1


def test_ours_variant_keywords_reach_the_real_datamodule_and_reserved_or_unknown_ones_are_refused(cache):
    # the real VideoDataModule on real (tiny, generated) videos: what the benchmark sets per row (root,
    # backend, one in-process worker, batch 1), the recipe's clip shape and a variant's own option all
    # reach the loader it times
    index = pvc._video_set(TINY_KINETICS, 2, cache)
    data = pvc.recipe(TINY_KINETICS, crop_size=SHAPE[2], num_frames=SHAPE[1])
    loader = pvc._ours_loader(index, data, "pyav", {"seed": 7})
    assert (loader.batch_size, loader.num_workers, loader.sampler.seed) == (1, 0, 7)
    assert loader.dataset.backend == "pyav" and len(loader.dataset) == 2
    assert tuple(next(iter(loader))["video"].shape[-4:]) == tuple(SHAPE)
    with pytest.raises(ValueError, match="backend"):
        pvc._ours_loader(index, data, "pyav", {"backend": "decord"})
    with pytest.raises(TypeError, match="an_option_nobody_has"):  # the real module refuses unknown options
        pvc._ours_loader(index, data, "pyav", {"an_option_nobody_has": 3})


def test_temporal_subsample_matches_pytorchvideos_index_selection():
    video = torch.arange(64, dtype=torch.float32).view(1, 64, 1, 1).expand(3, 64, 2, 2)
    picked = pvc.uniform_temporal_subsample(video, 16)[0, :, 0, 0].long().tolist()
    assert picked == torch.linspace(0, 63, 16).long().tolist() and picked[0] == 0 and picked[-1] == 63
    short = torch.arange(3, dtype=torch.float32).view(1, 3, 1, 1)
    assert pvc.uniform_temporal_subsample(short, 5)[0, :, 0, 0].tolist() == [0, 0, 1, 1, 2]


@pytest.mark.parametrize("kind", [TINY_KINETICS, TINY_SSV2])
def test_pytorchvideo_transform_gives_our_clip_shape_from_its_float_cthw_video(kind):
    data = pvc.recipe(kind)  # the real recipe: 16 frames, 224 crop
    transform = pvc.PyTorchVideoTransform(data)
    video = torch.randint(0, 256, (3, 40, 60, 80)).float()
    out = transform({"video": video, "label": 0})["video"]
    assert out.shape == (3, 16, 224, 224) and out.dtype == torch.float32 and out.is_contiguous()
    assert (data["flip"] == "off") == (
        not any("Flip" in type(t).__name__ for t in transform.transform.transforms)
    )
