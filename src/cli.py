"""The command line: `python -m src.cli {fit,validate,test,predict} --config configs/<dataset>.yaml`.

A LightningCLI over VideoClassifier and a DataModule chosen by `data.class_path`: VideoDataModule when the
config names none (every video config), `src.data.images.ImageDataModule` for the ImageNet stage
(configs/imagenet.yaml). The class signatures are the config schema; an unknown key is a parse error naming it. Every run writes into its own folder
`<trainer.logger.save_dir>/<name>/version_<n>/` (config.yaml, hparams.yaml, TensorBoard events,
checkpoints/best-*.ckpt and last.ckpt, test reports). `--ckpt_path last` resumes from the newest
`last.ckpt` of the same run name.

`predict --ckpt_path X --data.predict_path <video|folder|list.txt>` needs nothing but the checkpoint: the
model is rebuilt from it (`src.trained.load_trained`), the clips follow its stored evaluation protocol and
class names, and predictions.jsonl (plus features with `--predict_writer.features true`) goes beside the
checkpoint's run folder; no run folder, logger or config.yaml is made for a prediction.

Errors: a value that is wrong whatever the machine (a bound, a missing file, a GPU accelerator without a GPU, a
file that is not a checkpoint of this project) is a parse error, before anything is written; a user error met
while running (a missing index, a full disk, a checkpoint of other classes) ends with one line `error: ...`; both
exit with 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import re
import sys
import textwrap
from pathlib import Path
from typing import Any, NoReturn

import yaml
from jsonargparse import Namespace, get_loader, set_loader
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_only

from src.callbacks import (
    FirstBatchFrames,
    JsonLinesPredictionWriter,
    OutputTakenError,
    SigtermCheckpoint,
    ThroughputMonitor,
)
from src.checkpoint_io import OUT_OF_SPACE, DiskFullError, out_of_space
from src.data.index import IndexContractError
from src.hang_guard import HangGuard
from src.models.checkpoints import CheckpointFileError
from src.runs import last_checkpoint
from src.task import ConfigError, NonFiniteLossError, VideoClassifier, init_from_problem
from src.trained import CheckpointCard, datamodule_defaults, load_trained, read_card

log = logging.getLogger("lightning.pytorch").getChild("cli")


class _DropAdvert(logging.Filter):
    """Drops Lightning's "try installing litlogger" advert, printed at every Trainer start."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


for _name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
    logging.getLogger(_name).addFilter(_DropAdvert())
LAST = ModelCheckpoint.CHECKPOINT_NAME_LAST
VIDEO_DATAMODULE = "src.data.datamodule.VideoDataModule"  # the DataModule of a config that names none
# checkpoints written to a temporary file beside their target and renamed into place (src/checkpoint_io.py)
ATOMIC_CHECKPOINT_IO = {"class_path": "src.checkpoint_io.AtomicCheckpointIO"}
DEFAULT_LOGGER = {
    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
    "init_args": {"save_dir": "runs", "name": "default", "default_hp_metric": False},
}
# Trainer values Lightning refuses only once the run has started: (least value, what to give instead)
TRAINER_MINIMA = {
    "max_epochs": (-1, "a number of epochs >= 0, or -1 for no limit"),
    "min_epochs": (0, "a number of epochs >= 0"),
    "max_steps": (-1, "a number of steps >= 0, or -1 for no limit"),
    "min_steps": (0, "a number of steps >= 0"),
    "accumulate_grad_batches": (1, "a number of batches >= 1"),
    "check_val_every_n_epoch": (1, "a number of epochs >= 1, or null"),
    "num_sanity_val_steps": (-1, "a number of batches >= 0, or -1 for all"),
    "num_nodes": (1, "a number of nodes >= 1"),
    "gradient_clip_val": (0, "a value >= 0, or null for no clipping"),
}
# the errors of a user's input or machine, printed as one line (exit 2, as a parse error) by `main`
USER_ERRORS = (
    ConfigError,
    IndexContractError,
    CheckpointFileError,
    DiskFullError,
    OutputTakenError,
    MisconfigurationException,
    NonFiniteLossError,
)


class SaveConfigWithCheckpoints(SaveConfigCallback):
    """Saves the resolved config as `config.yaml` in the run folder and also inside every checkpoint."""

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint["cli_config"] = self.parser.dump(self.config, skip_none=False)


