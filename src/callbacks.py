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
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from src.data.protocol import EvalProtocol
from src.data.transforms import denormalize
from src.paths import file_identity


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
    """On SIGTERM (cluster pre-emption, `kill`) during `fit`, save `last.ckpt` so `--ckpt_path last` resumes there.

    The stop is a SIGTERMException that every rank raises at the same safe point (`src.hang_guard`): between
    two training steps, or after an evaluation batch during validation. The saved state is the last completed
    training step (its optimiser step done, its progress counters recorded). Stopped inside a validation, the
    checkpoint marks that validation as not started, so the resumed run validates that step in full (its
    metrics and its `best` checkpoint) before training on; stopped inside the sanity check, as not run.
    Lightning's own `ModelCheckpoint(save_on_exception=True)` is not the same guarantee: it saves on every
    exception, and on every rank through `trainer.save_checkpoint`'s barrier, which a rank that alone hit an
    error never reaches; this saves only on the SIGTERM that every rank agrees on.

    Args:
        filename: name of the file written in the run's checkpoint folder (`last`: what `--ckpt_path last`
            resumes from).
    """

    def __init__(self, filename: str = ModelCheckpoint.CHECKPOINT_NAME_LAST) -> None:
        self.filename = filename
        self._interrupted: str | None = None  # "validation" / "sanity check" while saving a stop inside one

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return
        checkpoint = next((c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)), None)
        if checkpoint is None or checkpoint.dirpath is None:
            return
        path = Path(checkpoint.dirpath) / f"{self.filename}{ModelCheckpoint.FILE_EXTENSION}"
        self._interrupted = (
            "sanity check" if trainer.sanity_checking else "validation" if trainer.validating else None
        )
        try:
            trainer.save_checkpoint(path)
        finally:
            interrupted, self._interrupted = self._interrupted, None
        again = f" (its interrupted {interrupted} runs again on resume)" if interrupted else ""
        rank_zero_info(
            f"SIGTERM: saved {path} at global step {trainer.global_step}{again}; resume with --ckpt_path last"
        )

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """In a save of a stop inside an evaluation: record that evaluation as not run (see the class doc)."""
        if self._interrupted is None:
            return
        try:
            progress = checkpoint["loops"]["fit_loop"]["epoch_loop.val_loop.batch_progress"]
            total, current = progress["total"], progress["current"]
        except (KeyError, TypeError):
            rank_zero_info(
                "SIGTERM: this Lightning's loop state is unknown; resuming skips the interrupted validation"
            )
            return
        for counts in (total, current):
            for name in counts:
                counts[name] = 0
        progress["is_last_batch"] = False
        if self._interrupted == "validation":
            # Lightning's "restarted mid-evaluation" state (a batch started, none processed): on resume it
            # runs this validation again, from its first batch, before the next training step
            total.update(ready=1, started=1)


class OutputTakenError(FileExistsError):
    """A prediction's output path is one of its inputs, a directory, or (without overwrite) an existing file."""


