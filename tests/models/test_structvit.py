"""StructViT / UniFormer family and the registry: shapes, variants, precision, checkpointing."""

from __future__ import annotations

import pytest
import torch

from src.models import build_model, list_models
from src.models.structsa import StructSA
from src.models.structvit import StructViT


def test_registry_lists_every_contract_name():
    assert set(list_models()) >= {
        "structvit_xs",
        "structvit_s",
        "structvit_b",
        "structvit_l",
        "uniformer_s",
        "uniformer_b",
        "x3d_m",
        "mvit_b_16x4",
    }


def test_unknown_model_or_override_names_itself():
    with pytest.raises(ValueError, match="unknown model 'structvit_q'"):
        build_model("structvit_q")
    with pytest.raises(TypeError, match="unknown override.*structure_dimm"):
        build_model("structvit_xs", structure_dimm=2)
    with pytest.raises(TypeError, match="unknown override.*structure_dim"):
        build_model("x3d_m", structure_dim=2)


def test_each_option_is_declared_by_the_network_and_offered_by_the_config():
    """The overrides a name accepts are its network's constructor arguments minus the layout it fixes, and the
    config's BackboneConfig offers exactly the options of the registered networks."""
    from dataclasses import fields

    from src.models import model_options
    from src.task import BackboneConfig

    assert model_options("structvit_s") == {
        "structure_dim",
        "kv_stride",
        "drop_path_rate",
        "checkpoint_stages",
        "attn_fp32",
        "image",
        "stem",
        "struct_init",
    }
    assert model_options("pure_attention_tiny") == {
        "structure_dim",
        "kv_stride",
        "struct_init",
        "attn_fp32",
        "pos_embed",
        "num_frames",
        "crop_size",
    }
    offered = {f.name for f in fields(BackboneConfig)} - {"variant"}
    declared = set().union(*(model_options(name) for name in list_models()))
    assert offered == declared


def test_variants_follow_the_paper_layout():
    with torch.device("meta"):
        s = build_model("structvit_s", kv_stride=2)
        u = build_model("uniformer_b")
        large = build_model("structvit_l", structure_dim=8)
    assert [len(s.blocks1), len(s.blocks2), len(s.blocks3), len(s.blocks4)] == [3, 4, 8, 3]
    assert [len(u.blocks1), len(u.blocks2), len(u.blocks3), len(u.blocks4)] == [5, 8, 20, 7]
    attn = s.blocks3[0].attn
    assert (attn.num_heads, attn.structure_dim, attn.kv_stride) == (5, 4, 2)
    assert s.blocks4[0].attn.num_heads == 8
    assert u.structsa_modules()[0].structure_dim == 0 and u.blocks3[0].attn.k_struct is None
    assert (large.blocks3[0].attn.num_heads, large.blocks4[0].attn.num_heads) == (7, 10)
    assert large.blocks3[0].attn.k_struct.weight.shape == (448 * 8, 1, 3, 3, 3)


def test_uniformer_state_dict_keys():
    with torch.device("meta"):
        keys = set(build_model("structvit_s").state_dict())
    for key in [
        "patch_embed1.proj.weight",
        "patch_embed1.norm.weight",
        "patch_embed4.proj.bias",
        "blocks1.0.pos_embed.weight",
        "blocks1.0.norm1.running_mean",
        "blocks1.0.conv1.weight",
        "blocks1.0.attn.weight",
        "blocks1.0.conv2.weight",
        "blocks2.3.mlp.fc2.weight",
        "blocks3.0.attn.qkv.weight",
        "blocks3.7.attn.proj.bias",
        "blocks3.0.attn.k_struct.weight",
        "blocks4.2.attn.v_struct.weight",
        "blocks4.2.norm2.weight",
        "norm.running_var",
        "head.weight",
    ]:
        assert key in keys, key


def test_xs_forward_backward_float32_and_bf16_autocast_without_nan():
    torch.manual_seed(0)
    model = build_model("structvit_xs", num_classes=7, attn_fp32=True)
    x = torch.randn(2, 3, 8, 64, 64)
    logits = model(x)
    assert logits.shape == (2, 7)
    logits.logsumexp(-1).mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()
    logits.float().logsumexp(-1).mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_images_run_through_the_video_model_and_the_image_model():
    video = build_model("structvit_xs", num_classes=5).eval()
    image = build_model("structvit_xs", num_classes=5, image=True).eval()
    assert image.patch_embed1.proj.weight.shape[2:] == (1, 3, 3)  # xs: conv stem
    assert build_model("structvit_s", image=True).patch_embed1.proj.weight.shape[2:] == (1, 4, 4)
    assert image.blocks3[0].attn.k_struct.weight.shape[2:] == (1, 3, 3)
    x = torch.randn(2, 3, 64, 64)
    assert video(x).shape == image(x).shape == (2, 5)
    with pytest.raises(ValueError, match="image model got a clip of T=4"):
        image(torch.randn(1, 3, 4, 64, 64))


def test_features_head_and_reset_classifier():
    model = build_model("structvit_xs", num_classes=3).eval()
    x = torch.randn(1, 3, 8, 64, 64)
    feats = model.forward_features(x)
    assert feats.shape == (1, 192, 4, 2, 2)  # time halved once, space /32
    assert torch.allclose(model.forward_head(feats), model(x))
    assert model.forward_head(feats, pre_logits=True).shape == (1, 192)
    model.reset_classifier(11)
    assert model(x).shape == (1, 11) and model.num_classes == 11


