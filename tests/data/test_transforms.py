"""Transforms: the flip-swap table matches 20BN's own map, one random draw per clip, eval crops."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from src.data.transforms import EvalTransform, FlipPolicy, TrainTransform, parse_rand_augment, swap_table


def ssv2_class_names(real_annotations: Path) -> list[str]:
    labels = json.loads((real_annotations / "ssv2_labels.json").read_text(encoding="utf-8"))
    return [name for name, _ in sorted(labels.items(), key=lambda item: int(item[1]))]


def test_ssv2_swap_table_is_exactly_20bn_left_right_map(real_annotations: Path) -> None:
    names = ssv2_class_names(real_annotations)
    mapping = json.loads(
        (real_annotations / "ssv2_augmentation_mappings_20bn.json").read_text(encoding="utf-8")
    )
    position = {name: i for i, name in enumerate(names)}
    expected = {position[a]: position[b] for a, b in mapping["left/right"].items()}
    table = swap_table(names)
    assert table == expected
    assert table == {86: 87, 87: 86, 93: 94, 94: 93, 166: 167, 167: 166}
    agnostic = {position[name] for name in mapping["left/right agnostic"] if name in position}
    assert not agnostic & set(table), "classes 20BN calls left/right agnostic never swap"


def test_ssv1_swap_table_matches_mmaction2_flip_map(real_annotations: Path) -> None:
    names = (real_annotations / "ssv1_labels.txt").read_text(encoding="utf-8").splitlines()
    expected = {2: 4, 30: 41, 52: 66}
    assert swap_table(names) == {**expected, **{b: a for a, b in expected.items()}}


def asymmetric_clip(frames: int = 4, height: int = 40, width: int = 60) -> torch.Tensor:
    """uint8 (T, H, W, 3): bright on the left half, dark on the right, identical frames."""
    clip = torch.zeros(frames, height, width, 3, dtype=torch.uint8)
    clip[:, :, : width // 2] = 250
    return clip


@pytest.mark.parametrize("policy", ["on", "off", "swap"])
def test_flip_policy_flips_and_swaps_labels_consistently(policy: str) -> None:
    flip = FlipPolicy(
        policy, ["Pushing something from left to right", "Pushing something from right to left", "Holding"]
    )
    clip = asymmetric_clip().permute(0, 3, 1, 2)
    torch.manual_seed(0)
    flipped = 0
    for trial in range(200):
        label = trial % 3
        out, new_label = flip(clip, label)
        was_flipped = bool(out[0, 0, 0, 0] < 128)
        flipped += was_flipped
        expected = {0: 1, 1: 0}.get(label, label) if (policy == "swap" and was_flipped) else label
        assert new_label == expected
    if policy == "off":
        assert flipped == 0
    else:
        assert 60 < flipped < 140


def test_train_transform_makes_one_random_draw_for_the_whole_clip() -> None:
    torch.manual_seed(0)
    frame = torch.randint(0, 256, (1, 48, 64, 3), dtype=torch.uint8)
    clip = frame.repeat(6, 1, 1, 1)
    transform = TrainTransform(32, rand_augment="m7-n4", erase_prob=1.0, flip=FlipPolicy("on"))
    for _ in range(5):
        out, label = transform(clip, 3)
        assert out.shape == (3, 6, 32, 32) and out.dtype == torch.float32 and label == 3
        assert torch.equal(out[:, 0:1].expand_as(out), out), "identical frames stay identical"


def test_train_transform_normalises_with_mean_045_std_0225() -> None:
    clip = torch.full((2, 40, 40, 3), 255, dtype=torch.uint8)
    out, _ = TrainTransform(32, rand_augment=None, erase_prob=0.0)(clip, 0)
    assert torch.allclose(out, torch.full_like(out, (1.0 - 0.45) / 0.225))


def test_rand_augment_spec_parses_and_switches_off() -> None:
    assert parse_rand_augment("m7-n4") == (7, 4)
    assert parse_rand_augment(None) is None and parse_rand_augment("none") is None
    with pytest.raises(ValueError, match="'m<magnitude>-n<ops>'"):
        parse_rand_augment("rand-m9")
    assert TrainTransform(32, rand_augment=None).rand_augment is None


def test_eval_three_crops_are_left_centre_right_of_the_short_side_resized_clip() -> None:
    clip = torch.arange(90, dtype=torch.uint8).mul(2).view(1, 1, 90, 1).expand(2, 30, 90, 3).contiguous()
    views = EvalTransform(crop_size=20, num_crops=3)(clip)
    assert views.shape == (3, 3, 2, 20, 20)
    means = views.mean(dim=(1, 2, 3, 4))
    assert means[0] < means[1] < means[2], "crops go left to right"
    single = EvalTransform(crop_size=20, num_crops=1)(clip)
    assert single.shape == (1, 3, 2, 20, 20) and torch.allclose(single[0], views[1])