def data_error_in_plain_words(message: str) -> str:
    """jsonargparse's error for a bad value of the data section, which is a class choice (`data.class_path`), as
    the error of that one key: `Parser key "data.crop_size": ...` instead of the list of every class tried."""
    if not message.startswith('Parser key "data":'):
        return message
    found = re.search(
        r"Problem with given class_path '([^']+)':\n(.*?)(?=\n\s*- Expected a <class 'NoneType'>|\n\s*Given value|\Z)",
        message,
        re.S,
    )
    if not found:
        return message
    problem = textwrap.dedent(found.group(2)).strip().replace('Parser key "', 'Parser key "data.')
    if not problem.startswith("Parser key"):
        problem = f"data: {problem}"
    return f"{problem} (in the data section, read by {found.group(1)})"


class ProjectArgumentParser(LightningArgumentParser):
    """The CLI's parser: errors of the data section name the key (`data_error_in_plain_words`)."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        super().error(data_error_in_plain_words(message), ex)


class VideoCLI(LightningCLI):
    """LightningCLI with the links, callbacks and run-folder conventions of this project."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # a config without data.class_path (every video config) gets the video DataModule
        parser.set_defaults({"data": {"class_path": VIDEO_DATAMODULE}})
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
        """Parse, then check what is knowable before anything runs or writes (each a parse error: exit 2 with the
        message): `ckpt_path` (`last` becomes the newest intact checkpoint of the run; a file that is missing,
        refused, corrupt or not a checkpoint of this project is named), the Trainer's bounds, a GPU accelerator
        on a machine without one, and the `init_from` file of a fit from scratch."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        ckpt_path = config.get("ckpt_path")
        try:
            if ckpt_path == "last":
                config["ckpt_path"] = str(find_last_checkpoint(config))
            if config.get("ckpt_path"):
                read_card(config["ckpt_path"])  # a plain state dict has no model to rebuild or resume
        except (CheckpointFileError, FileNotFoundError) as err:
            parser.error(f"--ckpt_path: {err}")
        trainer = config.get("trainer") or Namespace()
        for problem in (trainer_bounds_problem(trainer), no_gpu_problem(trainer)):
            if problem:
                parser.error(problem)
        init_from = config.get("model.init_from")
        if subcommand == "fit" and init_from and not config.get("ckpt_path"):
            problem = init_from_problem(init_from)
            if problem:
                parser.error(problem)

    def before_instantiate_classes(self) -> None:
        """A prediction makes no run folder (no logger, no config.yaml); with a checkpoint, the data take its
        class names and evaluation protocol (values set explicitly for the data win, with a warning)."""
        if self.subcommand != "predict":
            return
        config = self.config.predict
        config.trainer.logger = False
        self.save_config_callback = None
        if config.get("ckpt_path"):
            card = read_card(config.ckpt_path)
            card.require_video("predict")
            adopt_checkpoint_protocol(data_arguments(config), card)

    def fit(self, model: LightningModule, ckpt_path: str | None = None, **kwargs: Any) -> None:
        """`trainer.fit`, with the checkpoint to resume from set on the Trainer first: the model's `setup` then
        knows it resumes and leaves `init_from` alone (`fit(ckpt_path=...)` reaches the Trainer after setup)."""
        self.trainer.ckpt_path = ckpt_path
        self.trainer.fit(model, **kwargs)

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
        for writer in self.trainer.callbacks:  # a taken output is refused before the model is read
            if isinstance(writer, JsonLinesPredictionWriter):
                writer.check_outputs(self.trainer, checkpoint=ckpt_path, datamodule=datamodule)
        if ckpt_path:
            # the command line's compile switch, never a checkpoint's
            compile_options = getattr(model, "compile_options", None)
            model = load_trained(ckpt_path).module
            model.compile_options = compile_options
            card = read_card(ckpt_path)
            rank_zero_info(f"predict: {card.variant} from {ckpt_path}; it started from {card.started_from}")
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


def data_arguments(config: Namespace) -> Namespace:
    """The DataModule's arguments in a parsed config (`data.init_args`: the data section is a class choice)."""
    data = config.data
    return data.init_args if isinstance(data, Namespace) and "init_args" in data else data


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


