"""StructSA: the fast exact form equals the explicit form (docs/method.md), and the module behaves as the paper says."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from src.models.structsa import StructSA, shifted_taps

# (grid (T, H, W), D, S, heads, kernel): video, image (T = 1), odd grids, every D and stride.
CASES = [
    ((2, 5, 4), 4, 1, 2, (3, 3, 3)),
    ((1, 7, 5), 4, 1, 2, (3, 3, 3)),  # image: the temporal taps see only padding
    ((1, 5, 5), 2, 2, 1, (1, 3, 3)),  # image with a 3x3 kernel and stride 2
    ((3, 5, 3), 8, 2, 3, (3, 3, 3)),
    ((2, 3, 5), 1, 1, 4, (3, 3, 3)),  # D = 1 is ConvSA
    ((2, 4, 4), 2, 2, 2, (3, 3, 3)),
    ((3, 3, 3), 4, 1, 1, (3, 5, 5)),
]


def _module(dim: int, heads: int, d: int, s: int, kernel=(3, 3, 3), seed: int = 0) -> StructSA:
    torch.manual_seed(seed)
    m = StructSA(dim, heads, structure_dim=d, kernel_size=kernel, kv_stride=s).double()
    if d > 0:  # generic filters, far from the identity start, so every tap matters
        with torch.no_grad():
            m.k_struct.weight.normal_()
            m.v_struct.weight.normal_(std=0.5)
    return m


@pytest.mark.parametrize("grid,d,s,heads,kernel", CASES)
def test_fast_path_equals_reference_in_float64(grid, d, s, heads, kernel):
    m = _module(6 * heads, heads, d, s, kernel)
    x = torch.randn(2, grid[0] * grid[1] * grid[2], 6 * heads, dtype=torch.float64)
    fast, ref = m(x, grid), m.forward_reference(x, grid)
    assert fast.shape == x.shape
    assert (fast - ref).abs().max().item() < 1e-10


@pytest.mark.parametrize("grid,d,s,heads,kernel", CASES[:4])
def test_fast_path_gradients_equal_reference_in_float64(grid, d, s, heads, kernel):
    m = _module(6 * heads, heads, d, s, kernel)
    x = torch.randn(2, grid[0] * grid[1] * grid[2], 6 * heads, dtype=torch.float64, requires_grad=True)
    target = torch.randn_like(x)
    grads = []
    for fn in (m.forward, m.forward_reference):
        m.zero_grad()
        x.grad = None
        (fn(x, grid) * target).sum().backward()
        grads.append({"x": x.grad.clone(), **{n: p.grad.clone() for n, p in m.named_parameters()}})
    fast, ref = grads
    assert fast.keys() == ref.keys() and {"k_struct.weight", "v_struct.weight", "qkv.weight"} <= fast.keys()
    for name in fast:
        assert (fast[name] - ref[name]).abs().max().item() < 1e-10, name


def _plain_attention(m: StructSA, x: torch.Tensor) -> torch.Tensor:
    """Multi-head softmax attention written out with the module's own qkv and proj."""
    b, n, c = x.shape
    q, k, v = m.qkv(x).reshape(b, n, 3, m.num_heads, c // m.num_heads).permute(2, 0, 3, 1, 4)
    attn = (q @ k.transpose(-2, -1) * (c // m.num_heads) ** -0.5).softmax(-1)
    return m.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


def test_structure_dim_zero_is_plain_softmax_attention():
    m = _module(16, 2, 0, 1)
    assert m.k_struct is None and m.v_struct is None
    x = torch.randn(2, 2 * 3 * 4, 16, dtype=torch.float64)
    expected = _plain_attention(m, x)
    assert torch.allclose(m(x, (2, 3, 4)), expected, atol=1e-12)
    assert torch.allclose(m.forward_reference(x, (2, 3, 4)), expected, atol=1e-12)


@pytest.mark.parametrize("d", [1, 4, 8])
def test_identity_init_with_stride_one_is_vanilla_attention(d):
    m = _module(16, 2, d, 1)
    m.init_identity()
    x = torch.randn(2, 2 * 4 * 3, 16, dtype=torch.float64)
    assert torch.allclose(m(x, (2, 4, 3)), _plain_attention(m, x), atol=1e-12)


def test_noisy_identity_init_is_identity_plus_small_noise_that_differs_across_filters():
    m = StructSA(32, 2, structure_dim=4, struct_init="noisy_identity")
    w = m.k_struct.weight.reshape(32, 4, 27)
    assert torch.allclose(w[:, :, 13], torch.ones(32, 4), atol=0.05)  # centre tap ≈ 1
    assert w[:, :, :13].abs().max() < 0.05 and w[:, :, :13].abs().max() > 0
    assert not torch.allclose(w[:, 0], w[:, 1])  # the D copies differ
    assert not torch.equal(m.k_struct.weight, m.v_struct.weight)


def test_shifted_init_is_deltas_at_distinct_taps_centre_first():
    m = StructSA(32, 2, structure_dim=8, struct_init="shifted")
    taps = shifted_taps((3, 3, 3), 8)
    assert taps[:7] == [(1, 1, 1), (0, 1, 1), (2, 1, 1), (1, 0, 1), (1, 2, 1), (1, 1, 0), (1, 1, 2)]
    assert len(set(taps)) == 8
    for conv in (m.k_struct, m.v_struct):
        w = conv.weight.reshape(32, 8, 3, 3, 3)
        for d, tap in enumerate(taps):
            assert (
                torch.all(w[(slice(None), d, *tap)] == 1) and w[:, d].abs().sum() == 32
            )  # one delta per filter
    # D = 1 shifted is the identity, so a D = 1 StructSA starts as vanilla attention
    one = _module(16, 2, 1, 1)
    one.reset_struct_parameters("shifted")
    x = torch.randn(2, 2 * 4 * 3, 16, dtype=torch.float64)
    assert torch.allclose(one(x, (2, 4, 3)), _plain_attention(one, x), atol=1e-12)


def test_shifted_taps_stay_inside_an_image_kernel_and_refuse_too_many():
    assert shifted_taps((1, 3, 3), 5) == [(0, 1, 1), (0, 0, 1), (0, 2, 1), (0, 1, 0), (0, 1, 2)]
    assert len(set(shifted_taps((3, 3, 3), 27))) == 27
    with pytest.raises(ValueError, match="D <= 9"):
        StructSA(16, 2, structure_dim=10, kernel_size=(1, 3, 3), struct_init="shifted")


def test_default_init_is_random_fan_in_scaled_and_unknown_inits_are_refused():
    torch.manual_seed(0)
    m = StructSA(64, 2, structure_dim=4)
    assert m.struct_init == "random" and not torch.equal(m.k_struct.weight, m.v_struct.weight)
    w = m.k_struct.weight
    assert abs(w.std().item() - 27**-0.5 * 0.88) < 0.02  # a normal cut at ±2 std keeps 88 % of its std
    assert w.abs().max() <= 2 * 27**-0.5 + 1e-6
    with pytest.raises(ValueError, match="struct_init='zeros'"):
        StructSA(16, 2, structure_dim=4, struct_init="zeros")


def test_structsa_sees_spatial_structure_vanilla_attention_does_not():
    """Vanilla attention is permutation-equivariant: shuffling the tokens shuffles its output the same way.
    StructSA convolves over the key grid, so a spatial shuffle changes what it computes."""
    grid = (2, 4, 4)
    x = torch.randn(1, 32, 16, dtype=torch.float64)
    perm = torch.randperm(32, generator=torch.Generator().manual_seed(3))
    vanilla, struct = _module(16, 2, 0, 1), _module(16, 2, 4, 1)
    assert torch.allclose(vanilla(x[:, perm], grid), vanilla(x, grid)[:, perm], atol=1e-12)
    assert (struct(x[:, perm], grid) - struct(x, grid)[:, perm]).abs().max() > 1e-3


def test_reference_maps_expose_the_per_head_tensors():
    m = _module(12, 2, 4, 2)
    grid = (2, 5, 4)
    x = torch.randn(3, 40, 12, dtype=torch.float64)
    maps = m.reference_maps(x, grid)
    assert maps.key_grid == (2, 3, 2) == m.key_grid(grid)
    assert maps.q.shape == maps.k.shape == maps.v.shape == (3, 2, 40, 6)
    assert maps.correlation.shape == (3, 2, 40, 6, 2, 5, 4)
    assert maps.scores.shape == maps.attention.shape == (3, 2, 40, 12, 4)
    # one joint softmax over all N'·D entries of a row, not D separate ones
    assert torch.allclose(maps.attention.sum(dim=(-2, -1)), torch.ones(3, 2, 40, dtype=torch.float64))
    assert not torch.allclose(maps.attention.sum(dim=-2), torch.ones(3, 2, 40, 4, dtype=torch.float64))
    assert torch.allclose(maps.output, m(x, grid), atol=1e-10)
    assert maps.dynamic_kernels(query=7).shape == (3, 2, 12, 6, 3, 3, 3)


def test_head_filters_are_the_structure_convolutions_per_head():
    # 2 heads of 6 channels, D = 4: output channel c * D + d is filter d of channel c
    m = _module(12, 2, 4, 1)
    key, value = m.head_filters("key"), m.head_filters("value")
    assert key.shape == value.shape == (2, 4, 6, 3, 3, 3)
    torch.testing.assert_close(key[1, 3, 2], m.k_struct.weight[(6 + 2) * 4 + 3, 0])
    torch.testing.assert_close(value[0, 1, 5], m.v_struct.weight[5 * 4 + 1, 0])
    plain = _module(12, 2, 0, 1).head_filters("key")  # D = 0: one identity tap per channel
    assert plain.shape == (2, 1, 6, 1, 1, 1) and bool((plain == 1).all())
    with pytest.raises(ValueError, match="'key' or 'value'"):
        m.head_filters("query")


def test_attn_fp32_runs_attention_in_float32_under_bf16_autocast(monkeypatch):
    seen: list[torch.dtype] = []
    sdpa = F.scaled_dot_product_attention

    def recording_sdpa(q, k, v, **kwargs):
        seen.append(q.dtype)
        return sdpa(q, k, v, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording_sdpa)
    torch.manual_seed(0)
    x = torch.randn(2, 2 * 4 * 4, 32)
    for fp32 in (False, True):
        m = StructSA(32, 2, structure_dim=4, attn_fp32=fp32)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(x, (2, 4, 4))
        y.float().sum().backward()
        assert torch.isfinite(y.float()).all() and all(torch.isfinite(p.grad).all() for p in m.parameters())
    assert seen == [torch.bfloat16, torch.float32]


def test_bad_grid_or_shape_gives_a_clear_error():
    m = StructSA(16, 2)
    with pytest.raises(ValueError, match=r"grid \(2, 3, 3\) has 18 positions but x has N=20"):
        m(torch.randn(1, 20, 16), (2, 3, 3))
    with pytest.raises(ValueError, match="not divisible"):
        StructSA(20, 3)
    with pytest.raises(ValueError, match="kv_stride=2 needs structure_dim"):
        StructSA(16, 2, structure_dim=0, kv_stride=2)
    with pytest.raises(ValueError, match="odd"):
        StructSA(16, 2, kernel_size=(2, 3, 3))


def test_fast_path_runs_the_fused_sdpa_kernel_at_batch_one():
    """Non-contiguous structured keys made SDPA fall back to the math kernel (an N x D·N' matrix)."""
    from torch.profiler import profile

    module = StructSA(64, 2, structure_dim=4).eval()
    with torch.no_grad(), profile() as prof:
        module(torch.randn(1, 2 * 6 * 6, 64), (2, 6, 6))
    ops = {event.key for event in prof.key_averages()}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in ops, sorted(
        o for o in ops if "attention" in o
    )
    assert "aten::_scaled_dot_product_attention_math" not in ops
