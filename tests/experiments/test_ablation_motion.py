"""The motion ablation harness end to end at a toy budget: dots written as videos, decoded, trained, measured."""

from __future__ import annotations

import json

from experiments.ablation_motion import ARMS, main
from src.visualize import main as visualize


def test_motion_ablation_trains_each_arm_on_decoded_dots_and_writes_json_and_its_section(tmp_path):
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\n## Motion\n\nold\n\n## Stem\n\nkept\n")
    out = tmp_path / "motion.json"
    rc = main(
        [
            "--data-root",
            str(tmp_path),
            "--out",
            str(out),
            "--arms",
            "D0",
            "D4-shifted",
            "--seeds",
            "0",
            "1",
            "--steps",
            "4",
            "--eval-every",
            "2",
            "--jobs",
            "1",
            "--dataset",
            "32,8,16,4,32",
            "--doc",
            str(doc),
            "--save-models",
            str(tmp_path / "models"),
        ]
    )
    assert rc == 0
    report = json.loads(out.read_text())
    results = {(r["arm"], r["seed"]): r for r in report["results"]}
    assert set(results) == {("D0", 0), ("D0", 1), ("D4-shifted", 0), ("D4-shifted", 1)}
    for r in results.values():
        assert [s for s, _ in r["curve"]] == [2, 4] and 0 <= r["top1"] <= 1 and r["seconds_per_step"] > 0
    d4 = results[("D4-shifted", 0)]
    assert -0.1 < d4["key_filter_cosine"] < 0.5  # four distinct deltas, barely moved after 4 steps
    assert d4["top1_mean_filters"] is not None and results[("D0", 0)]["key_filter_cosine"] is None
    text = doc.read_text()
    assert "old" not in text and "kept" in text and "| D4-shifted | 4 | shifted |" in text
    assert (tmp_path / "dots" / "manifest.json").is_file()
    assert ARMS["D0-pos"].pos_embed == "learned"

    # a saved model is what `python -m src.visualize --ckpt` draws: key filters and structural attention
    clip = sorted((tmp_path / "dots").glob("clips_*/test/*.mp4"))[0]
    paths = visualize(
        [
            "--ckpt",
            str(tmp_path / "models" / "D4-shifted_seed0.ckpt"),
            "--video",
            str(clip),
            "--out",
            str(tmp_path / "figs"),
            "--block",
            "-1",
            "--query",
            "1,3,3",
            "--only",
            "key_filters",
            "structural_attention",
        ]
    )
    assert sorted(p.name for p in paths) == ["key_filters.png", "structural_attention.png"]

    # a rerun with the same budget finds every training in the partial results and trains nothing
    assert (
        main(
            [
                "--data-root",
                str(tmp_path),
                "--out",
                str(out),
                "--arms",
                "D0",
                "--seeds",
                "1",
                "--steps",
                "4",
                "--eval-every",
                "2",
                "--jobs",
                "1",
                "--dataset",
                "32,8,16,4,32",
            ]
        )
        == 0
    )
    rerun = json.loads(out.read_text())["results"]
    assert len(rerun) == 1 and rerun[0]["curve"] == results[("D0", 1)]["curve"]

    # fine-tuning StructSA from a saved plain-attention model: identity filters keep its function exactly
    common = [
        "--data-root",
        str(tmp_path),
        "--jobs",
        "1",
        "--dataset",
        "32,8,16,4,32",
        "--eval-every",
        "2",
        "--save-models",
        str(tmp_path / "models"),
        "--seeds",
        "0",
    ]
    assert main([*common, "--out", str(tmp_path / "src.json"), "--arms", "D0-pos", "--steps", "2"]) == 0
    assert (
        main(
            [
                *common,
                "--out",
                str(tmp_path / "ft.json"),
                "--steps",
                "2",
                "--arms",
                "D4-pos-from-D0-pos-identity",
                "D4-pos-from-D0-pos-shifted",
            ]
        )
        == 0
    )
    tuned = {r["arm"]: r for r in json.loads((tmp_path / "ft.json").read_text())["results"]}
    exact = tuned["D4-pos-from-D0-pos-identity"]["extra"]
    assert exact["step0_max_logit_gap"] < 1e-5 and exact["step0_prediction_agreement"] == 1.0
    assert tuned["D4-pos-from-D0-pos-shifted"]["extra"]["step0_max_logit_gap"] > 1e-5
    assert [s for s, _ in tuned["D4-pos-from-D0-pos-identity"]["curve"]] == [0, 2]


def test_step_timing_gives_a_positive_median_per_arm():
    from experiments.ablation_motion import step_times

    times = step_times(["D0", "D4-shifted"], batch=2, reps=1)
    assert set(times) == {"D0", "D4-shifted"} and all(t > 0 for t in times.values())
