"""`make ablation-synthetic` (experiments.ablation_synthetic): the frame-shuffle control and the plumbing that
plans the runs and reports them."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from experiments.ablation_synthetic import (
    ShuffleFrames,
    arms,
    budget_args,
    effective_budget,
    mean_std,
    plan_versions,
)


# --------------------------------------------------------------------------------- frame-shuffle control
def test_shuffle_frames_permutes_time_per_clip_and_keeps_every_frame_whole():
    b, v, t = 4, 2, 8
    # frame k of clip (i, j) is filled with the value 1000*i + 100*j + k, so its position is readable
    video = torch.arange(t, dtype=torch.float32).view(1, 1, 1, t, 1, 1).expand(b, v, 3, t, 5, 5).clone()
    video += (1000 * torch.arange(b)).view(b, 1, 1, 1, 1, 1) + (100 * torch.arange(v)).view(1, v, 1, 1, 1, 1)
    out = ShuffleFrames(seed=0).shuffle(video)
    assert out.shape == video.shape
    orders = set()
    for i in range(b):
        for j in range(v):
            clip = out[i, j]
            frame_values = clip[0, :, 0, 0]
            assert torch.equal(clip, frame_values.view(1, t, 1, 1).expand(3, t, 5, 5)), "a frame was split"
            assert sorted(frame_values.tolist()) == sorted(video[i, j, 0, :, 0, 0].tolist()), "frames lost"
            orders.add(tuple((frame_values % 100).long().tolist()))
    assert len(orders) > 1, "every clip got the same order"


def test_shuffle_frames_handles_training_clips_without_views():
    video = torch.arange(6, dtype=torch.float32).view(1, 1, 6, 1, 1).expand(3, 3, 6, 2, 2).clone()
    out = ShuffleFrames(seed=1).shuffle(video)
    for clip in out:
        assert sorted(clip[0, :, 0, 0].tolist()) == list(range(6))


class _SeenFrames(pl.LightningModule):
    """Records the frame order that training_step and test_step receive (values = frame positions)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: dict[str, list[list[int]]] = {"train": [], "test": []}

    def _record(self, batch: dict, stage: str) -> None:
        video = batch["video"]
        self.seen[stage] += video.reshape(-1, *video.shape[-4:])[:, 0, :, 0, 0].long().tolist()

    def training_step(self, batch, batch_idx):
        self._record(batch, "train")
        return self.weight * batch["video"].mean()

    def test_step(self, batch, batch_idx):
        self._record(batch, "test")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_shuffle_frames_callback_changes_what_the_steps_of_a_real_trainer_see(tmp_path):
    clips = [{"video": torch.arange(8.0).view(1, 8, 1, 1).expand(3, 8, 4, 4).clone()} for _ in range(6)]
    loader = DataLoader(clips, batch_size=3)
    model = _SeenFrames()
    trainer = pl.Trainer(
        max_epochs=1,
        callbacks=[ShuffleFrames(seed=0)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, loader)
    trainer.test(model, loader, verbose=False)
    for stage in ("train", "test"):
        orders = model.seen[stage]
        assert len(orders) == 6 and all(sorted(o) == list(range(8)) for o in orders)
        assert any(o != list(range(8)) for o in orders), f"{stage}: frames reached the step in order"


# ------------------------------------------------------------------------------------ ablation plumbing
def test_ablation_rows_are_the_dims_then_the_shuffled_control_at_the_largest_d():
    rows = arms([0, 1, 4], control=True)
    assert [(a.structure_dim, a.shuffle) for a in rows] == [(0, False), (1, False), (4, False), (4, True)]
    assert "UniFormer" in rows[0].label and "ConvSA" in rows[1].label and "shuffled" in rows[3].label
    assert len(arms([0, 4], control=False)) == 2


def test_ablation_budget_sets_only_the_options_given():
    assert budget_args(None, None, None, None) == []
    assert budget_args(3, 700, 8, 64) == [
        "--trainer.max_epochs",
        "3",
        "--data.limit",
        "700",
        "--data.num_frames",
        "8",
        "--data.crop_size",
        "64",
    ]
    assert budget_args(None, None, None, None, num_workers=1) == ["--data.num_workers", "1"]
    assert effective_budget(["--data.num_workers", "1", "--trainer.max_epochs", "3"])["workers"] == 1


def test_parallel_runs_get_distinct_versions_after_the_existing_ones(tmp_path):
    (tmp_path / "D0" / "version_0").mkdir(parents=True)
    plan = [(arm, seed) for arm in arms([0, 4], control=True) for seed in (0, 1)]
    assert plan_versions(plan, tmp_path) == [1, 2, 0, 1, 0, 1]


def test_mean_std_is_in_percent_and_says_when_there_is_one_seed():
    assert mean_std([0.9, 0.8, 0.7]) == "80.0 ± 10.0"
    assert mean_std([0.5]) == "50.0 ± –"
