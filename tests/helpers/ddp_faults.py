"""The project's CLI with one fault injected on one rank, for the multi-process tests (tests/test_ddp.py).

`python -m tests.helpers.ddp_faults fit <src.cli arguments>` runs `src.cli` with a VideoClassifier subclass;
the environment picks the fault:
- STRUCTVIT_FAULT=nan: rank 1's logits are NaN at global step 1 (rank 0's loss stays finite);
- STRUCTVIT_FAULT=stall: after its first training epoch, rank 1 writes `stalled-rank1` into STRUCTVIT_FAULT_OUT
  and sleeps for STRUCTVIT_STALL_S seconds outside any collective; rank 0 writes `blocked-rank0` there and enters
  a barrier, where it waits for rank 1 (a hung or lost rank, as on a cluster). A test that sees both files knows
  that rank 0 is blocked in a collective (or about to be, with nothing left to run before it).
At the end of training every rank writes `rank<r>.json` into STRUCTVIT_FAULT_OUT: its global step, its count of
skipped steps and a checksum of its weights (DDP keeps the ranks' weights equal).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from src.cli import cli_main
from src.task import VideoClassifier

FAULT = os.environ.get("STRUCTVIT_FAULT", "")
FAULT_RANK = 1


class FaultyClassifier(VideoClassifier):
    """VideoClassifier with the fault of STRUCTVIT_FAULT on rank FAULT_RANK."""

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        logits = super().forward(video)
        if FAULT == "nan" and self.training and self.global_rank == FAULT_RANK and self.global_step == 1:
            logits = logits * float("nan")
        return logits

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        if FAULT != "stall" or self.current_epoch != 0:
            return
        out = Path(os.environ["STRUCTVIT_FAULT_OUT"])
        out.mkdir(parents=True, exist_ok=True)
        if self.global_rank == FAULT_RANK:
            print(f"rank {self.global_rank}: stalling", flush=True)
            (out / f"stalled-rank{self.global_rank}").touch()
            time.sleep(float(os.environ.get("STRUCTVIT_STALL_S", "3600")))
        else:
            (out / f"blocked-rank{self.global_rank}").touch()
            self.trainer.strategy.barrier("waiting for the stalled rank")

    def on_train_end(self) -> None:
        out = os.environ.get("STRUCTVIT_FAULT_OUT")
        if out:
            checksum = sum(float(p.detach().double().sum()) for p in self.backbone.parameters())
            record = {
                "global_step": self.global_step,
                "nonfinite_skips": self.nonfinite_skips,
                "checksum": checksum,
            }
            Path(out).mkdir(parents=True, exist_ok=True)
            (Path(out) / f"rank{self.global_rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    cli_main(model_class=FaultyClassifier)
