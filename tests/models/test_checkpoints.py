"""Loading UniFormer-layout, Lightning and bare checkpoints: inflation, head handling, the key report."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from src.models import build_model
from src.models.checkpoints import inflate, load_pretrained


def _uniformer_image_checkpoint(num_classes: int = 1000) -> dict[str, torch.Tensor]:
    """An official-style UniFormer-S ImageNet state dict: the same key names, 2-D kernels (Conv2d / BN2d)."""
    torch.manual_seed(0)
    model = build_model("uniformer_s", num_classes=num_classes, image=True)
    with torch.no_grad():  # non-trivial BatchNorm statistics so that they matter
        for name, buf in model.named_buffers():
            if "running_mean" in name:
                buf.normal_(std=0.1)
            elif "running_var" in name:
                buf.uniform_(0.5, 1.5)
    return {k: (v.squeeze(2) if v.dim() == 5 else v) for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def image_checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "uniformer_small_in1k.pth"
    torch.save({"model": _uniformer_image_checkpoint()}, path)
    return path


def test_uniformer_image_checkpoint_loads_into_video_structvit_with_a_clean_report(image_checkpoint):
    struct = build_model("structvit_s", num_classes=400)
    report = load_pretrained(struct, image_checkpoint)
    assert report.clean, str(report)
    assert report.head_dropped  # 1000 ImageNet classes -> 400
    assert "patch_embed1.proj.weight" in report.inflated and "blocks1.0.attn.weight" in report.inflated
    assert len(report.identity_init) == 11  # every StructSA of stages 3 and 4
    assert "inflated" in str(report) and "identity" in str(report)


@pytest.mark.parametrize("init", [{}, {"struct_init": "identity"}])
def test_structvit_from_a_uniformer_checkpoint_computes_what_uniformer_computes(image_checkpoint, init):
    struct = build_model("structvit_s", num_classes=400)  # built with the from-scratch default (random)
    uni = build_model("uniformer_s", num_classes=400)
    assert load_pretrained(struct, image_checkpoint, **init).struct_init == "identity"
    load_pretrained(uni, image_checkpoint)
    struct.head.load_state_dict(uni.head.state_dict())  # both heads are fresh: make them the same
    struct.eval()
    uni.eval()
    x = torch.randn(1, 3, 4, 64, 64)
    with torch.no_grad():
        assert torch.allclose(struct(x), uni(x), atol=1e-5)


def test_a_symmetry_breaking_start_from_a_uniformer_checkpoint_keeps_filter_0_and_changes_the_function(
    image_checkpoint,
):
    uni = build_model("uniformer_s", num_classes=400)
    load_pretrained(uni, image_checkpoint)
    struct = build_model("structvit_s", num_classes=400, struct_init="identity")
    report = load_pretrained(struct, image_checkpoint, struct_init="shifted")
    assert report.struct_init == "shifted" and "set to shifted" in str(report)
    w = struct.structsa_modules()[0].k_struct.weight.reshape(320, 4, 27)
    assert torch.all(w[:, 0, 13] == 1) and torch.all(w[:, 1, 4] == 1)  # centre, then the previous frame
    struct.head.load_state_dict(uni.head.state_dict())
    x = torch.randn(1, 3, 4, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(struct.eval()(x), uni.eval()(x), atol=1e-3)
    with pytest.raises(ValueError, match="struct_init='diagonal'"):
        load_pretrained(struct, image_checkpoint, struct_init="diagonal")


def test_average_inflation_keeps_the_response_to_a_static_clip_in_the_interior():
    weight = torch.randn(4, 2, 3, 3)
    inflated = inflate(weight, 3)
    assert inflated.shape == (4, 2, 3, 3, 3)
    assert torch.allclose(inflated.sum(2), weight)
    centre = inflate(weight, 5, "centre")
    assert torch.equal(centre[:, :, 2], weight) and centre[:, :, [0, 1, 3, 4]].abs().sum() == 0


def test_lightning_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    source = build_model("structvit_xs", num_classes=5).eval()
    state = {f"backbone.{k}": v for k, v in source.state_dict().items()}
    state["train_acc.total"] = torch.tensor(3)  # LightningModule extras beside the backbone
    path = tmp_path / "epoch=1.ckpt"
    torch.save({"state_dict": state, "epoch": 1, "global_step": 10}, path)
    target = build_model("structvit_xs", num_classes=5).eval()
    report = load_pretrained(target, str(path))
    assert report.clean and not report.identity_init and not report.head_dropped
    x = torch.randn(1, 3, 4, 64, 64)
    with torch.no_grad():
        assert torch.equal(target(x), source(x))


def test_video_checkpoint_under_model_state_and_extra_keys_are_reported_not_fatal():
    source = build_model("structvit_xs", num_classes=5)
    state = dict(source.state_dict())
    state["aux_head.weight"] = torch.zeros(3, 192)
    state["blocks3.0.gamma_1"] = torch.ones(128)
    target = build_model("structvit_xs", num_classes=5, structure_dim=2)
    report = load_pretrained(target, {"model_state": state})
    assert set(report.unexpected) == {"aux_head.weight", "blocks3.0.gamma_1"}
    assert ("blocks3.0.attn.k_struct.weight", (512, 1, 3, 3, 3), (256, 1, 3, 3, 3)) in report.mismatched
    assert not report.clean and "shape mismatch" in str(report) and "aux_head.weight" in str(report)


def test_head_is_remapped_by_class_name():
    source = build_model("structvit_xs", num_classes=3)
    target = build_model("structvit_xs", num_classes=2)
    report = load_pretrained(
        target, source.state_dict(), source_classes=["a", "b", "c"], target_classes=["c", "z"]
    )
    assert report.head_remapped == 1 and not report.head_dropped
    assert torch.equal(target.head.weight[0], source.head.weight[2])
    assert not torch.equal(target.head.weight[1], source.head.weight[0])


def test_head_rows_follow_the_names_even_when_the_class_counts_agree():
    """Fine-tuning on 3 other classes from a 3-class model must not keep the old head as if it fitted."""
    source = build_model("structvit_xs", num_classes=3)
    target = build_model("structvit_xs", num_classes=3)
    fresh = target.head.weight.detach().clone()
    report = load_pretrained(
        target, source.state_dict(), source_classes=["a", "b", "c"], target_classes=["b", "x", "y"]
    )
    assert report.head_remapped == 1 and report.clean
    assert torch.equal(target.head.weight[0], source.head.weight[1])
    assert torch.equal(target.head.weight[1:], fresh[1:])
    same = build_model("structvit_xs", num_classes=3)
    load_pretrained(same, source.state_dict(), source_classes=["a", "b", "c"], target_classes=["a", "b", "c"])
    assert torch.equal(same.head.weight, source.head.weight)


def test_checkpoints_are_read_weights_only(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "hook": Path("/")}, path)  # a pickled non-tensor object
    with pytest.raises(
        ValueError, match="refused by the safe checkpoint loader: it holds a Python object of type"
    ):
        load_pretrained(build_model("structvit_xs"), path)
    with pytest.raises(FileNotFoundError, match="missing.pth does not exist"):
        load_pretrained(build_model("structvit_xs"), tmp_path / "missing.pth")


def test_the_official_uniformer_args_namespace_is_allowed_and_nothing_broader(tmp_path):
    """UniFormer's image training script saves `args: argparse.Namespace` beside the model."""
    import argparse

    model = build_model("structvit_xs")
    path = tmp_path / "uniformer_official.pth"
    torch.save(
        {"model": model.state_dict(), "args": argparse.Namespace(lr=1e-3, model="uniformer_small")}, path
    )
    report = load_pretrained(build_model("structvit_xs"), path)
    assert report.clean
    other = tmp_path / "other.pth"
    torch.save({"model": model.state_dict(), "args": argparse.FileType("r")}, other)
    with pytest.raises(ValueError, match="argparse.FileType"):
        load_pretrained(build_model("structvit_xs"), other)


