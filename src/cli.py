"""The command line: `python -m src.cli {fit,validate,test,predict} --config configs/<dataset>.yaml`.

A LightningCLI over VideoClassifier and VideoDataModule. The class signatures are the config schema; an
unknown key is a parse error naming it. Every run writes into its own folder
`<trainer.logger.save_dir>/<name>/version_<n>/` (config.yaml, hparams.yaml, TensorBoard events,
checkpoints/best-*.ckpt and last.ckpt, test reports). `--ckpt_path last` resumes from the newest
`last.ckpt` of the same run name.

`predict --ckpt_path X --data.predict_path <video|folder|list.txt>` needs nothing but the checkpoint: the
model is rebuilt from it (`src.trained.load_trained`), the clips follow its stored evaluation protocol and
class names, and predictions.jsonl (plus features with `--predict_writer.features true`) goes beside the
checkpoint's run folder; no run folder, logger or config.yaml is made for a prediction.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry

from src.callbacks import FirstBatchFrames, JsonLinesPredictionWriter, SigtermCheckpoint, ThroughputMonitor
from src.hang_guard import HangGuard
from src.models.checkpoints import CheckpointFileError, load_checkpoint_file
from src.runs import last_checkpoint
from src.task import VideoClassifier
from src.trained import CheckpointCard, datamodule_defaults, load_trained, read_card

log = logging.getLogger("lightning.pytorch").getChild("cli")


class _DropAdvert(logging.Filter):
    """Drops Lightning's "try installing litlogger" advert, printed at every Trainer start."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


for _name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
    logging.getLogger(_name).addFilter(_DropAdvert())
LAST = ModelCheckpoint.CHECKPOINT_NAME_LAST
# checkpoints written to a temporary file beside their target and renamed into place (src/checkpoint_io.py)
ATOMIC_CHECKPOINT_IO = {"class_path": "src.checkpoint_io.AtomicCheckpointIO"}
DEFAULT_LOGGER = {
    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
    "init_args": {"save_dir": "runs", "name": "default", "default_hp_metric": False},
}


class SaveConfigWithCheckpoints(SaveConfigCallback):
    """Saves the resolved config as `config.yaml` in the run folder and also inside every checkpoint."""

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint["cli_config"] = self.parser.dump(self.config, skip_none=False)


class VideoCLI(LightningCLI):
    """LightningCLI with the links, callbacks and run-folder conventions of this project."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")
        parser.link_arguments("data.fingerprint", "model.data_fingerprint", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/top1",
                "checkpoint.mode": "max",
                "checkpoint.filename": "best-{epoch:03d}-{step}",
                "checkpoint.auto_insert_metric_name": False,
                "checkpoint.save_last": False,  # Lightning >= 2.5 refreshes last.ckpt only when top-k saves
                "checkpoint.save_top_k": 1,
            }
        )
        # last.ckpt: the newest state after every validation / epoch, whether or not val/top1 improved
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.set_defaults(
            {
                "last_checkpoint.filename": LAST,
                "last_checkpoint.monitor": None,
                "last_checkpoint.save_top_k": 1,
                "last_checkpoint.enable_version_counter": False,
            }
        )
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.set_defaults({"lr_monitor.logging_interval": "step"})
        parser.add_lightning_class_args(FirstBatchFrames, "first_batch_frames")
        parser.add_lightning_class_args(SigtermCheckpoint, "sigterm_checkpoint")
        parser.add_lightning_class_args(ThroughputMonitor, "throughput")
        parser.add_lightning_class_args(JsonLinesPredictionWriter, "predict_writer")
        parser.add_lightning_class_args(HangGuard, "hang_guard")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then check `ckpt_path` before anything reads it: `last` becomes the newest intact checkpoint
        of the run, and a refused or corrupt file is an error naming it (not torch's traceback)."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        ckpt_path = config.get("ckpt_path") if subcommand else None
        try:
            if ckpt_path == "last":
                config["ckpt_path"] = str(find_last_checkpoint(config))
            elif ckpt_path:
                load_checkpoint_file(ckpt_path, mmap=True)
        except (CheckpointFileError, FileNotFoundError) as err:
            parser.error(f"--ckpt_path: {err}")  # exit 2 with the message, no traceback

    def before_instantiate_classes(self) -> None:
        """A prediction makes no run folder (no logger, no config.yaml); with a checkpoint, the data take its
        class names and evaluation protocol (values set explicitly for the data win, with a warning)."""
        if self.subcommand != "predict":
            return
        config = self.config.predict
        config.trainer.logger = False
        self.save_config_callback = None
        if config.get("ckpt_path"):
            adopt_checkpoint_protocol(config.data, read_card(config.ckpt_path))

    def predict(
        self,
        model: LightningModule,
        datamodule: Any = None,
        ckpt_path: str | None = None,
        return_predictions: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """`trainer.predict` on the model rebuilt from `ckpt_path` by `src.trained.load_trained` (the same
        function as export and visualize); predictions are on disk, so they are not also kept in memory."""
        if ckpt_path:
            model = load_trained(ckpt_path).module
        kwargs.pop("weights_only", None)  # the checkpoint was read by load_trained's safe loader
        return self.trainer.predict(
            model, datamodule=datamodule, return_predictions=bool(return_predictions), **kwargs
        )

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The Trainer, with `hang_guard.collective_timeout` as the process-group timeout of a DDP strategy
        named by a string (`ddp`, `ddp_spawn`, ...) or chosen by `auto`; a strategy given as a class keeps its
        own `timeout`."""
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        guard = config.get("hang_guard")
        strategy = config.get("trainer", {}).get("strategy", "auto")
        if guard is None or "strategy" in kwargs or not isinstance(strategy, str):
            return super().instantiate_trainer(**kwargs)
        if strategy != "auto":
            ddp = timed_ddp_strategy(strategy, guard.timeout)
            return super().instantiate_trainer(**kwargs, **({"strategy": ddp} if ddp is not None else {}))
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy) is DDPStrategy:  # `auto` chose DDP (several devices or nodes): same, timed
            trainer = super().instantiate_trainer(**kwargs, strategy=timed_ddp_strategy("ddp", guard.timeout))
        return trainer


