"""Specification of the StructSA figures (src.visualize) and of the TensorBoard callback (src.viz_callback).

Everything runs on structvit_xs and on small real H.264 clips written with PyAV.
"""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from src.data.protocol import EvalProtocol
from src.data.transforms import denormalize
from src.models import build_model
from src.trained import default_protocol, read_views
from src.visualize import (
    FIGURE_NAMES,
    capture_attention_input,
    compute_structure_maps,
    flat_index,
    key_position,
    load_clip,
    load_model,
    main,
    make_figures,
    plot_dynamic_kernel,
    plot_structural_attention,
    save_figures,
    vanilla_twin,
)
from src.viz_callback import StructureVisualizer
from tests.helpers.cli_runs import ROOT, ok, run_args, run_cli
from tests.helpers.videos import write_test_video

FRAMES, SIZE, CLASSES = 8, 64, 3
PROTOCOL = EvalProtocol(FRAMES, "segment", 1, SIZE, (1, 1))  # the DataModule's mean / std
# a run normalised otherwise: the frames shown must still be the pixels of the clip
OTHER_NORM = dict(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 8-frame 64x64 H.264 clip with moving texture."""
    return write_test_video(tmp_path_factory.mktemp("viz") / "clip.mp4", 12, size=SIZE, pattern="textured")


@pytest.fixture(scope="module")
def clip(clip_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    return load_clip(clip_path, PROTOCOL)


@pytest.fixture(scope="module")
def xs_model() -> torch.nn.Module:
    """structvit_xs with random weights (D = 4, S = 1); tests that change weights build their own."""
    return _model()


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _model(seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("structvit_xs", num_classes=CLASSES, **overrides).eval()


def _plotted(fig, prefix: str) -> list[torch.Tensor]:
    """The arrays of the images a figure drew whose gid (label|position) starts with `prefix`."""
    return [
        torch.as_tensor(im.get_array().data if hasattr(im.get_array(), "data") else im.get_array())
        for ax in fig.axes
        for im in ax.get_images()
        if (im.get_gid() or "").startswith(prefix)
    ]


def test_load_clip_makes_the_view_prediction_makes_with_the_protocols_normalisation(clip, clip_path) -> None:
    frames, video = clip
    assert frames.shape == (FRAMES, SIZE, SIZE, 3) and 0.0 <= frames.min() and frames.max() <= 1.0
    assert video.shape == (1, 3, FRAMES, SIZE, SIZE)
    torch.testing.assert_close(video[0], read_views(clip_path, PROTOCOL)[0])  # the clip predict scores
    torch.testing.assert_close(video[0].permute(1, 2, 3, 0) * 0.225 + 0.45, frames)
    # Another normalisation: another video tensor, the same pixels on screen.
    other = EvalProtocol(FRAMES, "segment", 1, SIZE, (1, 1), **OTHER_NORM)
    other_frames, other_video = load_clip(clip_path, other)
    assert (other_video - video).abs().max() > 0.1
    torch.testing.assert_close(other_frames, frames, rtol=0, atol=1e-5)
    mean, std = torch.tensor(other.mean), torch.tensor(other.std)
    torch.testing.assert_close(other_video[0].permute(1, 2, 3, 0) * std + mean, frames, rtol=0, atol=1e-5)


def test_load_clip_takes_the_middle_view_of_the_protocol(clip_path) -> None:
    """Three temporal clips and three crops: the figure shows the middle clip's centre crop."""
    protocol = EvalProtocol(4, "dense", 2, 48, (3, 3))
    _, video = load_clip(clip_path, protocol)
    torch.testing.assert_close(video[0], read_views(clip_path, protocol)[4])


def test_a_model_without_checkpoint_follows_the_datamodules_default_protocol() -> None:
    from src.data.datamodule import VideoDataModule

    assert load_model(None, "structvit_xs", num_classes=CLASSES).protocol == default_protocol()
    assert default_protocol() == VideoDataModule(dataset="custom", root="unused").eval_protocol


def test_command_line_writes_every_figure_for_structvit_xs_on_a_real_clip(
    clip_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "figs"
    paths = main(
        [
            "--model",
            "structvit_xs",
            "--num-classes",
            str(CLASSES),
            "--video",
            str(clip_path),
            "--out",
            str(out),
            "--frames",
            str(FRAMES),
            "--size",
            str(SIZE),
            "--dpi",
            "40",
        ]
    )
    assert sorted(p.name for p in paths) == sorted(f"{n}.png" for n in FIGURE_NAMES)
    for path in paths:
        pixels = mpimg.imread(path)
        assert pixels.ndim == 3 and pixels.shape[0] > 50 and pixels.shape[1] > 50
        assert pixels.std() > 0.01, f"{path.name} is blank"


def test_plotted_structural_attention_sums_to_one_over_keys_and_structure_jointly(
    clip, xs_model: torch.nn.Module
) -> None:
    frames, video = clip
    maps = compute_structure_maps(xs_model, video, stage=3, block=-1, head=1, frames=frames)
    assert maps.structure_dim == 4 and maps.attention.shape == (4, *maps.key_grid)
    fig = plot_structural_attention(maps)
    plotted = _plotted(fig, "attention d=")
    assert len(plotted) == 4 * maps.key_grid[0]  # one panel per structure channel and token frame
    total = sum(float(p.double().sum()) for p in plotted)
    assert total == pytest.approx(1.0, abs=1e-5)
    # One softmax over (j, d) jointly, not D separate ones: no single d sums to 1 on its own.
    per_d = maps.attention.double().flatten(1).sum(1)
    assert per_d.sum().item() == pytest.approx(1.0, abs=1e-6) and (per_d < 0.99).all()


@pytest.mark.parametrize("kv_stride", [1, 2])
def test_dynamic_kernel_of_the_figure_equals_the_one_computed_from_the_module_weights(
    clip, kv_stride: int
) -> None:
    frames, video = clip
    model = _model(seed=1, kv_stride=kv_stride)
    stage, block, head = 3, 0, 2
    maps = compute_structure_maps(
        model, video, stage=stage, block=block, head=head, query="2,1,3", frames=frames
    )

    # From the weights, by the fast form (docs/method.md): K'_d = depthwise conv of K with H_K[:, :, d].
    attn, x, grid, _ = capture_attention_input(model, video, stage, block)
    c_all, heads, depth = attn.dim, attn.num_heads, attn.structure_dim
    c = c_all // heads
    q, k, _ = attn.qkv(x).reshape(1, -1, 3, heads, c).permute(2, 0, 3, 1, 4)
    k_grid = k.transpose(2, 3).reshape(1, c_all, *grid)
    conv = attn.k_struct
    k_struct = F.conv3d(k_grid, conv.weight, stride=conv.stride, padding=conv.padding, groups=c_all)
    key_grid = tuple(k_struct.shape[-3:])
    k_struct = k_struct.reshape(heads, c, depth, -1)[head]  # (c, D, N'): channel c*D + d = filter d of c
    i = flat_index((2, 1, 3), grid)
    scores = torch.einsum("c,cdj->dj", q[0, head, i], k_struct) * c**-0.5
    a = scores.flatten().softmax(0).reshape(scores.shape)  # joint softmax over (d, j)
    j = flat_index(key_position((2, 1, 3), grid, key_grid), key_grid)
    h_v = attn.v_struct.weight.reshape(c_all, depth, *attn.kernel_size)[head * c : (head + 1) * c]
    expected = torch.einsum("d,cdxyz->cxyz", a[:, j], h_v).mean(0)

    assert maps.key_grid == key_grid
    torch.testing.assert_close(maps.dynamic_kernel, expected.detach(), rtol=1e-4, atol=1e-7)
    plotted = torch.stack(_plotted(plot_dynamic_kernel(maps), "kappa_ii"))
    torch.testing.assert_close(plotted.float(), maps.dynamic_kernel)
    # The aggregator figure shows the head's H_V filters averaged over its channels.
    torch.testing.assert_close(maps.aggregators, h_v.mean(0).detach())


def test_vanilla_twin_is_plain_attention_with_the_same_weights_and_matches_identity_filters(clip) -> None:
    frames, video = clip
    model = _model(seed=2)
    twin = vanilla_twin(model)
    attn, plain = model.blocks3[0].attn, twin.blocks3[0].attn
    assert plain.structure_dim == 0 and plain.k_struct is None
    torch.testing.assert_close(plain.qkv.weight, attn.qkv.weight)
    torch.testing.assert_close(twin.blocks3[0].mlp.fc1.weight, model.blocks3[0].mlp.fc1.weight)
    # With identity filters (S = 1) StructSA is vanilla attention: the D maps add up to the twin's map.
    model.init_identity()
    maps = compute_structure_maps(model, video, vanilla_model=vanilla_twin(model), frames=frames)
    assert maps.vanilla is not None and float(maps.vanilla.sum()) == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(maps.attention.sum(0), maps.vanilla, rtol=1e-4, atol=1e-6)
    centre = torch.zeros(3, 3, 3)
    centre[1, 1, 1] = float(
        maps.attention[:, *key_position(maps.query, maps.query_grid, maps.key_grid)].sum()
    )
    torch.testing.assert_close(maps.dynamic_kernel, centre)


def test_correlation_map_is_the_scaled_query_key_product(clip) -> None:
    frames, video = clip
    model = _model(seed=3)
    maps = compute_structure_maps(model, video, stage=4, block=0, head=0, frames=frames)
    attn, x, grid, _ = capture_attention_input(model, video, 4, 0)
    q, k, _ = attn.qkv(x).reshape(1, -1, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    expected = (k[0, 0] @ q[0, 0, flat_index(maps.query, grid)]) * attn.head_dim**-0.5
    torch.testing.assert_close(maps.correlation, expected.reshape(grid).detach(), rtol=1e-4, atol=1e-5)
    assert maps.query == (grid[0] // 2, grid[1] // 2, grid[2] // 2)  # default: centre of the middle frame


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(stage=1), "convolution block"),
        (dict(stage=5), "stages are 1..4"),
        (dict(block=7), "has 2 blocks"),
        (dict(head=9), "has 4 heads"),
        (dict(query="9,0,0"), "outside the layer's token grid"),
        (dict(query="1,2"), "three integers"),
    ],
)
def test_bad_layer_head_or_query_is_refused_with_a_clear_error(
    clip, xs_model: torch.nn.Module, kwargs: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        compute_structure_maps(xs_model, clip[1], **kwargs)


def test_missing_video_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        load_clip(tmp_path / "nope.mp4", PROTOCOL)


def test_a_checkpoint_is_rebuilt_by_load_trained_with_its_options_classes_and_protocol(
    clip_path: Path, tmp_path: Path
) -> None:
    """The same rebuild as predict and export: variant, kv_stride, class names and the clip size come from the
    checkpoint alone (no run folder beside it, nothing read from weight shapes)."""
    from src.data.protocol import CHECKPOINT_KEY, EvalProtocol
    from src.task import BackboneConfig, VideoClassifier

    names = ["left", "right", "still"]
    torch.manual_seed(4)
    module = VideoClassifier(BackboneConfig("structvit_xs", kv_stride=2), num_classes=3, class_names=names)
    protocol = EvalProtocol(FRAMES, "segment", 1, SIZE, (1, 1), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    ckpt = tmp_path / "elsewhere" / "model.ckpt"
    ckpt.parent.mkdir()
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            CHECKPOINT_KEY: protocol.to_dict(),
        },
        ckpt,
    )
    loaded = load_model(ckpt)
    assert loaded.variant == "structvit_xs" and loaded.class_names == names
    assert loaded.protocol == protocol
    assert loaded.model.blocks3[0].attn.kv_stride == 2
    for key, value in module.backbone.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[key], value)
    paths = main(
        [
            "--ckpt",
            str(ckpt),
            "--video",
            str(clip_path),
            "--out",
            str(tmp_path / "o"),
            "--only",
            "overview",
            "--no-vanilla",
            "--dpi",
            "30",
            "--palette",
        ]
    )
    assert [p.name for p in paths] == ["overview.png"]
    with Image.open(paths[0]) as picture:
        assert picture.mode == "P"  # --palette: a 256-colour PNG, small enough to commit
    with pytest.raises(ValueError, match="--ckpt names its own model"):
        load_model(ckpt, "structvit_xs")


