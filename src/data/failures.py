"""`DecodeFailureLog`: where every video that failed to decode is counted, judged and written down.

The datasets turn a failure into data (`decode_failures` in a train batch: substitutes used; `failed_index` /
`failed_reason` in an eval batch: videos skipped) and never raise for one bad file. This component, owned by
the DataModule and fed from its `on_before_batch_transfer`, is the only place that reads those fields:

- training: counts the substituted videos of an epoch on this rank and raises `DecodeFailureRateError` above
  `max_failure_rate` of the rank's shard (a run on broken data stops early, with the fix in the message);
- evaluation: counts, per val/test pass, the videos scored and skipped, and when the rank's shard is complete
  writes `failed_<split>[_rank<r>].txt` (`row<TAB>path<TAB>reason`) into the run folder and logs
  "evaluated N of M videos".

The model's metrics only sum the same batch fields over ranks for the logged `*/decode_failures` values.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("lightning.pytorch").getChild("data")


class DecodeFailureRateError(RuntimeError):
    """More videos failed to decode in one training epoch than `max_failure_rate` allows."""


@dataclass
class EvalReport:
    """What one evaluation pass saw on this rank: videos scored, videos in the shard, failures with reasons."""

    split: str
    evaluated: int = 0
    total: int = 0
    failed: list[tuple[int, str, str]] = field(default_factory=list)  # (row, path, reason)
    file: Path | None = None
    unit: str = "videos"  # what an item is: "videos", or "images" for the image DataModule

    def message(self) -> str:
        text = f"{self.split}: evaluated {self.evaluated} of {self.total} {self.unit}"
        if self.failed:
            text += f"; {len(self.failed)} failed to decode, listed in {self.file}"
        return text


class DecodeFailureLog:
    """Counts decode failures of one DataModule on one rank; see the module docstring for the policy.

    Args:
        max_failure_rate: the fraction of a rank's training shard allowed to fail in one epoch.
        index_root: the dataset's index folder, named in the error (`make doctor INDEX=...`).
        unit: what an item is in the messages ("videos", or "images").
        doctor: the command that finds and quarantines broken files, named in the error (default: the video
            doctor on `index_root`).
    """

    def __init__(
        self, max_failure_rate: float, index_root: Path, unit: str = "videos", doctor: str | None = None
    ) -> None:
        self.max_failure_rate = max_failure_rate
        self.index_root = index_root
        self.unit = unit
        self.doctor = doctor or f"make doctor INDEX={index_root}"
        self.folder: Path | None = None  # where failed_<split>.txt goes (the run folder; "." when unset)
        self.train_epoch = 0
        self.train_total = 0
        self._epoch = -1
        self._reports: dict[str, EvalReport] = {}
        self._report_key: dict[str, tuple] = {}

    # ------------------------------------------------------------------------------------ training
    def count_train(self, failures: int, epoch: int, rank: int, shard: int) -> None:
        """Add one train batch's substitutes; raise when the epoch's count passes the allowed rate."""
        if epoch != self._epoch:
            self._epoch, self.train_epoch = epoch, 0
        self.train_epoch += failures
        self.train_total += failures
        if self.train_epoch > self.max_failure_rate * shard:
            raise DecodeFailureRateError(
                f"{self.train_epoch} {self.unit} failed to decode in epoch {epoch} on rank {rank}, more than "
                f"max_failure_rate={self.max_failure_rate:g} of {shard} {self.unit} allows. Run `{self.doctor}` "
                "to find and quarantine broken files, or raise data.max_failure_rate."
            )

    @staticmethod
    def shard_size(num_videos: int, world_size: int) -> int:
        """Training videos one rank sees per epoch (the train sampler pads to equal shards)."""
        return math.ceil(num_videos / world_size)

    # ---------------------------------------------------------------------------------- evaluation
    def track_eval(
        self,
        split: str,
        batch: dict,
        path_of: Callable[[int], Path | str],
        shard_total: Callable[[], int],
        rank_world: tuple[int, int],
        key: tuple = (),
    ) -> None:
        """Record one eval batch of `split`; `key` tells passes apart (a new key starts a new report).

        `path_of(row)` names a failed row; `shard_total()` is the number of videos of this rank's shard. When
        the shard is complete the report is finished: the list written, the count logged (not for sanity
        checks, whose key starts with True).
        """
        if self._report_key.get(split) != key or split not in self._reports:
            self._reports[split] = EvalReport(split, total=shard_total(), unit=self.unit)
            self._report_key[split] = key
        report = self._reports[split]
        report.evaluated += len(batch["index"])
        rows = batch["failed_index"].tolist()
        for row, reason in zip(rows, batch.get("failed_reason", [""] * len(rows))):
            report.failed.append((row, str(path_of(row)), reason))
        if report.evaluated + len(report.failed) == report.total:
            self._finish(report, rank_world, sanity=bool(key and key[0]))

    def _finish(self, report: EvalReport, rank_world: tuple[int, int], sanity: bool) -> None:
        if sanity:
            return
        if report.failed:
            rank, world = rank_world
            # never `trainer.log_dir` here: it is a broadcast under DDP, and only ranks with failures get here
            folder = Path(self.folder or ".")
            folder.mkdir(parents=True, exist_ok=True)
            suffix = f"_rank{rank}" if world > 1 else ""
            report.file = folder / f"failed_{report.split}{suffix}.txt"
            lines = [f"{row}\t{path}\t{reason}\n" for row, path, reason in report.failed]
            report.file.write_text("".join(lines), encoding="utf-8")
        (log.warning if report.failed else log.info)(report.message())

    def report(self, split: str) -> EvalReport | None:
        """The last evaluation report of `split` ("val" or "test") on this rank, or None before any."""
        return self._reports.get(split)
