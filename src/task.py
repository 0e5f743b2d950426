"""VideoClassifier: the LightningModule where the backbone and the data meet (loss, mixing, optimiser,
multi-view metrics, test reports, prediction)."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from jsonargparse.typing import (
    ClosedUnitInterval,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    restricted_number_type,
)
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix

from src.losses import MixupCutmix, smooth_one_hot, soft_target_cross_entropy
from src.metrics import (
    EpochMetrics,
    MultiViewMetrics,
    average_views,
    confusion_figure,
    write_confusion_csv,
    write_per_class_csv,
)
from src.optim import param_groups_weight_decay, warmup_cosine_scheduler

# Epoch values are reduced over all ranks by `EpochMetrics.compute` in the epoch-end hooks (every rank, same
# order) and then logged as plain tensors without `sync_dist`: Lightning's advice to sync them does not apply.
warnings.filterwarnings(
    "ignore", message=r"It is recommended to use `self\.log\('(train|val|test)/", category=PossibleUserWarning
)


# Lightning's own tree helper (lightning.pytorch.utilities._pytree) trips torch's LeafSpec deprecation on every
# training and prediction step; nothing in this project can act on it.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


class NonFiniteLossError(RuntimeError):
    """Raised when the loss stayed NaN/inf for too many consecutive steps."""


# Checkpoint key of the weights a run started from: {"init_from": the value given, "file": the file loaded,
# "sha256": its SHA-256}; written by `on_save_checkpoint`, read by `src.trained.read_card`.
INIT_SOURCE_KEY = "init_source"


class ConfigError(ValueError):
    """A configuration value that cannot work (a missing `init_from` file, weights of another architecture, a
    checkpoint of other classes); the message names the key, the value and the fix. `python -m src.cli` prints it
    as one line, without a traceback."""


# Adam's beta: 0 <= beta < 1 (torch.optim refuses 1 only when the first step is taken)
AdamBeta = restricted_number_type("AdamBeta", float, [(">=", 0), ("<", 1)])


def plain(value: Any) -> Any:
    """`value` with int/float/str subclasses (jsonargparse's PositiveInt, ClosedUnitInterval, ...) as the built-in
    type, in lists, tuples and dicts too: checkpoints store hyper-parameters, and the safe loader refuses any class
    it does not know."""
    if value is None or isinstance(value, bool):
        return value
    for base in (int, float, str):
        if isinstance(value, base):
            return base(value)
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value) if type(value) in (list, tuple) else value
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def init_from_problem(source: str | Path) -> str | None:
    """Why `source` cannot be a `model.init_from` value (the one-line error), or None when it is a file or names
    published weights (a `src.weights` catalogue name or hf:// source: downloaded when the run loads it, in
    `setup`, not at parse time)."""
    from src.weights import WeightsError, is_published, looks_like_name, parse_hf, unknown_name_message

    path = Path(source)
    if path.is_file():
        return None
    try:
        if str(source).startswith("hf://"):
            parse_hf(str(source))
            return None
        if is_published(str(source)):
            return None
    except WeightsError as err:  # a malformed hf:// source or STRUCTVIT_WEIGHTS_CATALOGUE
        return f"model.init_from: {err}"
    if not path.exists() and looks_like_name(str(source)):
        return f"model.init_from: {unknown_name_message(str(source))}"
    what = (
        "is a directory" if path.is_dir() else "is not a regular file" if path.exists() else "does not exist"
    )
    return (
        f"model.init_from: no checkpoint at {source} (it {what}); give --model.init_from the .pth/.ckpt file to "
        "start from, or null to train from scratch"
    )


# The fields are the options of the registered networks (`src.models.model_options`); tests/models/
# test_structvit.py fails when the two disagree.
@dataclass
class BackboneConfig:
    """Which backbone to build and its options (`src.models.list_models()` names the variants).

    The options are the networks' own constructor arguments (`src.models.model_options(variant)`); null
    keeps the variant's value.

    Args:
        variant: the network, e.g. structvit_s, structvit_xs, uniformer_s, x3d_m, pure_attention_tiny.
        structure_dim: D of StructSA, the number of correlation structures (0 = plain attention); null keeps
            the variant's own value.
        kv_stride: S, the spatial stride of StructSA's keys and values (1 or 2); null: the variant's.
        drop_path_rate: stochastic depth at the last block (linear over depth); null: the variant's.
        checkpoint_stages: stages (1..4) run under activation checkpointing ([]: none), memory for compute.
        attn_fp32: compute the attention softmax in float32 under mixed precision.
        stem: "patch" (UniFormer's 4x4 patchify) or "conv" (two 3x3x3 convolutions, structvit_xs's).
        struct_init: how StructSA's key/value filters start when training from scratch: "random" (the
            default; docs/structsa-init.md compares them), "shifted" (D distinct delta taps), "noisy_identity", or
            "identity" (plain attention exactly).
        pos_embed: learned position embedding of pure_attention_tiny ("none" / "learned"); others: null.
        num_frames: input frames, for the models whose heads or embeddings depend on it (x3d_m, mvit_b_16x4,
            pure_attention_tiny); others: null.
        crop_size: input side, for the same models; others: null.
        image: build the 2-D image network of the variant (the ImageNet stage, configs/imagenet.yaml; its
            batches are one-frame clips); null or false: the video network.
    """

    # bounds as types: a value out of range is a parse error naming the key, before a run folder exists
    variant: str = "structvit_s"
    structure_dim: NonNegativeInt | None = None
    kv_stride: PositiveInt | None = None
    drop_path_rate: ClosedUnitInterval | None = None
    checkpoint_stages: list[Literal[1, 2, 3, 4]] | None = None
    attn_fp32: bool | None = None
    stem: Literal["patch", "conv"] | None = None
    struct_init: Literal["shifted", "random", "noisy_identity", "identity"] | None = None
    pos_embed: Literal["none", "learned"] | None = None
    num_frames: PositiveInt | None = None
    crop_size: PositiveInt | None = None
    image: bool | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            setattr(self, f.name, plain(getattr(self, f.name)))

    def overrides(self) -> dict[str, Any]:
        """The options that were set, as keyword arguments of `build_model`."""
        return {k: v for k, v in asdict(self).items() if k != "variant" and v is not None}


class VideoClassifier(pl.LightningModule):
    """Video classification with a StructViT (or baseline) backbone at `self.backbone`.

    Training: MixUp/CutMix + label smoothing, soft-target cross-entropy, AdamW with per-step warmup and
    cosine decay, a guard that skips steps with a non-finite loss. Evaluation: every view of a video is
    scored, single-view and all-view (mean softmax) top-1 / top-5 / mean-class accuracy are logged; testing
    also writes the confusion matrix and per-class accuracy. Prediction returns the top-5 classes per video.

    Args:
        backbone: the network and its options.
        num_classes: classes of the classifier (linked from the data's index).
        class_names: their names (linked from the data's classes.txt); stored in every checkpoint.
        data_fingerprint: hash of the index the model is trained on (linked from the data).
        init_from: weights to start from (a checkpoint of this project or an official UniFormer .pth; 2-D
            image weights are inflated to 3-D); null trains from scratch. Must fit the backbone.
        init_struct_filters: how the StructSA filters start when init_from has none (a plain-attention
            checkpoint): "identity" reproduces its function exactly.
        init_inflation: how init_from's 2-D convolution kernels (an image checkpoint) become 3-D: "average"
            (UniFormer's and I3D's: the kernel repeated over time and divided by its length) or "centre" (the
            kernel at the central frame, zeros elsewhere: a static clip then gives the image model's logits).
            An image StructViT's StructSA key/value filters always take the centre frame (docs/imagenet.md).
        lr: peak learning rate (reached after the warmup); with lr_batch set, the rate for that global batch.
        lr_batch: the global batch `lr` is given for; the run then uses lr x (its global batch) / lr_batch (the
            linear scaling rule of UniFormer's and DeiT's image recipes: lr 5e-4 per 512 images). null: `lr`
            as given, whatever the batch (the video recipes).
        min_lr: learning rate at the end of the cosine decay.
        warmup_start_lr: learning rate at the first step of the linear warmup.
        warmup_epochs: length of the warmup, in epochs (fractions allowed; converted to steps).
        weight_decay: AdamW decoupled weight decay (none on biases, norms and 1-D parameters).
        betas: AdamW's (beta1, beta2).
        label_smoothing: mass spread uniformly over the classes of each target.
        mixup_alpha: Beta(alpha, alpha) of MixUp; 0 switches it off.
        cutmix_alpha: Beta(alpha, alpha) of CutMix; 0 switches it off.
        mixup_prob: probability that a batch is mixed at all.
        mixup_switch_prob: probability of CutMix rather than MixUp when both are on.
        max_nonfinite_steps: consecutive steps with a NaN/inf loss (skipped) before the run stops.
        ignore_class_mismatch: accept a checkpoint whose class list differs from the index's (not stored in
            checkpoints).
        compile: run the backbone through `torch.compile` in fit, validate, test and predict (docs/training.md,
            "Compilation"); the first steps of each stage pay the compile time. Not stored in checkpoints (their
            weights keep the plain names): a resume or an evaluation compiles when asked again.
        compile_mode: torch.compile's mode: "default", "reduce-overhead" (CUDA graphs), "max-autotune" or
            "max-autotune-no-cudagraphs" (longer compiles, faster kernels).
        compile_dynamic: torch.compile's `dynamic`: "auto" (its None) compiles for the first shape and marks a
            dimension dynamic once it changes (training and evaluation batches differ), "dynamic" (True):
            dynamic from the start, "static" (False): a new compile for every new shape.
        compile_backend: torch.compile's backend: "inductor" (generated kernels: the speed-up), or, to tell a
            compiler problem from a model one, "aot_eager" (graphs traced with their backward, run by eager
            kernels) or "eager" (graph capture only); "cudagraphs" replays CUDA graphs of eager kernels.
    """

    def __init__(
        self,
        backbone: BackboneConfig = BackboneConfig(),
        num_classes: PositiveInt = 400,
        class_names: list[str] | None = None,
        data_fingerprint: str = "",
        init_from: str | None = None,
        init_struct_filters: Literal["identity", "shifted", "random", "noisy_identity"] = "identity",
        init_inflation: Literal["average", "centre"] = "average",
        lr: PositiveFloat = 2e-4,
        lr_batch: PositiveInt | None = None,
        min_lr: NonNegativeFloat = 1e-6,
        warmup_start_lr: NonNegativeFloat = 1e-6,
        warmup_epochs: NonNegativeFloat = 10.0,
        weight_decay: NonNegativeFloat = 0.05,
        betas: tuple[AdamBeta, AdamBeta] = (0.9, 0.999),
        label_smoothing: ClosedUnitInterval = 0.1,
        mixup_alpha: NonNegativeFloat = 0.8,
        cutmix_alpha: NonNegativeFloat = 1.0,
        mixup_prob: ClosedUnitInterval = 1.0,
        mixup_switch_prob: ClosedUnitInterval = 0.5,
        max_nonfinite_steps: PositiveInt = 10,
        ignore_class_mismatch: bool = False,
        compile: bool = False,
        compile_mode: Literal[
            "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"
        ] = "default",
        compile_dynamic: Literal["auto", "dynamic", "static"] = "auto",
        compile_backend: Literal["inductor", "aot_eager", "eager", "cudagraphs"] = "inductor",
    ) -> None:
        super().__init__()
        if isinstance(backbone, dict):
            backbone = BackboneConfig(**backbone)
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names given for num_classes={num_classes}")
        # not hyper-parameters of the model: kept out of checkpoints, whose hparams LightningCLI applies over
        # the command line with --ckpt_path (a saved False would silently undo --model.ignore_class_mismatch,
        # a saved compile=True would compile a resume or an evaluation that did not ask for it)
        self.save_hyperparameters(
            ignore=["ignore_class_mismatch", "compile", "compile_mode", "compile_dynamic", "compile_backend"]
        )
        for key in list(self.hparams):
            self.hparams[key] = plain(self.hparams[key])
        self.ignore_class_mismatch = ignore_class_mismatch
        # torch.compile's keyword arguments, None: eager (not `self.compile`: that is nn.Module.compile); a
        # mode is inductor's (other backends refuse one)
        mode = {"mode": compile_mode} if compile_backend == "inductor" else {}
        dynamic = {"auto": None, "dynamic": True, "static": False}[compile_dynamic]
        self.compile_options: dict[str, Any] | None = (
            {"backend": compile_backend, "dynamic": dynamic, **mode} if compile else None
        )
        self._backbone_compiled = False
        self._compiled_features: Any = None  # the compiled `backbone.forward_features`, for predict_step
        self.hparams["backbone"] = asdict(backbone)  # plain dict: readable in hparams.yaml and checkpoints

        from src.models import build_model

        self.backbone = build_model(backbone.variant, num_classes=num_classes, **backbone.overrides())
        self.class_names = (
            list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        )
        self.mixing = MixupCutmix(
            num_classes,
            mixup_alpha=mixup_alpha,
            cutmix_alpha=cutmix_alpha,
            prob=mixup_prob,
            switch_prob=mixup_switch_prob,
            label_smoothing=label_smoothing,
        )
        # Metric synchronisation (see docs/distributed.md): every epoch value is a torchmetrics state reduced by
        # `compute()` in this module's epoch-end hooks, which all ranks run at the same point; nothing is logged
        # with sync_dist, so a rank-0-only callback (the progress bar) reading the logged metrics never enters
        # a collective.
        self.train_metrics = EpochMetrics(num_classes)
        self.val_metrics = MultiViewMetrics(num_classes)
        self.test_metrics = MultiViewMetrics(num_classes)
        self.test_confusion = MulticlassConfusionMatrix(num_classes)
        self.consecutive_nonfinite = 0
        self.nonfinite_skips = 0
        self._drop_gradients = False
        self.run_dir: Path | None = None  # the run folder, asked once in setup (a collective under DDP)
        self.eval_protocol = (
            None  # set by src.trained.load_trained: the protocol the checkpoint was saved with
        )
        self.source_checkpoint: Path | None = None  # the file load_trained read, if any

    # ----------------------------------------------------------------------------------------- setup
    def configure_model(self) -> None:
        """Compile the backbone when `compile` is on. Lightning calls this hook before fit, validate, test and
        predict, before a strategy wraps the module (DDP then wraps a module whose backbone is compiled).

        `nn.Module.compile` compiles the backbone's call in place, so its parameters and the checkpoint keep
        their plain names (no `_orig_mod.`); prediction reads the pre-logit features through a compiled
        `forward_features`, because it calls that method rather than the module."""
        if self.compile_options is None or self._backbone_compiled:
            return  # eager, or compiled by an earlier stage of the same process
        self.backbone.compile(**self.compile_options)
        self._backbone_compiled = True
        if self.has_embeddings:
            self._compiled_features = torch.compile(self.backbone.forward_features, **self.compile_options)

    def setup(self, stage: str) -> None:
        """Point the DataModule's failure lists at the run folder; load `init_from` when fitting from scratch.

        A resume never reads `init_from` (its checkpoint holds every weight; the file may be gone). The signal is
        `trainer.ckpt_path`, which must be set before `fit` starts: Lightning sets it from `fit(ckpt_path=...)`
        only after this hook, so `src.cli` sets `trainer.ckpt_path` itself, and so must a Python caller."""
        trainer = self.trainer
        datamodule = getattr(trainer, "datamodule", None)
        log_dir = trainer.log_dir or trainer.default_root_dir  # a broadcast under DDP: every rank runs setup
        self.run_dir = Path(log_dir)
        if datamodule is not None and hasattr(datamodule, "failures"):
            datamodule.failures.folder = Path(log_dir)
        if stage == "fit" and self.hparams.init_from and trainer.ckpt_path is None:
            self.load_initial_weights(self.hparams.init_from)

    def load_initial_weights(self, source: str) -> None:
        """Load a UniFormer / StructViT checkpoint into the backbone through the model package's loader: a file,
        or published weights by name / hf:// source (`src.weights`, fetched into the Hugging Face cache first).
        What was loaded (the value, the file, its SHA-256) is kept in `init_source` and saved in checkpoints."""
        problem = init_from_problem(source)
        if problem:
            raise ConfigError(problem)
        from src.models.checkpoints import CheckpointFileError, load_checkpoint_file, load_pretrained
        from src.weights import WeightsError, fetch, sha256_of

        entry = None
        if Path(source).is_file():
            file, digest = Path(source), sha256_of(source)
        else:
            try:
                fetched = fetch(source)
            except WeightsError as err:
                raise ConfigError(f"model.init_from {source}: {err}") from None
            file, digest, entry = fetched.path, fetched.sha256, fetched.entry
        try:
            payload = load_checkpoint_file(file)
        except CheckpointFileError as err:
            raise ConfigError(f"model.init_from: {err}") from None
        # a checkpoint of this project names its classes: its head rows are then matched to this run's classes
        # by name (same names in another order, or a subset), never loaded as they are because the count agrees;
        # so do published weights whose class order is known, and a head whose order is unknown is not used
        trained = payload.get("hyper_parameters") if isinstance(payload, dict) else None
        source_classes = trained.get("class_names") if isinstance(trained, dict) else None
        if entry is not None and entry.classes:
            source_classes = entry.classes
        report = load_pretrained(
            self.backbone,
            payload,
            target_classes=self.class_names,
            source_classes=list(source_classes) if source_classes else None,
            struct_init=self.hparams.init_struct_filters,
            temporal_inflation=self.hparams.get("init_inflation", "average"),
            use_head=entry is None or entry.classes is not None,
            head_note=entry.head_note if entry is not None else "",
        )
        self.init_source = {"init_from": str(source), "file": str(file), "sha256": digest}
        if (
            not report.clean
        ):  # e.g. StructViT-S weights under a StructViT-B config: a partial load trains wrong
            backbone = trained.get("backbone") if isinstance(trained, dict) else None
            theirs = (
                f"a {backbone.get('variant')} checkpoint" if isinstance(backbone, dict) else "its weights"
            )
            first = [*report.missing[:2], *report.unexpected[:2], *(m[0] for m in report.mismatched[:2])]
            raise ConfigError(
                f"model.init_from {source}: {theirs} does not fit this run's {self.hparams.backbone['variant']} "
                f"({self.hparams.backbone}): {len(report.missing)} tensors missing from the file, "
                f"{len(report.unexpected)} not in the model, {len(report.mismatched)} of another shape (e.g. "
                f"{', '.join(first)}). Give weights of the same architecture with --model.init_from, or null to "
                "train from scratch."
            )
        rank_zero_info(f"init_from {source}:\n{report}")
        log_dir = self.run_dir
        if self.trainer.is_global_zero and log_dir:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            (Path(log_dir) / "init_report.txt").write_text(
                f"{source}\n{file} (SHA-256 {digest})\n{report}\n{report.inflation_details()}"
            )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint whose class list differs from this run's (the index's classes.txt): its head
        would score every video against the wrong names. `model.ignore_class_mismatch` overrides. A resume keeps
        the checkpoint's record of the weights the run started from."""
        self.init_source = checkpoint.get(INIT_SOURCE_KEY, getattr(self, "init_source", None))
        trained = (checkpoint.get("hyper_parameters") or {}).get("class_names")
        if trained is None or self.ignore_class_mismatch:
            return
        trained, current = [str(c) for c in trained], list(self.class_names)
        if trained == current:
            return
        first = next(
            (i for i, (a, b) in enumerate(zip(trained, current)) if a != b), min(len(trained), len(current))
        )
        mine = repr(trained[first]) if first < len(trained) else "(no class)"
        theirs = repr(current[first]) if first < len(current) else "(no class)"
        raise ConfigError(
            f"the checkpoint's class list differs from this run's ({len(trained)} vs {len(current)} classes from "
            f"the index's classes.txt): first difference at label {first}: checkpoint {mine}, index {theirs}. "
            "Per-class results would be wrong. Use the index the checkpoint was trained on, or pass "
            "--model.ignore_class_mismatch true if the difference is intended (e.g. renamed classes)."
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the DataModule's evaluation protocol, so that the file alone can predict and export
        (`src.trained.load_trained`); a checkpoint loaded that way carries its own protocol forward."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        protocol = getattr(datamodule, "eval_protocol", None) or self.eval_protocol
        if protocol is not None:
            from src.data.protocol import CHECKPOINT_KEY

            checkpoint[CHECKPOINT_KEY] = protocol.to_dict()
        if getattr(self, "init_source", None):  # where the run's starting weights came from (`src.trained`)
            checkpoint[INIT_SOURCE_KEY] = dict(self.init_source)

    def global_batch(self) -> int | None:
        """Samples per optimiser step over all processes (None without a DataModule that states its batch)."""
        trainer = self.trainer
        batch = getattr(getattr(trainer, "datamodule", None), "batch_size", None)
        return None if batch is None else batch * trainer.accumulate_grad_batches * trainer.world_size

    def peak_lr(self) -> float:
        """The learning rate after the warmup: `lr`, scaled to the global batch when `lr_batch` is set."""
        lr, per = self.hparams.lr, self.hparams.get("lr_batch")
        effective = self.global_batch() if per else None
        return lr * effective / per if effective else lr

    def on_fit_start(self) -> None:
        """Print the effective global batch and the learning rate: the two numbers a recipe depends on."""
        trainer = self.trainer
        batch = getattr(getattr(trainer, "datamodule", None), "batch_size", None)
        if batch is not None:
            effective = self.global_batch()
            scaled = (
                f" (= {self.hparams.lr:g} x {effective} / {self.hparams.lr_batch}, scaled to the global batch)"
                if self.hparams.get("lr_batch")
                else ""
            )
            rank_zero_info(
                f"effective global batch {effective} = {batch} per device x {trainer.accumulate_grad_batches} "
                f"accumulation x {trainer.world_size} processes; lr {self.peak_lr():g}{scaled} "
                f"(warmup {self.hparams.warmup_epochs:g} epochs from {self.hparams.warmup_start_lr:g}, "
                f"cosine to {self.hparams.min_lr:g}), weight decay {self.hparams.weight_decay:g}"
            )

    # -------------------------------------------------------------------------------------- forward
    def forward(self, video: Tensor) -> Tensor:
        """(B, 3, T, H, W) clips -> (B, K) logits."""
        return self.backbone(video)

    @property
    def has_embeddings(self) -> bool:
        """Whether the backbone exposes pre-logit features (StructViT, UniFormer, pure attention do)."""
        return hasattr(self.backbone, "forward_features") and hasattr(self.backbone, "forward_head")

    def embed_and_classify(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 3, T, H, W) clips -> ((B, C) pre-logit embeddings, (B, K) logits), one forward pass."""
        if not self.has_embeddings:
            raise TypeError(
                f"{type(self.backbone).__name__} has no pre-logit features (forward_features / forward_head)"
            )
        features = (self._compiled_features or self.backbone.forward_features)(video)
        return self.backbone.forward_head(features, pre_logits=True), self.backbone.forward_head(features)

    # ------------------------------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Mix, forward, soft-target CE. A non-finite loss (on any rank) skips the optimiser step on every rank.

        The skip keeps DDP's collectives aligned: the backward still runs on every rank (DDP reduces the same
        gradient buckets everywhere; Lightning forbids returning None under DDP), and `on_before_optimizer_step`
        then drops the gradients, so AdamW leaves every weight and its own state untouched. The learning-rate
        schedule and `global_step` advance as for any step (with gradient accumulation, the whole accumulated
        step is dropped).
        """
        video, labels = batch["video"], batch["label"]
        if self.mixing.enabled:
            video, targets = self.mixing(video, labels)
        else:
            targets = smooth_one_hot(labels, self.hparams.num_classes, self.hparams.label_smoothing)
        logits = self(video)
        loss = soft_target_cross_entropy(logits, targets)
        batch_size = labels.shape[0]
        self.train_metrics.record_failures(int(batch.get("decode_failures", 0)))
        finite = bool(torch.isfinite(loss))
        if self.trainer.world_size > 1:
            # a collective on every rank at every step: all ranks skip together, or DDP's gradient sync hangs
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            self._skip_nonfinite(loss, batch_idx)
            self._drop_gradients = True
            return loss
        self.consecutive_nonfinite = 0
        self.train_metrics.update(logits.detach(), labels, loss)
        # step values are this rank's own (no sync_dist): the epoch values come from `train_metrics`
        self.log(
            "train/loss_step",
            loss.detach(),
            on_step=True,
            on_epoch=False,
            prog_bar=True,
            batch_size=batch_size,
        )
        self.log("train/nonfinite_skips", float(self.nonfinite_skips), on_step=True, on_epoch=False)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Drop the gradients of a step whose loss was not finite: the optimiser skips parameters with none."""
        if self._drop_gradients:
            optimizer.zero_grad(set_to_none=True)
            self._drop_gradients = False

    def _skip_nonfinite(self, loss: Tensor, batch_idx: int) -> None:
        self.consecutive_nonfinite += 1
        self.nonfinite_skips += 1
        self.log("train/nonfinite_skips", float(self.nonfinite_skips), on_step=True, on_epoch=False)
        rank_zero_info(
            f"non-finite loss at global step {self.global_step}, batch {batch_idx} (rank {self.global_rank}'s loss: "
            f"{loss.item()}; a rank's NaN/inf skips all): optimiser step skipped "
            f"({self.consecutive_nonfinite} in a row, {self.nonfinite_skips} in total)"
        )
        if self.consecutive_nonfinite >= self.hparams.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"the loss was NaN/inf for {self.consecutive_nonfinite} consecutive steps (model.max_nonfinite_steps="
                f"{self.hparams.max_nonfinite_steps}); stopping. Lower model.lr, keep trainer.gradient_clip_val, "
                "try model.backbone.attn_fp32=true under mixed precision, or check the data."
            )
        return None

    def on_train_epoch_end(self) -> None:
        """Reduce the epoch's training metrics over all ranks (every rank runs this hook) and log them."""
        values = self.train_metrics.compute()
        self.train_metrics.reset()
        values["loss_epoch"] = values.pop("loss")
        values.pop("samples")
        for name, value in values.items():
            self.log(f"train/{name}", value, on_step=False, on_epoch=True)

    # ----------------------------------------------------------------------------------- evaluation
    def _eval_step(self, batch: dict[str, Tensor], metrics: MultiViewMetrics, stage: str) -> Tensor | None:
        video, labels = batch["video"], batch["label"]
        failed = batch.get("failed_index")
        if failed is not None:
            metrics.record_failures(failed.numel())
        if video.shape[0] == 0:  # every video of this batch failed to decode (or the rank's shard is empty)
            return None
        if video.dim() != 6:
            raise ValueError(f"{stage} batches must hold video (B, V, 3, T, H, W), got {tuple(video.shape)}")
        num_views = video.shape[1]
        logits = self(video.flatten(0, 1))
        view_probs, video_probs = average_views(logits, num_views)
        loss = F.nll_loss(video_probs.clamp_min(1e-12).log(), labels)
        metrics.update(view_probs, video_probs, labels, loss)
        return video_probs

    def _log_eval_metrics(self, metrics: MultiViewMetrics, stage: str) -> dict[str, Tensor]:
        """Reduce the stage's metrics over all ranks (every rank runs the epoch-end hook) and log them."""
        values = metrics.compute()
        metrics.reset()
        if values["videos"] == 0:
            values.pop("loss")  # nothing was scored on any rank: no loss to report
        for name, value in values.items():
            self.log(f"{stage}/{name}", value, on_step=False, on_epoch=True, prog_bar=name == "top1")
        return values

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_eval_metrics(self.val_metrics, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        video_probs = self._eval_step(batch, self.test_metrics, "test")
        if video_probs is not None:
            self.test_confusion.update(video_probs.argmax(dim=-1), batch["label"])

    def on_test_epoch_end(self) -> None:
        self._log_eval_metrics(self.test_metrics, "test")
        matrix = self.test_confusion.compute().cpu()  # a collective: every rank runs this hook
        self.test_confusion.reset()
        out_dir = self.run_dir or Path(self.trainer.default_root_dir)
        if not self.trainer.is_global_zero:
            return
        write_confusion_csv(out_dir / "confusion_matrix.csv", matrix, self.class_names)
        write_per_class_csv(out_dir / "per_class_accuracy.csv", matrix, self.class_names)
        figure = confusion_figure(matrix, self.class_names)
        for logger in self.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_figure"):
                experiment.add_figure("test/confusion_matrix", figure, global_step=self.global_step)
        import matplotlib.pyplot as plt

        figure.savefig(out_dir / "confusion_matrix.png", dpi=100)
        plt.close(figure)
        rank_zero_info(
            f"test reports written to {out_dir} (confusion_matrix.csv/.png, per_class_accuracy.csv)"
        )

    # ----------------------------------------------------------------------------------- prediction
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """Mean softmax over the test views of each video -> [{"path", "top5": [{"class", "prob"}], "embedding"}],
        plus {"path", "error"} for each video of the batch that failed to decode (nothing is lost silently).

        `embedding` (a float32 CPU tensor, the pre-logit features averaged over the views) is there when the
        backbone has pre-logit features; the prediction writer takes it out of the JSON lines."""
        video = batch["video"]
        records = []
        if video.shape[0] > 0:  # a batch of videos that all failed to decode has none to score
            num_views = video.shape[1]
            embeddings = None
            if self.has_embeddings:
                features, logits = self.embed_and_classify(video.flatten(0, 1))
                embeddings = features.float().unflatten(0, (-1, num_views)).mean(1).cpu()
            else:
                logits = self(video.flatten(0, 1))
            _, video_probs = average_views(logits, num_views)
            top = video_probs.topk(min(5, video_probs.shape[-1]), dim=-1)
            for i, (path, probs, indices) in enumerate(
                zip(batch["path"], top.values.tolist(), top.indices.tolist())
            ):
                top5 = [
                    {"class": self.class_names[k], "index": k, "prob": round(p, 6)}
                    for p, k in zip(probs, indices)
                ]
                records.append({"path": str(path), "top5": top5})
                if embeddings is not None:
                    records[-1]["embedding"] = embeddings[i]
        for path, reason in zip(batch.get("failed_path", []), batch.get("failed_reason", [])):
            records.append({"path": str(path), "error": str(reason)})
        return records

    # ------------------------------------------------------------------------------------ optimiser
    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW over two groups (decay / no decay) and a per-step warmup + cosine schedule."""
        hp = self.hparams
        skip = self.backbone.no_weight_decay() if hasattr(self.backbone, "no_weight_decay") else ()
        groups = param_groups_weight_decay(self.backbone, hp.weight_decay, skip)
        optimizer = torch.optim.AdamW(groups, lr=self.peak_lr(), betas=tuple(hp.betas))
        total = int(self.trainer.estimated_stepping_batches)
        max_epochs = (
            self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else None
        )
        warmup = round(total * hp.warmup_epochs / max_epochs) if max_epochs else 0
        scheduler = warmup_cosine_scheduler(
            optimizer, total, min(warmup, total), hp.min_lr, hp.warmup_start_lr
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"},
        }
