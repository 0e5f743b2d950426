"""A trained model from its checkpoint file alone: the one place that rebuilds a model for prediction,
feature extraction, export and visualisation.

A checkpoint written by `src.cli fit` holds the model's hyper-parameters (backbone variant and options,
class names), its weights and the evaluation protocol (frames, sampling, views, crop, normalisation), so
nothing else is needed: no dataset, no run folder, no guessing from weight shapes.

    from src.trained import load_trained
    trained = load_trained("runs/demo/version_0/checkpoints/best.ckpt")
    views = trained.read_views("clip.mp4")            # (V, 3, T, H, W), the checkpoint's protocol
    probs = trained.module(views).softmax(-1).mean(0)
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from src.data.protocol import CHECKPOINT_KEY, EvalProtocol
from src.models.checkpoints import CheckpointFileError, load_checkpoint_file
from src.task import INIT_SOURCE_KEY, VideoClassifier

NOT_TRAINED_HERE = (
    "not a checkpoint written by this project's `src.cli fit` (it has no {missing}). Backbone weights such as the "
    "official UniFormer .pth files initialise a run with --model.init_from, or are drawn by "
    "`python -m src.visualize --model <variant> --weights <file>`"
)


IMAGE_PROTOCOL_NOTE = "none: an image network (one centre crop per image, the ImageNet stage)"


def image_checkpoint_message(path: Path, what: str) -> str:
    """The one-line refusal of an image checkpoint by a command that takes video checkpoints."""
    return (
        f"{path} holds an image network (the ImageNet stage, backbone.image true); {what} takes video checkpoints. "
        f"Start a video model from it with --model.init_from {path} (docs/imagenet.md), or test it with "
        "python -m src.cli test --config configs/imagenet.yaml --ckpt_path <it>"
    )


@dataclass
class CheckpointCard:
    """What a checkpoint says about its model, read without building it."""

    path: Path
    hyper_parameters: dict[str, Any]
    protocol: EvalProtocol | None  # None for an image model (the ImageNet stage): no clips to make
    # the weights the run started from: {"init_from": the value given (a file, a published name, hf://...),
    # "file": the file loaded, "sha256": its SHA-256}; None for a run from scratch or an older checkpoint
    init_source: dict[str, str] | None = None

    @property
    def started_from(self) -> str:
        """One line: the weights the run started from, or that it started from scratch (or does not say)."""
        if not self.init_source:
            return "not recorded (trained from scratch, or saved before the start was recorded)"
        source = self.init_source
        given, file = source.get("init_from", "?"), source.get("file", "?")
        where = given if given == file else f"{given} ({file})"
        return f"{where}, SHA-256 {source.get('sha256', '?')}"

    def __str__(self) -> str:
        names = self.class_names
        shown = ", ".join(names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "")
        protocol = self.protocol or IMAGE_PROTOCOL_NOTE
        return (
            f"{self.path}\n  model: {self.variant}{' (image network)' if self.is_image else ''}, {len(names)} "
            f"classes: {shown}\n  started from: {self.started_from}\n  protocol: {protocol}"
        )

    @property
    def is_image(self) -> bool:
        """Whether the checkpoint holds an image network (the ImageNet stage, `backbone.image`)."""
        return bool(self.hyper_parameters.get("backbone", {}).get("image"))

    def require_video(self, what: str) -> None:
        """Raise CheckpointFileError when the checkpoint holds an image network: `what` (predict, export, ...)
        takes video checkpoints, and an image checkpoint starts a video model instead."""
        if self.is_image:
            raise CheckpointFileError(image_checkpoint_message(self.path, what))

    @property
    def class_names(self) -> list[str]:
        names = self.hyper_parameters.get("class_names")
        return (
            [str(n) for n in names]
            if names
            else [str(i) for i in range(int(self.hyper_parameters["num_classes"]))]
        )

    @property
    def variant(self) -> str:
        return str(self.hyper_parameters.get("backbone", {}).get("variant", "?"))


@dataclass
class TrainedModel:
    """A classifier in eval mode on the CPU, its class names and the protocol its clips must follow."""

    module: VideoClassifier
    protocol: EvalProtocol
    path: Path

    @property
    def class_names(self) -> list[str]:
        return list(self.module.class_names)

    @property
    def variant(self) -> str:
        return str(self.module.hparams.backbone["variant"])

    def read_views(self, video: str | Path, backend: str = "pyav") -> Tensor:
        """All test views of one video (file or JPEG-frame folder) as the protocol makes them: (V, 3, T, H, W).

        Raises `DecodeError` naming the file when it cannot be decoded."""
        return read_views(video, self.protocol, backend)


def read_views(video: str | Path, protocol: EvalProtocol, backend: str = "pyav") -> Tensor:
    """All test views of one video (file or JPEG-frame folder) as `protocol` makes them, through the
    prediction dataset: (V, 3, T, H, W), V = temporal clips x spatial crops in that order.

    Raises `DecodeError` naming the file when it cannot be decoded."""
    from src.data.datasets import Entry, VideoClipDataset
    from src.data.decoding import DecodeError

    dataset = VideoClipDataset(
        [Entry(Path(video), -1)],
        mode="predict",
        sampler=protocol.clip_sampler(),
        eval_transform=protocol.transform(),
        num_clips=protocol.test_views[0],
        backend=backend,
    )
    item = dataset[0]
    if item.get("failed"):
        raise DecodeError(Path(video), str(item.get("reason", "could not be decoded")))
    return item["video"]


def datamodule_defaults() -> dict[str, Any]:
    """The defaults of `VideoDataModule`'s arguments by name: what a config that leaves one out gets."""
    from src.data.datamodule import VideoDataModule

    return {name: p.default for name, p in inspect.signature(VideoDataModule).parameters.items()}


