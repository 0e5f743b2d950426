"""The pure-attention network of the motion ablation: no frame mixing outside StructSA."""

from __future__ import annotations

import pytest
import torch

from src.models import build_model
from src.models.checkpoints import load_pretrained


def _clip(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_builds_from_the_registry_and_returns_logits():
    m = build_model("pure_attention_tiny", num_classes=8).eval()
    assert m(_clip()).shape == (2, 8)
    assert [a.structure_dim for a in m.structsa_modules()] == [4, 4]
    assert m.structsa_modules()[0].struct_init == "random"
    with pytest.raises(TypeError, match="stem"):
        build_model("pure_attention_tiny", stem="conv")


def test_plain_attention_without_positions_cannot_tell_the_frame_order():
    torch.manual_seed(0)
    plain = build_model("pure_attention_tiny", num_classes=8, structure_dim=0).eval()
    # random filters: the shifted start is symmetric in time (previous and next frame), so almost reversible
    struct = build_model("pure_attention_tiny", num_classes=8, structure_dim=4, struct_init="random").eval()
    x = _clip()
    reversed_x = x.flip(2)
    with torch.no_grad():  # pooled features: O(1), unlike the logits of a fresh 0.02-std head
        assert torch.allclose(plain.forward_features(x), plain.forward_features(reversed_x), atol=1e-5)
        assert not torch.allclose(struct.forward_features(x), struct.forward_features(reversed_x), atol=1e-3)


def test_learned_position_embedding_is_sized_for_the_clip_and_refuses_others():
    m = build_model(
        "pure_attention_tiny", num_classes=8, structure_dim=0, pos_embed="learned", num_frames=4, crop_size=32
    ).eval()
    assert m.pos_embed.shape == (1, 4 * 8 * 8, 64) and "pos_embed" in m.no_weight_decay()
    with torch.no_grad():
        # the embedding starts small (std 0.02), so the difference does too
        assert not torch.allclose(m.forward_features(_clip()), m.forward_features(_clip().flip(2)), atol=1e-4)
        with pytest.raises(ValueError, match=r"\(4, 8, 8\) token grid"):
            m(torch.randn(1, 3, 8, 32, 32))


def test_identity_filters_loaded_from_a_plain_attention_checkpoint_compute_it_exactly(tmp_path):
    torch.manual_seed(0)
    plain = build_model("pure_attention_tiny", num_classes=8, structure_dim=0, pos_embed="learned").eval()
    path = tmp_path / "plain.pt"
    torch.save(plain.state_dict(), path)
    struct = build_model("pure_attention_tiny", num_classes=8, structure_dim=4, pos_embed="learned").eval()
    report = load_pretrained(struct, path, struct_init="identity")
    assert report.clean and len(report.identity_init) == 2
    x = _clip().double()
    with torch.no_grad():
        assert torch.allclose(struct.double()(x), plain.double()(x), atol=1e-12)


def test_block_mlp_keeps_its_keys_which_torchvisions_mlp_would_renumber():
    from torchvision.ops import MLP

    mlp = build_model("pure_attention_tiny", num_classes=8).blocks[0].mlp
    assert list(mlp.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]  # as in saved checkpoints
    assert list(MLP(64, [256, 64], activation_layer=torch.nn.GELU).state_dict()) == [
        "0.weight",
        "0.bias",
        "3.weight",
        "3.bias",
    ]
