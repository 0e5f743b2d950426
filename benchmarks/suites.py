"""The benchmark suites: which shapes, models and videos each measures, and its time and memory budgets.

cpu   (make bench, < 15 min on 2 cores, plus ~6 min for the decoder comparison and 6-16 min, by the host's
      load, for the compile section, most of it inductor's first C++ build of each graph): every measurement at StructViT-S shapes;
      the reference path runs where its predicted cost fits the budgets, and every skipped case is listed with
      its prediction.
quick (make bench-quick, about 3 min on 2 cores): one small shape per section, to check the harness end to end.
gpu   (make bench-gpu): full-size shapes on CUDA in bf16 (flash attention), 16x224^2 batch-8 training steps.
target: only the headline case (16 frames, S = 1, D = 4, forward + backward, fast vs reference);
      one reference call takes minutes on 2 cores, so the reference path gets 1 timed call after 1 profiled one.
tiny  (tests): toy shapes that finish in seconds; the numbers mean nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from benchmarks.attention import STAGE3_8F, STAGE3_16F, STAGE4_8F, STAGE4_16F, LayerShape
from benchmarks.decoders import KINDS as DECODER_KINDS
from benchmarks.decoders import QUICK, QUICK_KINDS
from benchmarks.videos import KINETICS, SSV2, VideoKind

# Small, short versions of the two video kinds for the smoke test (same codecs and sampling).
TINY_KINETICS = replace(KINETICS, width=142, height=80, seconds=(3.0, 3.0))
TINY_SSV2 = replace(SSV2, width=106, height=60, seconds=(2.0, 2.0))


@dataclass(frozen=True)
class Suite:
    """Everything one run measures; see the module docstring for the named suites."""

    name: str
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    reps: int = 5
    warmup: int = 1
    # attention layers
    shapes: tuple[LayerShape, ...] = ()
    structure_dims: tuple[int, ...] = (4, 1, 8)
    strides: tuple[int, ...] = (1, 2)
    modes: tuple[str, ...] = ("forward", "train")
    # reference-path cut-offs: per case (all its calls) and in total for the run
    memory_budget_gib: float = 8.0
    reference_case_s: float = 60.0
    reference_total_s: float = 300.0
    structsa_s: float = float(
        "inf"
    )  # time budget of the attention layers (cases predicted to overrun are skipped)
    scaling_s: float = float("inf")  # time budget of the scaling section
    reference_reps: int | None = (
        None  # timed reference calls if not `reps` (the target suite: too slow for 5)
    )
    # scaling with tokens
    scaling_frames: tuple[int, ...] = ()
    scaling_modes: tuple[str, ...] = ("forward", "train")
    scaling_layer: LayerShape = STAGE3_8F  # channels, heads and the per-frame (H, W) token grid
    # whole models: (batch, frames, size)
    model_input: tuple[int, int, int] | None = None
    model_bf16: bool = False
    model_names: tuple[str, ...] = ("uniformer_s", "structvit_s S=2", "structvit_s S=1")
    model_reps: int = 5
    model_warmup: int = 2
    # data pipeline
    video_kinds: tuple[VideoKind, ...] = ()
    videos_per_kind: int = 6
    backends: tuple[str, ...] = ("decord", "pyav")  # the first: the default, used for the worker rows
    loader_workers: tuple[int, ...] = (1, 2)
    pipeline_reps: int = 5
    # the PyTorchVideo comparison (benchmarks/pytorchvideo_compare.py): clips per pass and kind; a smaller
    # clip (crop side, frames) for the tiny suite only, None keeps the dataset config's recipe
    pytorchvideo_clips: int = 6
    pytorchvideo_clip: tuple[int, int] | None = None
    # the fair decoder comparison (benchmarks/decoders.py): file sets, files per set, timed passes, warm-up
    # files and a smaller clip (crop side, frames; None keeps the dataset config's recipe)
    decoder_kinds: tuple[VideoKind, ...] = ()
    decoder_files: int = 64
    decoder_passes: int = 5
    decoder_warmup_files: int = 4
    decoder_clip: tuple[int, int] | None = None
    # torch.compile vs eager (benchmarks/compile_speed.py): (batch, frames, size) or None (section off), the
    # models (labels of compile_speed.CASES) and the timed calls per side
    compile_input: tuple[int, int, int] | None = None
    compile_models: tuple[str, ...] = ("structvit_xs", "structvit_s", "uniformer_s")
    compile_reps: int = 5
    compile_backend: str = "inductor"
    notes: tuple[str, ...] = field(default_factory=tuple)


SUITES: dict[str, Suite] = {
    "cpu": Suite(
        name="cpu",
        shapes=(STAGE4_16F, STAGE3_8F, STAGE3_16F),
        reference_case_s=60.0,
        reference_total_s=240.0,
        structsa_s=390.0,
        scaling_frames=(1, 2, 4, 8, 16, 32),
        scaling_s=150.0,
        model_input=(2, 8, 112),
        model_warmup=1,
        video_kinds=(KINETICS, SSV2),
        videos_per_kind=4,
        decoder_kinds=DECODER_KINDS,
        compile_input=(2, 8, 112),
    ),
    "quick": Suite(
        name="quick",
        shapes=(STAGE4_8F,),
        structure_dims=(4,),
        reference_case_s=20.0,
        reference_total_s=45.0,
        scaling_frames=(1, 2, 4),
        scaling_modes=("forward",),
        model_input=(1, 4, 64),
        model_names=("uniformer_s", "structvit_s S=2"),
        model_warmup=1,
        video_kinds=(KINETICS, SSV2),
        videos_per_kind=2,
        loader_workers=(1,),
        decoder_kinds=QUICK_KINDS,
        decoder_files=QUICK["files"],
        decoder_passes=QUICK["passes"],
        decoder_warmup_files=QUICK["warmup_files"],
        decoder_clip=QUICK["clip"],
        compile_input=(2, 4, 32),
        compile_models=("structvit_xs",),
        compile_reps=2,
        compile_backend="aot_eager",  # the harness end to end; inductor's C++ build takes minutes on 2 cores
    ),
    "gpu": Suite(
        name="gpu",
        device="cuda",
        dtype=torch.bfloat16,
        reps=10,
        warmup=3,
        shapes=(STAGE4_16F, STAGE3_8F, STAGE3_16F),
        memory_budget_gib=40.0,
        reference_case_s=120.0,
        reference_total_s=600.0,
        scaling_frames=(1, 2, 4, 8, 16, 32, 64),
        model_input=(8, 16, 224),
        model_bf16=True,
        model_reps=10,
        video_kinds=(KINETICS, SSV2),
        videos_per_kind=16,
        loader_workers=(1, 2, 4, 8, 16),
        compile_input=(8, 16, 224),
    ),
    "target": Suite(
        name="target",
        shapes=(STAGE3_16F,),
        structure_dims=(4,),
        strides=(1,),
        modes=("train",),
        memory_budget_gib=14.0,
        reference_case_s=1200.0,
        reference_total_s=1200.0,
        reference_reps=1,
    ),
    "tiny": Suite(
        name="tiny",
        shapes=(LayerShape("tiny (N=16)", 64, 1, (2, 2, 4)),),
        structure_dims=(2,),
        strides=(1,),
        reps=1,
        warmup=0,
        reference_case_s=30.0,
        reference_total_s=30.0,
        scaling_frames=(1, 2),
        scaling_modes=("forward",),
        scaling_layer=LayerShape("tiny", 64, 1, (1, 2, 4)),
        model_input=(2, 2, 32),  # batch 2: the head BatchNorm needs more than one value per channel
        model_names=("uniformer_s", "structvit_s S=2"),
        model_reps=1,
        model_warmup=1,
        video_kinds=(TINY_KINETICS, TINY_SSV2),
        videos_per_kind=1,
        loader_workers=(1,),
        pipeline_reps=1,
        pytorchvideo_clips=1,
        pytorchvideo_clip=(32, 4),
        decoder_kinds=QUICK_KINDS,
        decoder_files=2,
        decoder_passes=1,
        decoder_warmup_files=1,
        decoder_clip=(32, 4),
    ),
}