def test_no_weight_decay_names_biases_and_norms_only():
    model = build_model("structvit_xs")
    names = model.no_weight_decay()
    params = dict(model.named_parameters())
    assert {"head.bias", "norm.weight", "blocks3.0.norm1.weight", "blocks3.0.attn.qkv.bias"} <= names
    assert "head.weight" not in names and "blocks3.0.attn.k_struct.weight" not in names
    assert all(params[n].ndim == 1 for n in names)


def test_drop_path_follows_linspace_over_all_blocks():
    model = build_model("structvit_xs", drop_path_rate=0.4)
    rates = [b.drop_path.p for s in (1, 2, 3, 4) for b in getattr(model, f"blocks{s}")]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_drop_path_is_torchvisions_stochastic_depth_and_equals_the_hand_written_one(dtype):
    block = build_model("structvit_xs", drop_path_rate=0.4).blocks4[0]  # p = 0.4
    x = torch.randn(64, 3, 5, dtype=dtype, generator=torch.Generator().manual_seed(0))
    block.train()
    torch.manual_seed(1)
    ours = block.drop_path(x)
    torch.manual_seed(1)  # the former DropPath: the same Bernoulli draw per sample, x * keep / (1 - p)
    keep = x.new_empty((x.shape[0], 1, 1)).bernoulli_(0.6)
    torch.testing.assert_close(ours, x * keep / 0.6, rtol=4 * torch.finfo(dtype).eps, atol=0)
    assert 0 < int((ours.flatten(1) == 0).all(1).sum()) < 64  # whole samples dropped, others rescaled
    block.eval()
    assert block.drop_path(x) is x


def test_mlp_stays_hand_written_because_torchvisions_mlp_renames_the_uniformer_keys():
    from torchvision.ops import MLP

    from src.models.structvit import Mlp

    ours = Mlp(8, 32)
    theirs = MLP(8, [32, 8], activation_layer=torch.nn.GELU)
    assert list(ours.state_dict()) == [
        "fc1.weight",
        "fc1.bias",
        "fc2.weight",
        "fc2.bias",
    ]  # UniFormer's names
    assert list(theirs.state_dict()) == ["0.weight", "0.bias", "3.weight", "3.bias"]
    theirs.load_state_dict(dict(zip(theirs.state_dict(), ours.state_dict().values())))
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(theirs.eval()(x), ours(x))  # the same function: only the key names differ


def test_gradient_checkpointing_gives_the_same_outputs_grads_and_norm_statistics():
    x = torch.randn(2, 3, 4, 64, 64)
    results = []
    for stages in ([], [1, 2, 3, 4]):
        torch.manual_seed(0)
        model = build_model("structvit_xs", num_classes=4, drop_path_rate=0.3, checkpoint_stages=stages)
        torch.manual_seed(1)  # same drop-path draws in both runs
        out = model(x)
        out.square().sum().backward()
        results.append(
            (
                out.detach(),
                {n: p.grad for n, p in model.named_parameters()},
                {n: b.clone() for n, b in model.named_buffers()},
            )
        )
    (out_a, grads_a, bufs_a), (out_b, grads_b, bufs_b) = results
    assert torch.allclose(out_a, out_b, atol=1e-6)
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-5, rtol=1e-4), name
    for name in bufs_a:  # the backward recomputation must not update BatchNorm statistics a second time
        assert torch.allclose(bufs_a[name].float(), bufs_b[name].float(), atol=1e-6), name


def test_bad_checkpoint_stage_and_input_rank_are_named():
    with pytest.raises(ValueError, match=r"checkpoint_stages=\[0, 5\]"):
        build_model("structvit_xs", checkpoint_stages=[0, 5])
    with pytest.raises(ValueError, match=r"expected \(B, 3, T, H, W\)"):
        build_model("structvit_xs")(torch.randn(3, 64, 64))


def test_uniformer_is_structvit_with_identity_filters():
    torch.manual_seed(0)
    uni = build_model("uniformer_s", num_classes=3).eval()
    struct = build_model("structvit_s", num_classes=3).eval()
    struct.load_state_dict(uni.state_dict(), strict=False)
    struct.init_identity()
    x = torch.randn(1, 3, 4, 64, 64)
    with torch.no_grad():
        assert torch.allclose(struct(x), uni(x), atol=1e-5)
    assert all(isinstance(m, StructSA) for m in struct.structsa_modules())
    assert isinstance(struct, StructViT)


@pytest.mark.parametrize("name", ["x3d_m", "mvit_b_16x4"])
def test_pytorchvideo_baselines_take_clips_and_return_logits(name):
    model = build_model(name, num_classes=6, num_frames=4, crop_size=64).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 4, 64, 64))
    assert out.shape == (2, 6)
    assert not torch.allclose(out.softmax(-1).sum(-1), out.sum(-1))  # logits, not probabilities


@pytest.mark.parametrize("image", [False, True])
def test_conv_stem_downsamples_like_the_patchify_stem(image):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32) if image else torch.randn(2, 3, 8, 32, 32)
    shapes = {}
    for stem in ("patch", "conv"):
        model = build_model("structvit_xs", num_classes=4, stem=stem, image=image).eval()
        assert model.stem == stem
        shapes[stem] = model.patch_embed1(model._as_clip(x)).shape
        assert model(x).shape == (2, 4)
    assert shapes["patch"] == shapes["conv"] == ((2, 32, 1, 8, 8) if image else (2, 32, 4, 8, 8))
    assert build_model("structvit_xs").stem == "conv" and build_model("structvit_s").stem == "patch"
    with pytest.raises(ValueError, match="stem='pixel'"):
        StructViT(stem="pixel")
