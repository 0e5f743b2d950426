"""Label smoothing, soft-target cross-entropy and MixUp/CutMix on video batches."""

import math

import pytest
import torch
import torch.nn.functional as F

from src.losses import MixupCutmix, cutmix_box, smooth_one_hot, soft_target_cross_entropy


def test_smoothed_targets_sum_to_one_and_favour_the_label():
    targets = smooth_one_hot(torch.tensor([2, 0]), num_classes=4, smoothing=0.1)
    assert torch.allclose(targets.sum(dim=1), torch.ones(2))
    assert targets[0, 2] == pytest.approx(0.9 + 0.025)
    assert targets[0, 1] == pytest.approx(0.025)


def test_soft_target_ce_equals_torch_label_smoothing_ce():
    logits = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    ours = soft_target_cross_entropy(logits, smooth_one_hot(labels, 5, 0.1))
    reference = F.cross_entropy(logits, labels, label_smoothing=0.1)
    assert ours.item() == pytest.approx(reference.item(), abs=1e-6)


def _reference_soft_target_ce(logits, targets):
    """The hand-written form soft_target_cross_entropy had before it called F.cross_entropy."""
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_soft_target_ce_equals_torch_probability_target_ce_on_mixed_targets(seed):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(8, 7, generator=gen) * 3
    labels = torch.randint(0, 7, (8,), generator=gen)
    mixer = MixupCutmix(7, mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.1, generator=gen)
    _, mixed = mixer(torch.randn(8, 3, 2, 4, 4, generator=gen), labels)  # smoothed, then mixed with the flip
    assert not torch.equal(mixed, smooth_one_hot(labels, 7, 0.1))
    ours = soft_target_cross_entropy(logits, mixed)
    assert ours.item() == pytest.approx(_reference_soft_target_ce(logits, mixed).item(), abs=1e-6)
    # the same loss as torch's smoothing applied to the unsmoothed mixed targets: smoothing commutes with mixing
    unsmoothed = (mixed - 0.1 / 7) / (1 - 0.1)
    assert torch.allclose(unsmoothed.sum(dim=1), torch.ones(8))
    reference = F.cross_entropy(logits, unsmoothed, label_smoothing=0.1)
    assert ours.item() == pytest.approx(reference.item(), abs=1e-6)


def test_soft_target_ce_of_half_precision_logits_is_float32():
    logits = torch.randn(4, 5, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    targets = smooth_one_hot(torch.tensor([0, 1, 2, 3]), 5, 0.1)
    loss = soft_target_cross_entropy(logits, targets)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(_reference_soft_target_ce(logits, targets).item(), abs=1e-6)


def test_label_outside_the_class_range_is_a_clear_error():
    with pytest.raises(ValueError, match="num_classes"):
        smooth_one_hot(torch.tensor([7]), num_classes=4)


def test_mixup_blends_each_clip_with_its_partner_and_weights_the_labels_alike():
    clips = torch.stack([torch.full((3, 2, 4, 4), float(i)) for i in range(4)])  # clip i is constant i
    labels = torch.tensor([0, 1, 2, 3])
    mixer = MixupCutmix(
        4, mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.0, generator=torch.Generator().manual_seed(1)
    )
    mixed, targets = mixer(clips, labels)
    lam = targets[0, 0].item()  # clip 0 is mixed with clip 3
    assert 0 < lam < 1
    assert torch.allclose(mixed[0], torch.full_like(mixed[0], 3 * (1 - lam)), atol=1e-6)
    assert targets[0, 3].item() == pytest.approx(1 - lam)
    assert torch.allclose(targets.sum(dim=1), torch.ones(4))


def test_cutmix_pastes_one_box_through_all_frames_and_labels_follow_the_area():
    clips = torch.zeros(2, 3, 4, 16, 16)
    clips[1] = 1.0
    mixer = MixupCutmix(
        2, mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0, generator=torch.Generator().manual_seed(3)
    )
    mixed, targets = mixer(clips, torch.tensor([0, 1]))
    pasted = mixed[0]  # ones where clip 1 was pasted
    area = pasted[0, 0].mean().item()
    assert torch.equal(pasted, pasted[:1, :1].expand_as(pasted))  # same box in every channel and frame
    assert targets[0, 1].item() == pytest.approx(area, abs=1e-6)
    assert targets[0, 0].item() == pytest.approx(1 - area, abs=1e-6)


def test_cutmix_box_covers_one_minus_lambda_unless_the_frame_edge_clips_it():
    """lam = 0.75: a 50 x 50 box (a quarter of the 100 x 100 frame) around a uniform centre; a side is shorter
    only where the frame's edge cuts it, and never below half (the centre lies in the frame)."""
    generator = torch.Generator().manual_seed(0)
    boxes = [cutmix_box(100, 100, lam=0.75, generator=generator) for _ in range(200)]
    for y0, y1, x0, x1 in boxes:
        assert 0 <= y0 < y1 <= 100 and 0 <= x0 < x1 <= 100
        for low, high in ((y0, y1), (x0, x1)):
            assert 25 <= high - low <= 50
            assert high - low == 50 or low == 0 or high == 100
    whole = sum((y1 - y0) * (x1 - x0) == 100 * 100 * 0.25 for y0, y1, x0, x1 in boxes)
    assert 25 <= whole <= 90  # the centre falls in the middle half of both axes about a quarter of the time


def test_disabled_mixing_returns_the_clips_and_smoothed_labels():
    clips = torch.randn(2, 3, 2, 4, 4)
    mixer = MixupCutmix(3, mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=0.1)
    out, targets = mixer(clips, torch.tensor([1, 2]))
    assert not mixer.enabled and out is clips
    assert targets.argmax(dim=1).tolist() == [1, 2]


def test_mixing_rejects_images_without_a_time_axis():
    with pytest.raises(ValueError, match=r"\(B, C, T, H, W\)"):
        MixupCutmix(3)(torch.randn(2, 3, 4, 4), torch.tensor([0, 1]))


def test_lambda_draws_follow_the_beta_mean():
    mixer = MixupCutmix(2, mixup_alpha=0.8, generator=torch.Generator().manual_seed(0))
    draws = [mixer._beta(0.8) for _ in range(2000)]
    assert sum(draws) / len(draws) == pytest.approx(0.5, abs=0.03)
    assert not any(math.isnan(d) for d in draws)


def test_lambda_draws_repeat_under_the_same_seed():
    def draws(generator=None):
        mixer = MixupCutmix(2, generator=generator)
        return [mixer._beta(a) for a in (0.8, 1.0, 0.8)]

    assert draws(torch.Generator().manual_seed(5)) == draws(torch.Generator().manual_seed(5))
    assert draws(torch.Generator().manual_seed(5)) != draws(torch.Generator().manual_seed(6))
    torch.manual_seed(7)  # no generator: torch's global stream, which Lightning's seed_everything seeds
    first = draws()
    torch.manual_seed(7)
    assert draws() == first