def test_a_head_of_unknown_class_order_is_not_used_even_when_the_class_counts_agree():
    """Published weights whose class order is unknown: their head would load row for row because the count agrees,
    naming every prediction wrongly; `use_head=False` leaves the classifier fresh and says why."""
    torch.manual_seed(0)
    source = build_model("structvit_xs", num_classes=5)
    target = build_model("structvit_xs", num_classes=5)
    fresh = target.head.weight.detach().clone()
    report = load_pretrained(target, source.state_dict(), use_head=False, head_note="order unknown")
    assert report.clean and report.head_dropped and torch.equal(target.head.weight, fresh)
    assert "head: not used (order unknown)" in str(report)
    assert torch.equal(target.blocks3[0].attn.qkv.weight, source.blocks3[0].attn.qkv.weight)
    load_pretrained(target, source.state_dict())  # the default: the rows load as they are
    assert torch.equal(target.head.weight, source.head.weight)


def test_a_published_kinetics_head_is_matched_to_a_run_in_alphabetical_order_by_name():
    """UniFormer's Kinetics-400 head has "riding a bike" at row 0; a run indexed by data_prep/k400_classes.txt
    (alphabetical) gets each of its rows from the row of the same class."""
    from src.weights_classes import K400_UNIFORMER

    alphabetical = sorted(K400_UNIFORMER)
    source = {"head.weight": torch.arange(400.0)[:, None].repeat(1, 8), "head.bias": torch.arange(400.0)}
    target = torch.nn.Module()
    target.head = torch.nn.Linear(8, 400)
    report = load_pretrained(target, source, target_classes=alphabetical, source_classes=list(K400_UNIFORMER))
    assert report.head_remapped == 400
    row_of = {name: i for i, name in enumerate(K400_UNIFORMER)}
    assert [int(b) for b in target.head.bias] == [row_of[name] for name in alphabetical]


