"""`VideoClipDataset`: clips from any dataset prepared to the index contract, with the failure policy.

The rows come from an index folder read by `src.data.index` (the index contract: `classes.txt`, the split
CSVs, `manifest.json`, the doctor's `quarantine.txt`), or from `predict_entries` for prediction inputs.

Failure policy. Training never dies on one bad video: the decode is retried once, then tried with the other
backend, then another (seeded random) video is substituted; each substituted video counts as one failure
in the sample's `decode_failures`. Evaluation never substitutes: a video that fails with both backends is
returned as failed (`failed_index`) and skipped. A decoder that hangs is abandoned after `decode_timeout` s.
Randomness is seeded per sample from (seed, epoch, position) by the sampler, never from worker state.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from src.data.decoding import (
    ALL_BACKENDS,
    FALLBACK,
    JPEG_SUFFIXES,
    DecodeError,
    DecodeTimeoutError,
    probe,
    read_frames,
    segment_range,
)
from src.data.decoding.frames_reader import VIDEO_SUFFIXES
from src.data.index import Entry, IndexContractError
from src.data.sampling import ClipSampler
from src.data.transforms import EvalTransform, TrainTransform, seeded

EMPTY_SHARD = -1  # the index an empty evaluation shard yields (src.data.distributed): read as a placeholder

log = logging.getLogger(__name__)


LIST_SUFFIXES = (".txt", ".lst", ".list")


def predict_entries(path: Path) -> list[Entry]:
    """Entries for prediction: one video file, a JPEG-frame folder, a folder of videos (and of frame folders), or
    a text file (.txt/.lst/.list) with one path per line (relative paths from the list's folder).

    A folder is one frame video only when it holds frames and nothing that is a video (no video file, no
    sub-folder); a folder holding videos is predicted video by video, and its other files are skipped with a
    warning naming them. A listed path that does not exist is kept: it is reported as failed, with the others
    predicted."""
    path = Path(path)
    if not path.exists():
        raise IndexContractError(f"predict_path {path} does not exist")
    if path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        return _listed_entries(path)
    if path.is_file():
        return [Entry(path, -1)]
    visible = sorted(p for p in path.iterdir() if not p.name.startswith("."))  # .DS_Store, ._x.mp4, ...
    videos = [p for p in visible if p.is_dir() or p.suffix.lower() in VIDEO_SUFFIXES]
    others = [p for p in visible if p not in videos]
    if not videos and any(p.suffix.lower() in JPEG_SUFFIXES for p in others):
        return [Entry(path, -1)]  # frames and nothing that is a video: one JPEG-frame video
    if not videos:
        raise IndexContractError(
            f"predict_path {path} holds no videos ({', '.join(VIDEO_SUFFIXES)}) or frame folders"
        )
    if others:
        names = ", ".join(repr(p.name) for p in others[:10]) + (" ..." if len(others) > 10 else "")
        log.warning(
            "predict_path %s: skipped %d file(s) that are not videos: %s (a folder holding videos is predicted "
            "video by video; a JPEG-frame video is a folder holding only its frames)",
            path,
            len(others),
            names,
        )
    return [Entry(p, -1) for p in videos]


def _listed_entries(path: Path) -> list[Entry]:
    """The paths a list file names, each line exactly as written (spaces are part of a file name) less its line
    end; blank lines and lines starting with `#` are skipped (list a file named `#x.mp4` as `./#x.mp4`)."""
    text = path.read_bytes().decode("utf-8-sig")
    lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
    listed = []
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith("#"):
            continue
        entry = path.parent / line
        if not entry.exists() and line.strip() != line and (path.parent / line.strip()).exists():
            log.warning(
                "%s:%d: %r does not exist but %r does: list lines are read exactly, spaces included",
                path,
                number,
                line,
                line.strip(),
            )
        listed.append(Entry(entry, -1))
    if not listed:
        raise IndexContractError(f"predict_path {path} lists no videos (one path per line)")
    return listed


def call_with_timeout(fn: Callable[[], torch.Tensor], timeout: float | None, path: Path) -> torch.Tensor:
    """Run `fn` in a daemon thread and give up after `timeout` s (the hung thread is abandoned)."""
    if timeout is None:
        return fn()
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as err:  # re-raised in the caller's thread
            box["error"] = err

    thread = threading.Thread(target=run, daemon=True, name=f"decode:{path.name}")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise DecodeTimeoutError(
            path, f"decoding took longer than decode_timeout={timeout:g} s (hung decoder?)"
        )
    if "error" in box:
        raise box["error"]
    return box["value"]


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A 63-bit seed for one sample, a pure function of (seed, epoch, position)."""
    return int(
        np.random.SeedSequence([seed, epoch, position]).generate_state(2, np.uint64)[0] >> np.uint64(1)
    )


class VideoClipDataset(Dataset):
    """Clips of the videos in `entries`, for one of the modes `train`, `eval` or `predict`.

    train: item key `(index, seed)` (from TrainSampler) or an int; returns `video` (R, 3, T, H, W) for
    `num_repeats` = R augmentations of one decode, `label` (R,), `index`, `decode_failures`; with
    `augment_on_device`, `video` is the uint8 crops (R, T, 3, H, W) and `aug_seed` (R,) their appearance seeds.
    eval / predict: returns `video` (V, 3, T, H, W) with V = clips x crops, or `failed=True` with the reason.
    """

    def __init__(
        self,
        entries: Sequence[Entry],
        *,
        mode: str,
        sampler: ClipSampler,
        train_transform: TrainTransform | None = None,
        eval_transform: EvalTransform | None = None,
        num_clips: int = 1,
        backend: str = "decord",
        num_repeats: int = 1,
        decode_timeout: float | None = 30.0,
        seed: int = 0,
        max_substitutes: int = 20,
        augment_on_device: bool = False,
    ) -> None:
        if mode not in ("train", "eval", "predict"):
            raise ValueError(f"unknown dataset mode {mode!r}")
        if backend not in ALL_BACKENDS:
            raise ValueError(f"unknown decode backend {backend!r}; use one of {ALL_BACKENDS}")
        if mode == "train" and train_transform is None or mode != "train" and eval_transform is None:
            raise ValueError(f"mode {mode!r} needs its transform")
        if num_repeats < 1:
            raise ValueError(f"num_repeats must be >= 1, got {num_repeats}")
        self.entries = list(entries)
        self.mode = mode
        self.sampler = sampler
        self.train_transform = train_transform
        self.eval_transform = eval_transform
        self.num_clips = num_clips
        self.backend = backend
        self.num_repeats = num_repeats
        self.decode_timeout = decode_timeout
        self.seed = seed
        self.max_substitutes = max_substitutes
        self.augment_on_device = augment_on_device  # train: only crop here, see `_augment`
        self._lengths: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.entries)

    # ------------------------------------------------------------------------------------ decoding
    def _length(self, index: int) -> int:
        """Frames of the entry (of its segment, if any): from the index cache, else probed once."""
        if index not in self._lengths:
            entry = self.entries[index]
            num_frames, fps = entry.num_frames, entry.fps
            if num_frames is None or (entry.segment is not None and not fps):
                info = probe(entry.path)
                num_frames, fps = info.num_frames, info.fps
            if entry.segment is not None:
                if not fps:
                    raise DecodeError(
                        entry.path,
                        f"row {index} gives a segment {entry.segment} in seconds but the source has no frame rate "
                        "(a JPEG-frame folder): remove start/end from the row or give its fps in the index",
                    )
                num_frames = segment_range(entry.path, fps, num_frames, entry.segment)[1]
            self._lengths[index] = num_frames
        return self._lengths[index]

    def _decode_robustly(self, index: int, choose: Callable[[int], Sequence[int]], retry_same: bool):
        """Frames chosen by `choose(length)`; retry once, then the other backend. Raises the last error.

        Probing and decoding both run under `decode_timeout`, so a file that blocks (a stalled network
        mount, a FIFO, a decoder stuck in a loop) is abandoned like any other failure.
        """
        entry = self.entries[index]
        other = FALLBACK[self.backend]
        attempts = [self.backend, self.backend, other] if retry_same else [self.backend, other]
        chosen: list[Sequence[int]] = []
        error: DecodeError | None = None

        def attempt(backend: str) -> torch.Tensor:
            if not chosen:  # the sampling draw is made once, so every attempt reads the same frames
                chosen.append(choose(self._length(index)))
            return read_frames(entry.path, chosen[0], backend, segment=entry.segment)

        for backend in attempts:
            try:
                frames = call_with_timeout(lambda b=backend: attempt(b), self.decode_timeout, entry.path)
                if backend != self.backend:  # reported, so a dataset the chosen decoder cannot read is seen
                    log.warning(
                        "decoded %s with %s after %s failed: %s", entry.path, backend, self.backend, error
                    )
                return frames
            except DecodeError as err:
                error = err
                if not err.retryable:
                    break  # a hung, missing or empty file will not recover on retry
            except Exception as err:  # anything else about this row (a bad value, a decoder bug): same policy
                error = row_error(entry.path, index, err)
                break
        assert error is not None
        raise error

    # --------------------------------------------------------------------------------------- items
    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        if not isinstance(key, tuple) and int(key) == EMPTY_SHARD:
            return {
                "placeholder": True
            }  # an empty evaluation shard (see EvalSampler): dropped by the collate
        index, seed = key if isinstance(key, tuple) else (int(key), sample_seed(self.seed, 0, int(key)))
        if self.mode == "train":
            return self._train_item(index, seed)
        return self._eval_item(index)

    def _train_item(self, index: int, seed: int) -> dict:
        rng = np.random.default_rng(seed)
        failures = 0
        for _ in range(self.max_substitutes + 1):
            try:
                frames = self._decode_robustly(index, lambda n: self.sampler.train(n, rng), retry_same=True)
                clips, labels, seeds = self._augment(frames, self.entries[index].label, seed, index)
                break
            except DecodeError as err:
                failures += 1
                log.warning("train: substituting another video for %s (%s)", err.path, err.reason)
                index = int(rng.integers(len(self.entries)))
        else:
            raise DecodeError(
                self.entries[index].path,
                f"{self.max_substitutes + 1} videos in a row failed to decode: check the data root and the decoders",
            )
        return {
            "video": torch.stack(clips),
            "label": torch.tensor(labels, dtype=torch.long),
            "index": index,
            "decode_failures": failures,
            **({"aug_seed": torch.tensor(seeds, dtype=torch.long)} if self.augment_on_device else {}),
        }

    def _augment(self, frames: torch.Tensor, label: int, seed: int, index: int) -> tuple[list, list, list]:
        """`num_repeats` augmentations of one decode; an error here is the row's failure (a DecodeError).

        Each repeat has a crop seed and an appearance seed. With `augment_on_device` only the crop runs here
        (uint8 clips (T, 3, H, W)); the appearance seeds travel with the batch to the DataModule's
        `on_after_batch_transfer`, which finishes the clips on the device exactly as the CPU path would."""
        clips, labels, seeds = [], [], []
        try:
            for repeat in range(self.num_repeats):
                crop_seed, look_seed = sample_seed(seed, repeat, 1), sample_seed(seed, repeat, 2)
                if self.augment_on_device:
                    with seeded(crop_seed):
                        clip, clip_label = self.train_transform.crop_clip(frames), label
                else:
                    clip, clip_label = self.train_transform(frames, label, seed=(crop_seed, look_seed))
                clips.append(clip)
                labels.append(clip_label)
                seeds.append(look_seed)
        except Exception as err:
            raise row_error(self.entries[index].path, index, err) from err
        return clips, labels, seeds

    def _eval_item(self, index: int) -> dict:
        entry = self.entries[index]
        clips: list[list[int]] = []

        def choose(length: int) -> list[int]:
            clips.clear()
            clips.extend(self.sampler.test(length, v, self.num_clips) for v in range(self.num_clips))
            return sorted({i for clip in clips for i in clip})

        try:
            frames = self._decode_robustly(index, choose, retry_same=False)
            position = {i: k for k, i in enumerate(sorted({i for clip in clips for i in clip}))}
            try:
                views = [self.eval_transform(frames[[position[i] for i in clip]]) for clip in clips]
            except Exception as err:
                raise row_error(entry.path, index, err) from err
        except DecodeError as err:
            log.warning("%s: skipping %s (%s)", self.mode, err.path, err.reason)
            return {"failed": True, "index": index, "path": str(entry.path), "reason": err.reason}
        return {
            "failed": False,
            "video": torch.cat(views),
            "label": entry.label,
            "index": index,
            "path": str(entry.path),
        }


