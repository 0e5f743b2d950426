"""Lightning callbacks of the training app: throughput and data wait, first-batch frame grid, a checkpoint
on SIGTERM, and a JSON-lines writer for predictions."""

from __future__ import annotations

import json
import time
from collections import deque
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from src.data.protocol import EvalProtocol
from src.data.transforms import denormalize


class ThroughputMonitor(Callback):
    """Logs clips/s per rank (`perf/clips_per_s`) and the fraction of step time spent waiting for data
    (`perf/data_wait_frac`) every training step, as the mean over the last `window` steps.

    A step is measured from the end of one batch to the end of the next; the wait is the part of it
    before `on_train_batch_start`, i.e. the time Lightning spent fetching the batch from the loader.
    """

    def __init__(self, window: int = 10) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        self._last_end: float | None = None
        self._batch_start = 0.0
        self._steps: deque[tuple[int, float, float]] = deque(maxlen=window)  # (clips, wait s, step s)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_end = None  # the first step of an epoch includes worker start-up: not a fair sample

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch_start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        last, self._last_end = self._last_end, now
        if last is None:
            return
        self._steps.append((int(batch["video"].shape[0]), self._batch_start - last, now - last))
        clips, wait, total = (sum(column) for column in zip(*self._steps))
        pl_module.log("perf/clips_per_s", clips / total, on_step=True, on_epoch=False)
        pl_module.log("perf/data_wait_frac", wait / total, on_step=True, on_epoch=False)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_end = None  # validation in the middle of an epoch is not data wait


def run_protocol(trainer: pl.Trainer, pl_module: pl.LightningModule) -> EvalProtocol:
    """The protocol (frames, crop, mean / std) of the clips this run feeds the model: its DataModule's, else
    the one the model was loaded with (`src.trained.load_trained`), else a DataModule's defaults."""
    protocol = getattr(getattr(trainer, "datamodule", None), "eval_protocol", None)
    protocol = protocol or getattr(pl_module, "eval_protocol", None)
    if protocol is None:
        from src.trained import default_protocol

        protocol = default_protocol()
    return protocol


def frame_grid(
    video: torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    max_clips: int = 8,
    max_frames: int = 8,
) -> torch.Tensor:
    """(B, 3, T, H, W) clips normalised with `mean` / `std` -> one (3, H', W') float image in [0, 1]: a row of
    frames per clip."""
    import torchvision

    clips = video[:max_clips].detach().float().cpu()
    t = clips.shape[2]
    step = max(t // max_frames, 1)
    frames = clips[:, :, ::step][:, :, :max_frames]  # (b, 3, t', H, W)
    b, _, tt = frames.shape[:3]
    frames = denormalize(frames, mean, std).permute(0, 2, 1, 3, 4).reshape(b * tt, 3, *frames.shape[-2:])
    return torchvision.utils.make_grid(frames, nrow=tt, padding=1)


class FirstBatchFrames(Callback):
    """Logs a grid of the first training batch's frames (after augmentation, before mixing) once per run."""

    def __init__(self, max_clips: int = 8, max_frames: int = 8) -> None:
        self.max_clips = max_clips
        self.max_frames = max_frames
        self._done = False

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._done or not trainer.is_global_zero:
            return
        self._done = True
        protocol = run_protocol(trainer, pl_module)
        grid = frame_grid(batch["video"], protocol.mean, protocol.std, self.max_clips, self.max_frames)
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):
                experiment.add_image("train/first_batch", grid, global_step=trainer.global_step)


class SigtermCheckpoint(Callback):
    """On SIGTERM (cluster pre-emption, `kill`), save `last.ckpt` so `--ckpt_path last` resumes exactly there.

    Lightning turns SIGTERM into a SIGTERMException raised between two training steps, so the saved state is
    consistent: the optimiser step of the last batch is complete and its progress counters are recorded.
    Lightning's own `ModelCheckpoint(save_on_exception=True)` is not the same guarantee: it saves on every
    exception, in validation too, and on every rank through `trainer.save_checkpoint`'s barrier, which a rank
    that alone hit an error never reaches; this saves only on the SIGTERM that every rank agrees on.

    Args:
        filename: name of the file written in the run's checkpoint folder (`last`: what `--ckpt_path last`
            resumes from).
    """

    def __init__(self, filename: str = ModelCheckpoint.CHECKPOINT_NAME_LAST) -> None:
        self.filename = filename

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException) or not trainer.training:
            return
        checkpoint = next((c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)), None)
        if checkpoint is None or checkpoint.dirpath is None:
            return
        path = Path(checkpoint.dirpath) / f"{self.filename}{ModelCheckpoint.FILE_EXTENSION}"
        trainer.save_checkpoint(path)
        rank_zero_info(
            f"SIGTERM: saved {path} at global step {trainer.global_step}; resume with --ckpt_path last"
        )