def default_protocol() -> EvalProtocol:
    """The evaluation protocol of a DataModule left at its defaults (for a model without a checkpoint)."""
    defaults = datamodule_defaults()
    return EvalProtocol(**{name: defaults[name] for name in (*_PROTOCOL_ARGUMENTS, "mean", "std")})


def run_folder_of(checkpoint: str | Path) -> Path:
    """The run folder of a checkpoint: `<run>/checkpoints/x.ckpt` -> `<run>`, otherwise the file's folder."""
    path = Path(checkpoint).resolve()
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def _payload(path: Path, mmap: bool = False) -> dict:
    payload = load_checkpoint_file(path, mmap=mmap)
    missing = [
        k for k in ("hyper_parameters", "state_dict") if not isinstance(payload, dict) or k not in payload
    ]
    if missing:
        raise CheckpointFileError(f"{path}: " + NOT_TRAINED_HERE.format(missing=" or ".join(missing)))
    return payload


# What each dataset preset filled in for an unset argument before the recipes were written out in full in the
# configs: checkpoints of that time store None for those arguments. (sampling, num_frames, sampling_rate,
# crop_size, test_views)
_FORMER_PRESETS = {
    **dict.fromkeys(("k400", "custom"), ("dense", 16, 4, 224, (4, 1))),
    **dict.fromkeys(("ssv2", "ssv1", "diving48", "gym99", "gym288"), ("segment", 16, 1, 224, (1, 3))),
    "synthetic": ("segment", 16, 1, 96, (1, 1)),
}
_PROTOCOL_ARGUMENTS = ("sampling", "num_frames", "sampling_rate", "crop_size", "test_views")


def _protocol_of_data_arguments(data: dict[str, Any]) -> EvalProtocol:
    """The protocol a DataModule built from `data` (its saved arguments) evaluated with."""
    defaults = datamodule_defaults()
    former = _FORMER_PRESETS.get(str(data.get("preset", "synthetic")))  # "synthetic" was the default preset
    values = {}
    for i, name in enumerate(_PROTOCOL_ARGUMENTS):
        value = data.get(name)
        if value is None:
            value = former[i] if former is not None else defaults[name]
        values[name] = value
    for name in ("mean", "std"):
        values[name] = data.get(name) or defaults[name]
    return EvalProtocol(**values)