def _trained_image_structvit(variant: str, **options) -> torch.nn.Module:
    """An image StructViT with random StructSA filters and BatchNorm statistics that are not the defaults."""
    torch.manual_seed(0)
    image = build_model(variant, num_classes=7, image=True, struct_init="random", **options)
    with torch.no_grad():
        for _ in range(3):
            image(torch.randn(4, 3, 64, 64))  # training mode: running statistics move
    return image.eval()


@pytest.mark.parametrize("variant, options", [("structvit_xs", {}), ("structvit_s", {"stem": "patch"})])
def test_an_image_structvit_inflated_by_the_centre_rule_gives_its_logits_on_a_static_clip(variant, options):
    """The chain's tie: a clip of identical frames through the inflated video model gives the image model's
    logits (centre frame for every kernel and StructSA filter; measured 7e-8 / 2e-7 here, bound 1e-5)."""
    image = _trained_image_structvit(variant, **options)
    checkpoint = {"state_dict": {f"backbone.{k}": v for k, v in image.state_dict().items()}}
    frames = torch.rand(2, 3, 64, 64)
    clip = frames.unsqueeze(2).expand(-1, -1, 8, -1, -1).contiguous()
    video = build_model(variant, num_classes=7, **options).eval()
    report = load_pretrained(video, checkpoint, temporal_inflation="centre")
    assert report.clean and report.inflated and not report.identity_init  # the image filters were loaded
    with torch.no_grad():
        expected, got = image(frames), video(clip)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)

    # UniFormer's rule for the convolutions (the default) keeps StructSA's filters at the centre frame too
    video = build_model(variant, num_classes=7, **options).eval()
    report = load_pretrained(video, checkpoint, temporal_inflation="average")
    rules = {key: rule for key, (rule, _, _) in report.inflation.items()}
    struct = {k for k in rules if k.endswith(("k_struct.weight", "v_struct.weight"))}
    assert struct and {rules[k] for k in struct} == {"centre"}
    assert {rules[k] for k in rules.keys() - struct} == {"average"}
    assert video.blocks3[0].attn.k_struct.weight[:, :, [0, 2]].abs().max() == 0  # temporal taps start at zero
    lines = report.inflation_details().splitlines()[1:]
    assert len(lines) == len(report.inflated) and any("k_struct.weight: centre [" in line for line in lines)
    with torch.no_grad():
        gap = (video(clip) - expected).abs().max() / expected.abs().max()
    assert gap > 1e-3  # zero-padded border frames: why "centre" is offered (docs/imagenet.md states the gap)
