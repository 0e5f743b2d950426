"""Dataset presets: the numbers that differ between datasets (SPEC §5). Every field is overridable.

Flip choices: Kinetics flips freely; Something-Something uses `swap` (flip, and exchange the labels of the
three left/right class pairs; the paper trains without flip, `flip: off` reproduces that); Diving-48 and
FineGym do not flip (the paper uses none, and a mirrored dive or routine turns the other way, which the
fine-grained classes may encode); the synthetic benchmark has left/right motion classes, so no flip.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    """Sampling, clip size, test views, flip policy and augmentation of one dataset."""

    sampling: str
    num_frames: int
    sampling_rate: int
    crop_size: int
    test_views: tuple[int, int]  # (temporal clips, spatial crops)
    flip: str
    train_crop: str = "random_resized"
    crop_scale: tuple[float, float] = (0.08, 1.0)
    rand_augment: str | None = "m7-n4"
    erase_prob: float = 0.25
    make_target: str = ""


PRESETS: dict[str, Preset] = {
    "k400": Preset("dense", 16, 4, 224, (4, 1), "on", make_target="prepare-k400"),
    "ssv2": Preset("segment", 16, 1, 224, (1, 3), "swap", make_target="prepare-ssv2"),
    "ssv1": Preset("segment", 16, 1, 224, (1, 3), "swap", make_target="prepare-ssv1"),
    "diving48": Preset("segment", 16, 1, 224, (1, 3), "off", make_target="prepare-diving48"),
    "gym99": Preset("segment", 16, 1, 224, (1, 3), "off", make_target="prepare-gym"),
    "gym288": Preset("segment", 16, 1, 224, (1, 3), "off", make_target="prepare-gym"),
    # generated at 96x96: crop the full frame size with a mild scale range; cheap on 2 CPU cores
    "synthetic": Preset(
        "segment", 16, 1, 96, (1, 1), "off", crop_scale=(0.7, 1.0), rand_augment=None, erase_prob=0.0,
        make_target="prepare-synthetic",
    ),
    # your own videos (`make prepare-folder`, docs/custom-data.md): the Kinetics recipe, because configs/custom.yaml
    # fine-tunes a Kinetics-400 checkpoint and dense 16 x 4 keeps the frame spacing its filters learned (~2 s of
    # 30 fps video per clip, whatever the video's length; segment sampling would change the spacing with every
    # video's length). 4 test clips spread from the first to the last frame cover long videos; flip on, as for
    # Kinetics: set data.flip "off" (or "swap") when your classes tell left from right.
    "custom": Preset("dense", 16, 4, 224, (4, 1), "on", make_target="prepare-folder"),
}


def get_preset(name: str) -> Preset:
    """The preset called `name`, or a ValueError listing the known ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown data preset {name!r}; use one of {sorted(PRESETS)}")
    return PRESETS[name]