def test_raw_backbone_weights_need_their_variant_and_must_fit_it(tmp_path: Path) -> None:
    state = _model().state_dict()
    weights = tmp_path / "bare.pth"
    torch.save({"model": state}, weights)
    with pytest.raises(ValueError, match=r"not a checkpoint written by this project.*--weights"):
        load_model(weights)  # as --ckpt: no hyper-parameters, so no guessing either
    assert (
        load_model(None, "structvit_xs", weights=weights, num_classes=CLASSES).model.head.out_features
        == CLASSES
    )
    # Maps of half-loaded weights would mislead: weights missing a tensor are refused, with the report.
    del state["blocks4.0.mlp.fc2.weight"]
    torch.save({"model": state}, weights)
    with pytest.raises(ValueError, match=r"does not fit structvit_xs(.|\n)*blocks4.0.mlp.fc2.weight"):
        load_model(None, "structvit_xs", weights=weights, num_classes=CLASSES)


# ------------------------------------------------------------------------------------------------ callback


def test_callbacks_show_the_pixels_of_a_run_normalised_with_its_own_mean_and_std(clip) -> None:
    """The structure callback and the first-batch grid undo the run's normalisation (the DataModule's
    mean / std), not the default one."""
    from src.callbacks import frame_grid, run_protocol

    frames, _ = clip
    pixels = frames.permute(3, 0, 1, 2)  # (3, T, H, W) in [0, 1]
    mean, std = (torch.tensor(v).view(3, 1, 1, 1) for v in OTHER_NORM.values())
    batch = {"video": ((pixels - mean) / std).unsqueeze(0).unsqueeze(0)}  # (B, V, 3, T, H, W)
    protocol = EvalProtocol(FRAMES, "segment", 1, SIZE, (1, 1), **OTHER_NORM)
    trainer = SimpleNamespace(datamodule=SimpleNamespace(eval_protocol=protocol))
    assert run_protocol(trainer, pl.LightningModule()) == protocol

    callback = StructureVisualizer()
    callback.on_validation_batch_start(trainer, pl.LightningModule(), batch, 0)
    torch.testing.assert_close(callback._frames, frames, rtol=0, atol=1e-5)
    grid = frame_grid(batch["video"][:, 0], protocol.mean, protocol.std, max_clips=1, max_frames=2)
    torch.testing.assert_close(grid[:, 1 : 1 + SIZE, 1 : 1 + SIZE], pixels[:, 0], rtol=0, atol=1e-5)
    torch.testing.assert_close(denormalize(batch["video"][0, 0], **OTHER_NORM), pixels, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_callback_added_on_the_command_line_as_the_docs_show_logs_the_figures(tiny_index, tmp_path) -> None:
    """The callback as a user adds it (README / docs: `--trainer.callbacks+=...` on the `src.cli fit` command
    line) to a real run with its own mean / std: every figure in the TensorBoard event file, once per
    epoch, none during the sanity check."""
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    added = "--trainer.callbacks+=src.viz_callback.StructureVisualizer"
    assert any(added in p.read_text(encoding="utf-8") for p in docs), f"no doc shows {added}"
    runs = tmp_path / "runs"
    ok(
        run_cli(
            "fit",
            *run_args(tiny_index, runs, "viz", "fit"),
            "--trainer.max_epochs",
            "2",
            "--trainer.limit_train_batches",
            "1",
            "--trainer.limit_val_batches",
            "1",
            "--data.mean",
            str(list(OTHER_NORM["mean"])),
            "--data.std",
            str(list(OTHER_NORM["std"])),
            added,
            "--trainer.callbacks.every_n_epochs=1",
            "--trainer.callbacks.dpi=40",
        )
    )
    events = EventAccumulator(str(runs / "viz" / "fit"), size_guidance={"images": 0})
    events.Reload()
    tags = sorted(t for t in events.Tags()["images"] if t.startswith("structure/"))
    assert tags == sorted(f"structure/{n}" for n in FIGURE_NAMES)
    for tag in tags:
        images = events.Images(tag)
        assert [im.step for im in images] == [1, 2]  # after each epoch's single step; not in the sanity check
        assert all(im.width > 50 and im.height > 50 for im in images)
        picture = np.asarray(Image.open(io.BytesIO(images[-1].encoded_image_string)).convert("L"), float)
        assert picture.std() > 5, f"{tag} is blank"


def test_a_predicted_class_name_with_markup_characters_is_shown_as_written(
    clip, xs_model: torch.nn.Module, tmp_path: Path
) -> None:
    """Class names are data: "$...$" in a name is no mathtext (it raised a parse error at savefig before)."""
    frames, video = clip
    names = ["$_$ price", "50% off_x^2", "non\u00a0breaking"]
    maps = compute_structure_maps(
        xs_model, video, stage=3, block=-1, head=0, frames=frames, class_names=names
    )
    assert any(name in maps.title for name in names)
    figures = make_figures(maps)
    paths = save_figures(figures, tmp_path, dpi=30)
    assert len(paths) == len(figures) and all(p.stat().st_size > 1000 for p in paths)