def row_error(path: Path | str, index: int, err: BaseException) -> DecodeError:
    """Any per-sample exception as a DecodeError naming the row, so the failure policy (count, substitute in
    training, skip and list in evaluation) sees it instead of the DataLoader worker dying."""
    if isinstance(err, DecodeError):
        return err
    return DecodeError(path, f"row {index}: {type(err).__name__}: {err}")


def collate_train(samples: list[dict]) -> dict:
    """Train batch: `video` (B*R, 3, T, H, W), `label`, `index` (B*R,), `decode_failures` scalar; for
    augmentation on the device `video` is uint8 (B*R, T, 3, H, W) and `aug_seed` (B*R,) is added."""
    repeats = samples[0]["video"].shape[0]
    batch = {
        "video": torch.cat([s["video"] for s in samples]),
        "label": torch.cat([s["label"] for s in samples]),
        "index": torch.tensor([s["index"] for s in samples], dtype=torch.long).repeat_interleave(repeats),
        "decode_failures": torch.tensor(sum(s["decode_failures"] for s in samples), dtype=torch.long),
    }
    if "aug_seed" in samples[0]:
        batch["aug_seed"] = torch.cat([s["aug_seed"] for s in samples])
    return batch


class EvalCollate:
    """Eval / predict batch: the videos that decoded plus `failed_index` / `failed_reason` for those that did not."""

    def __init__(self, view_shape: tuple[int, ...], predict: bool = False) -> None:
        self.view_shape = view_shape  # (V, 3, T, H, W), for an all-failed batch
        self.predict = predict

    def __call__(self, samples: list[dict]) -> dict:
        samples = [s for s in samples if not s.get("placeholder")]
        good = [s for s in samples if not s["failed"]]
        bad = [s for s in samples if s["failed"]]
        video = torch.stack([s["video"] for s in good]) if good else torch.zeros((0, *self.view_shape))
        batch = {
            "video": video,
            "failed_index": torch.tensor([s["index"] for s in bad], dtype=torch.long),
            "failed_reason": [s["reason"] for s in bad],
        }
        if self.predict:
            batch["path"] = [s["path"] for s in good]
            batch["failed_path"] = [s["path"] for s in bad]
        else:
            batch["label"] = torch.tensor([s["label"] for s in good], dtype=torch.long)
            batch["index"] = torch.tensor([s["index"] for s in good], dtype=torch.long)
        return batch