def adopt_checkpoint_protocol(data: Any, card: CheckpointCard) -> None:
    """Fill the data config of a prediction from the checkpoint: its class names, its normalisation, and each
    protocol value the config leaves at the DataModule's default; a value set to anything else (a config
    file, the command line) is kept, with a warning when it differs from the checkpoint's."""
    defaults = datamodule_defaults()
    data.classes = card.class_names
    protocol = card.protocol.to_dict()
    data.mean, data.std = protocol.pop("mean"), protocol.pop("std")
    for name, value in protocol.items():
        given, default = (
            list(v) if isinstance(v, (list, tuple)) else v for v in (data.get(name), defaults[name])
        )
        if given is None or given == default:
            data[name] = value
        elif given != value:
            log.warning("predict: data.%s=%s is set; the checkpoint %s was evaluated with %s", name, given,
                        card.path, value)  # fmt: skip


def timed_ddp_strategy(name: str, timeout: Any) -> DDPStrategy | None:
    """The DDP-family strategy registered as `name`, built with its registered options and `timeout`;
    None when `name` is not a DDP strategy (single device, FSDP, DeepSpeed, ...)."""
    if name not in StrategyRegistry:
        return None
    entry = StrategyRegistry[name]
    if not issubclass(entry["strategy"], DDPStrategy):
        return None
    return entry["strategy"](**{**entry["init_params"], "timeout": timeout})


def find_last_checkpoint(config: Any) -> Path:
    """The newest intact `last.ckpt` under `<logger save_dir>/<name>/version_*/checkpoints/` of this config.

    A newest file that is truncated or corrupt (a write cut short by a full disk) is reported and skipped for
    the newest intact checkpoint of the run's versions (last or best); see `src.runs.last_checkpoint`."""
    logger = config.get("trainer.logger")
    init = getattr(logger, "init_args", None) or {}
    save_dir = Path(init.get("save_dir") or config.get("trainer.default_root_dir") or "runs")
    return last_checkpoint(save_dir, init.get("name") or "default")


def cli_main(
    args: list[str] | None = None, run: bool = True, model_class: type = VideoClassifier
) -> VideoCLI:
    """Build the CLI (and run the subcommand when `run`); `model_class`: a VideoClassifier subclass (tests)."""
    from src.data.datamodule import VideoDataModule

    return VideoCLI(
        model_class,
        VideoDataModule,
        save_config_callback=SaveConfigWithCheckpoints,
        trainer_defaults={
            "use_distributed_sampler": False,
            "logger": DEFAULT_LOGGER,
            "plugins": [ATOMIC_CHECKPOINT_IO],
        },
        parser_kwargs={"parser_mode": "yaml"},
        seed_everything_default=0,  # a run is reproducible unless a seed is chosen (the configs set it too)
        auto_configure_optimizers=False,
        args=args,
        run=run,
    )


if __name__ == "__main__":
    cli_main()