class JsonLinesPredictionWriter(BasePredictionWriter):
    """Writes one JSON object per video to `output`: {"path", "top5": [{"class", "index", "prob"}, ...]} for a
    predicted video, {"path", "error"} for one that failed to decode; ends with "predicted N of M videos".

    `output` None means `predictions.jsonl` in the run folder of the checkpoint the model was loaded from
    (`<run>/checkpoints/x.ckpt` -> `<run>/`), else in the Trainer's root folder. With `features`, the
    pre-logit embedding of every predicted video (mean over its views) also goes to `<output
    stem>.features.npy` (N x C, float32), with the N paths in the same order in `<output stem>.features.txt`,
    for retrieval or a linear probe. Every rank writes its own shard files when several processes predict
    (`predictions.rank1.jsonl`, ...).
    """

    def __init__(self, output: str | None = None, features: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.output = output
        self.features = features
        self._path: Path | None = None
        self._counts = [0, 0]  # predicted, failed (this rank)
        self._embeddings: list[torch.Tensor] = []
        self._embedded_paths: list[str] = []

    def path_for(self, trainer: pl.Trainer, pl_module: pl.LightningModule | None = None) -> Path:
        """Where this rank writes."""
        if self.output:
            base = Path(self.output)
        else:
            source = getattr(pl_module, "source_checkpoint", None)
            from src.trained import run_folder_of

            folder = run_folder_of(source) if source else Path(trainer.default_root_dir)
            base = folder / "predictions.jsonl"
        if trainer.world_size > 1 and trainer.global_rank > 0:
            base = base.with_name(f"{base.stem}.rank{trainer.global_rank}{base.suffix}")
        return base

    def features_paths(self) -> tuple[Path, Path]:
        """(embeddings .npy, paths .txt) beside this rank's predictions file."""
        assert self._path is not None
        stem = self._path.with_suffix("")
        return stem.with_name(f"{stem.name}.features.npy"), stem.with_name(f"{stem.name}.features.txt")

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._path = self.path_for(trainer, pl_module)
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._path.write_text("")
        except OSError as err:
            raise OSError(
                f"cannot write predictions to {self._path} ({err.strerror}); choose another place with "
                "--predict_writer.output FILE.jsonl"
            ) from None
        if self.features and not getattr(pl_module, "has_embeddings", False):
            raise ValueError(
                f"--predict_writer.features: {type(getattr(pl_module, 'backbone', pl_module)).__name__} "
                "has no pre-logit features"
            )
        self._counts = [0, 0]
        self._embeddings, self._embedded_paths = [], []

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        assert self._path is not None
        with open(self._path, "a", encoding="utf-8") as f:
            for record in prediction:
                embedding = record.pop("embedding", None)
                if self.features and embedding is not None:
                    self._embeddings.append(embedding)
                    self._embedded_paths.append(record["path"])
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                self._counts["error" in record] += 1

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write the features; print "predicted N of M videos; K failed" over all ranks (every rank runs this
        hook: one all-reduce)."""
        written = ""
        if self.features:
            import numpy as np

            array_path, list_path = self.features_paths()
            width = getattr(getattr(pl_module, "backbone", None), "num_features", 0)
            array = (
                torch.stack(self._embeddings).numpy()
                if self._embeddings
                else np.zeros((0, width), np.float32)
            )
            np.save(array_path, array.astype(np.float32))
            list_path.write_text("".join(f"{p}\n" for p in self._embedded_paths), encoding="utf-8")
            written = (
                f"; features {array.shape[0]} x {array.shape[1]} to {array_path} (paths in {list_path.name})"
            )
        counts = torch.tensor(self._counts, dtype=torch.long, device=pl_module.device)
        if trainer.world_size > 1:
            counts = trainer.strategy.reduce(counts, reduce_op="sum")
        predicted, failed = (int(v) for v in counts.tolist())
        where = f"{self._path}" + (
            f" (and .rank<r> files of the other {trainer.world_size - 1} ranks)"
            if trainer.world_size > 1
            else ""
        )
        rank_zero_info(
            f"predicted {predicted} of {predicted + failed} videos; {failed} failed (listed with their error) — "
            f"written to {where}{written}"
        )