def trainer_bounds_problem(trainer: Namespace) -> str | None:
    """The parse error of the first Trainer value below its least value (`TRAINER_MINIMA`), or None."""
    for key, (least, fix) in TRAINER_MINIMA.items():
        value = trainer.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < least:
            return f"--trainer.{key} {value}: give {fix}"
    return None


def no_gpu_problem(trainer: Namespace) -> str | None:
    """The parse error of a GPU accelerator on a machine without one (e.g. configs/custom.yaml on a laptop),
    naming the flags that run the same config on the CPU; None when the accelerator is available or not a GPU."""
    accelerator = trainer.get("accelerator")
    if not isinstance(accelerator, str) or accelerator not in ("gpu", "cuda", "mps"):
        return None
    from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator

    found = {"cuda": CUDAAccelerator.is_available(), "mps": MPSAccelerator.is_available()}
    if found.get(accelerator, any(found.values())):
        return None
    flags = ["--trainer.accelerator cpu"]
    if str(trainer.get("devices")) not in ("1", "auto"):
        flags += ["--trainer.devices 1", "--trainer.strategy auto"]
    precision = str(trainer.get("precision"))
    if precision.startswith("16"):  # float16 autocast is for GPUs
        flags += ["--trainer.precision bf16-mixed"]
        precision = "bf16-mixed"
    return (
        f"--trainer.accelerator {accelerator}: torch finds no {'GPU' if accelerator == 'gpu' else accelerator.upper()}"
        f" on this machine. To run on the CPU add {' '.join(flags)} (precision {precision} runs there too; "
        "--trainer.precision 32-true is often faster on a CPU)"
    )


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
    return VideoCLI(
        model_class,
        LightningDataModule,
        subclass_mode_data=True,
        parser_class=ProjectArgumentParser,
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


_JSONARGPARSE_YAML_LOAD = get_loader("yaml")


def yaml_load_naming_the_file(value: str, path: str = "") -> Any:
    """jsonargparse's YAML loader, whose error for a config file names the file and the line (PyYAML's says
    "<unicode string>": jsonargparse hands it the file's text)."""
    try:
        return _JSONARGPARSE_YAML_LOAD(value)
    except yaml.MarkedYAMLError as err:
        if not path:  # a value on the command line: jsonargparse reports the key
            raise
        try:  # the path as the user gave it (jsonargparse passes on its base name only): its stack of open files
            from jsonargparse._util import config_load_stack

            path = str(config_load_stack.get()[-1][1])
        except (ImportError, IndexError, TypeError):
            pass

        def at(mark: Any) -> str:
            return f"line {mark.line + 1}, column {mark.column + 1}"

        mark = err.problem_mark or err.context_mark
        context = err.context or ""
        if context and err.context_mark and err.context_mark is not mark:
            context += f" opened at {at(err.context_mark)}"
        raise yaml.YAMLError(
            f"{path}{f', {at(mark)}' if mark else ''}: {err.problem or 'invalid YAML'}"
            + (f" ({context})" if context else "")
        ) from None


set_loader("yaml", yaml_load_naming_the_file, (yaml.YAMLError,))


def main(args: list[str] | None = None) -> None:
    """`python -m src.cli`: the CLI, with a user error (`USER_ERRORS`, a full disk) as one line `error: ...` and
    exit 2, like a parse error; any other exception is a bug and keeps its traceback. Every rank of a multi-process
    run that meets the error prints it (with its rank when not 0) and exits."""
    try:
        cli_main(args)
    except USER_ERRORS as err:
        exit_with_error(str(err))
    except (OSError, RuntimeError) as err:  # ENOSPC of a write other than a checkpoint's (logs, predictions)
        full = out_of_space(err)
        if full is None:
            raise
        where = f"writing {full.filename}: " if full.filename else ""
        exit_with_error(f"{where}{OUT_OF_SPACE[full.errno]} ({full.strerror}); free space and run again")


def exit_with_error(message: str) -> None:
    """Print `message` as `error: ...` on stderr (with the rank when not 0) and exit with 2."""
    rank = getattr(rank_zero_only, "rank", 0) or 0
    sys.stdout.flush()
    print(f"error{f' (rank {rank})' if rank else ''}: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


if __name__ == "__main__":
    main()