def _protocol(path: Path, payload: dict) -> EvalProtocol:
    """The stored protocol; for a checkpoint written before it was stored, the DataModule's arguments
    (`datamodule_hyper_parameters`), with the values the dataset preset of that time filled in."""
    if CHECKPOINT_KEY in payload:
        return EvalProtocol.from_dict(payload[CHECKPOINT_KEY])
    data = payload.get("datamodule_hyper_parameters")
    if isinstance(data, dict):
        return _protocol_of_data_arguments(data)
    keys = ", ".join(f"'{k}': ..." for k in _PROTOCOL_ARGUMENTS)
    raise CheckpointFileError(
        f"{path}: holds no evaluation protocol (no '{CHECKPOINT_KEY}' and no datamodule_hyper_parameters), so the "
        f"clips it expects are unknown. Add it once: ckpt = torch.load(path); ckpt['{CHECKPOINT_KEY}'] = "
        f"{{{keys}}}; torch.save(ckpt, path) (the values of the run that trained it)"
    )


def _hyper_parameters(path: Path, payload: dict) -> dict[str, Any]:
    hparams = {k: v for k, v in dict(payload["hyper_parameters"]).items() if not k.startswith("_")}
    known = inspect.signature(VideoClassifier).parameters
    unknown = sorted(set(hparams) - set(known))
    if unknown:
        raise CheckpointFileError(
            f"{path}: hyper-parameters {unknown} are not arguments of this version's VideoClassifier; the file was "
            "written by another version of structvit-lightning: load it with that version, or remove those keys"
        )
    hparams["init_from"] = None  # the weights come from this file, not from the run's starting point
    return hparams


def read_card(path: str | Path) -> CheckpointCard:
    """The checkpoint's hyper-parameters, class names and evaluation protocol, without building the model."""
    path = Path(path)
    payload = _payload(path, mmap=True)  # the tensors stay on disk: only the metadata is read
    hparams = _hyper_parameters(path, payload)
    protocol = None if hparams.get("backbone", {}).get("image") else _protocol(path, payload)
    return CheckpointCard(path, hparams, protocol, _init_source(payload))


def _init_source(payload: dict) -> dict[str, str] | None:
    record = payload.get(INIT_SOURCE_KEY)
    return {str(k): str(v) for k, v in record.items()} if isinstance(record, dict) else None


def load_trained(path: str | Path) -> TrainedModel:
    """Rebuild the classifier a checkpoint was saved from, with its weights, in eval mode on the CPU.

    Raises CheckpointFileError naming the file and the fix for a file that is not a complete checkpoint of
    this project, or whose weights do not fit the model its hyper-parameters describe."""
    path = Path(path)
    payload = _payload(path)
    hparams = _hyper_parameters(path, payload)
    if hparams.get("backbone", {}).get("image"):
        raise CheckpointFileError(image_checkpoint_message(path, "this command (predict, export, visualize)"))
    module = VideoClassifier(**hparams)
    result = module.load_state_dict(payload["state_dict"], strict=False)
    missing = list(result.missing_keys)
    if missing or result.unexpected_keys:
        raise CheckpointFileError(
            f"{path}: its weights do not fit the model its hyper-parameters describe "
            f"({module.hparams.backbone['variant']}): missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
            f"{' ...' if len(missing) > 5 or len(result.unexpected_keys) > 5 else ''}. The file was edited or written "
            "by another version"
        )
    module.eval_protocol = _protocol(path, payload)
    module.init_source = _init_source(payload)  # kept when the module saves a checkpoint again
    module.source_checkpoint = path.resolve()
    module.eval()
    return TrainedModel(module, module.eval_protocol, path.resolve())


def main(argv: list[str] | None = None) -> int:
    """`python -m src.trained CHECKPOINT...`: print each checkpoint's card (model, classes, the weights it
    started from, evaluation protocol) without building the model."""
    import sys

    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print("usage: python -m src.trained CHECKPOINT [CHECKPOINT ...]", file=sys.stderr)
        return 2
    for path in paths:
        try:
            print(read_card(path))
        except (CheckpointFileError, FileNotFoundError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