class JsonLinesPredictionWriter(BasePredictionWriter):
    """Writes one JSON object per video to `output`: {"path", "top5": [{"class", "index", "prob"}, ...]} for a
    predicted video, {"path", "error"} for one that failed to decode; ends with "predicted N of M videos".

    `output` None means `predictions.jsonl` in the run folder of the checkpoint the model was loaded from
    (`<run>/checkpoints/x.ckpt` -> `<run>/`), else in the Trainer's root folder. With `features`, the
    pre-logit embedding of every predicted video (mean over its views) also goes to `<output
    stem>.features.npy` (N x C, float32), with the N paths in the same order in `<output stem>.features.txt`,
    one per line, for retrieval or a linear probe (a path that holds a line break or starts with `"` is written
    as a JSON string; `read_feature_paths` reads the file). Every rank writes its own shard files when several
    processes predict (`predictions.rank1.jsonl`, ...).

    At setup, before any file is written, the writer refuses an output that is one of the prediction's inputs
    (the checkpoint, `data.predict_path` or a video it names; links count) and, unless `overwrite`, an output
    file that already exists.
    """

    # line breaks of str.splitlines() that json.dumps(ensure_ascii=False) leaves raw: escaped in every line
    _RAW_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})

    def __init__(self, output: str | None = None, features: bool = False, overwrite: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.output = output
        self.features = features
        self.overwrite = overwrite
        self._path: Path | None = None
        self._counts = [0, 0]  # predicted, failed (this rank)
        self._embeddings: list[torch.Tensor] = []
        self._embedded_paths: list[str] = []

    def path_for(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule | None = None,
        rank: int | None = None,
        checkpoint: str | Path | None = None,
    ) -> Path:
        """Where rank `rank` (default: this process's) writes its predictions; `checkpoint`: the model's, when
        `pl_module` is not loaded yet."""
        if self.output:
            base = Path(self.output)
        else:
            source = getattr(pl_module, "source_checkpoint", None) or checkpoint
            from src.trained import run_folder_of

            folder = run_folder_of(source) if source else Path(trainer.default_root_dir)
            base = folder / "predictions.jsonl"
        rank = trainer.global_rank if rank is None else rank
        if trainer.world_size > 1 and rank > 0:
            base = base.with_name(f"{base.stem}.rank{rank}{base.suffix}")
        return base

    def features_paths(self, predictions: Path | None = None) -> tuple[Path, Path]:
        """(embeddings .npy, paths .txt) beside `predictions` (default: this rank's predictions file)."""
        predictions = predictions or self._path
        assert predictions is not None
        stem = predictions.with_suffix("")
        return stem.with_name(f"{stem.name}.features.npy"), stem.with_name(f"{stem.name}.features.txt")

    def output_paths(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule | None = None,
        checkpoint: str | Path | None = None,
    ) -> list[Path]:
        """Every file this prediction writes, on every rank (each rank checks all, so all ranks decide alike)."""
        paths = []
        for rank in range(max(trainer.world_size, 1)):
            predictions = self.path_for(trainer, pl_module, rank, checkpoint)
            paths += [predictions, *(self.features_paths(predictions) if self.features else ())]
        return paths

    @staticmethod
    def input_paths(
        trainer: pl.Trainer,
        pl_module: pl.LightningModule | None = None,
        checkpoint: str | Path | None = None,
        datamodule: pl.LightningDataModule | None = None,
    ) -> dict[str, Path]:
        """What the prediction reads, by description: the checkpoint, `data.predict_path` and its videos (those
        once the DataModule is set up)."""
        inputs: dict[str, Path] = {}
        for source in (getattr(pl_module, "source_checkpoint", None), trainer.ckpt_path, checkpoint):
            if source:
                inputs[f"the checkpoint {source}"] = Path(source)
        datamodule = datamodule or getattr(trainer, "datamodule", None)
        predict_path = getattr(datamodule, "predict_path", None)
        if predict_path:
            inputs[f"data.predict_path {predict_path}"] = Path(predict_path)
            datasets = getattr(datamodule, "datasets", None)  # built by the DataModule's setup, before ours
            dataset = datasets.get("predict") if isinstance(datasets, dict) else None
            for entry in getattr(dataset, "entries", ()):
                inputs.setdefault(f"the video {entry.path} of data.predict_path", Path(entry.path))
        return inputs

    def check_outputs(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule | None = None,
        checkpoint: str | Path | None = None,
        datamodule: pl.LightningDataModule | None = None,
    ) -> None:
        """Raise OutputTakenError, naming the file and the fix, for an output that is an input (never allowed),
        a directory, or an existing file (allowed with `overwrite`). Only an existing output can be an input.

        Runs at setup; a caller that loads the model itself can run it before, with the `checkpoint` it will load
        and the `datamodule`."""
        existing = [path for path in self.output_paths(trainer, pl_module, checkpoint) if path.exists()]
        if not existing:
            return
        inputs = self.input_paths(trainer, pl_module, checkpoint, datamodule)
        identities = {file_identity(path): what for what, path in inputs.items()}
        for path in existing:
            what = identities.get(file_identity(path))
            if what is not None:
                raise OutputTakenError(
                    f"predict: the output {path} is {what}, an input of this prediction; name another file with "
                    "--predict_writer.output FILE.jsonl"
                )
            if path.is_dir():
                raise OutputTakenError(
                    f"predict: the output {path} is a directory; give a file name, e.g. --predict_writer.output "
                    f"{path / 'predictions.jsonl'}"
                )
            if not self.overwrite:
                raise OutputTakenError(
                    f"predict: {path} already exists; pass --predict_writer.overwrite true to replace it, or name "
                    "a new file with --predict_writer.output FILE.jsonl"
                )

    @staticmethod
    def feature_line(path: str) -> str:
        """`path` as one line of `.features.txt`: as is, or as an ASCII JSON string where it would not read back
        as one line (a line break of any kind) or would read as a JSON string (a leading `"`)."""
        return path if path.splitlines() == [path] and not path.startswith('"') else json.dumps(path)

    @staticmethod
    def read_feature_paths(file: str | Path) -> list[str]:
        """The video paths of a `.features.txt` file, one per row of its `.features.npy` array."""
        lines = Path(file).read_text(encoding="utf-8").split("\n")[:-1]
        return [json.loads(line) if line.startswith('"') else line for line in lines]

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Refuse what cannot be written before any model work: features of a model without them, an output
        that is an input or exists (`check_outputs`)."""
        if stage != "predict":
            return
        if self.features and not getattr(pl_module, "has_embeddings", False):
            raise ValueError(
                f"--predict_writer.features: {type(getattr(pl_module, 'backbone', pl_module)).__name__} "
                "has no pre-logit features"
            )
        self.check_outputs(trainer, pl_module)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.ckpt_path:  # Trainer.predict(ckpt_path=...) is known only after setup
            self.check_outputs(trainer, pl_module)
        self._path = self.path_for(trainer, pl_module)
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._path.write_text("")
        except OSError as err:
            raise OSError(
                f"cannot write predictions to {self._path} ({err.strerror}); choose another place with "
                "--predict_writer.output FILE.jsonl"
            ) from None
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
                f.write(json.dumps(record, ensure_ascii=False).translate(self._RAW_LINE_BREAKS) + "\n")
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
            lines = "".join(f"{self.feature_line(p)}\n" for p in self._embedded_paths)
            list_path.write_text(lines, encoding="utf-8")
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
