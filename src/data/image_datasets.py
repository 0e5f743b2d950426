"""Still images of a prepared ImageNet-layout folder: listing, decoding, and the folder and tar-shard datasets.

Layout (the issue-28 contract): `classes.txt` (wnid per line, label = line number), `train/<wnid>/<file>`,
`val/<wnid>/<file>` or flat `val/<file>` + `val_labels.txt` ("<file name> <wnid>" per line), optional
`quarantine.txt` (files skipped) and `shards/` (WebDataset-style tars + `shards.json`, written by
`python -m data_prep.image_shards`). An image is one file read once into memory and decoded by torchvision:
`decode_jpeg` for JPEG bytes (CMYK and grey become RGB), `decode_image` for anything else (a PNG under a
.JPEG name, as in the real ImageNet train set).

Failure policy, as for videos (src/data/datasets.py): in training an image that cannot be read, decoded or
transformed is replaced by another one and counted in the sample's `decode_failures`; in evaluation it is
returned as failed (`failed_index` / `failed_reason` in the batch) and skipped. Augmentation is seeded per
sample from (seed, epoch, position), never from worker state.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import posixpath
import re
import tarfile
import warnings
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from src.data.datasets import EMPTY_SHARD, sample_seed
from src.data.decoding.base import DecodeError
from src.data.index import IndexContractError, fingerprint_of
from src.data.transforms import seeded

log = logging.getLogger("lightning.pytorch").getChild("data")

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
SPLITS = ("train", "val")
VAL_LABELS = "val_labels.txt"
JPEG_MAGIC = b"\xff\xd8\xff"
PREPARE_FIX = "run `make prepare-imagenet` (or `python -m data_prep.synthetic_images` for a synthetic set)"

SHARDS_DIR = "shards"
SHARDS_JSON = "shards.json"
SHARDS_FORMAT = 1
SHARD_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png")
MAX_MEMBER_BYTES = 64 * 2**20  # a larger member is no ImageNet image: refused (as a failure), never read


# ------------------------------------------------------------------------------------------ listing
@dataclass(frozen=True)
class ImageEntry:
    """One image of a split: `relpath` relative to the root ("train/n01440764/x.JPEG"), its label."""

    path: Path
    relpath: str
    label: int


def missing_root_error(what: Path) -> IndexContractError:
    """The error for a root that is not a prepared image folder: the path and the command that makes one."""
    return IndexContractError(f"{what} not found: not a prepared ImageNet-layout folder; {PREPARE_FIX}")


def _is_image(name: str) -> bool:
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES


def _val_labels_file(root: Path) -> Path | None:
    for candidate in (root / VAL_LABELS, root / "val" / VAL_LABELS):
        if candidate.is_file():
            return candidate
    return None


def list_split(root: Path, split: str, classes: Sequence[str]) -> list[ImageEntry]:
    """Every image of `split` ("train" or "val"), ordered by (label, file name): torchvision ImageFolder's
    order. A flat val folder is labelled by val_labels.txt. Errors name the file and the fix."""
    root = Path(root)
    folder = root / split
    if not folder.is_dir():
        raise missing_root_error(folder)
    label_of = {name: i for i, name in enumerate(classes)}
    items = sorted(folder.iterdir(), key=lambda p: p.name)
    subdirs = [p for p in items if p.is_dir() and not p.name.startswith(".")]
    flat = [p for p in items if p.is_file() and _is_image(p.name)]
    if split == "val" and flat:
        if subdirs:
            raise IndexContractError(
                f"{folder} holds both images and class folders; keep one layout (class folders, or flat files "
                f"with {VAL_LABELS})"
            )
        return _flat_val(root, flat, label_of)
    entries, others = [], 0
    for sub in subdirs:
        if sub.name not in label_of:
            raise IndexContractError(
                f"{sub}: folder {sub.name!r} is not a class of {root / 'classes.txt'}; remove it or prepare the "
                f"folder again ({PREPARE_FIX})"
            )
        names = sorted(p.name for p in sub.iterdir())
        for name in names:
            if _is_image(name):
                entries.append(ImageEntry(sub / name, f"{split}/{sub.name}/{name}", label_of[sub.name]))
            else:
                others += 1
    if others:
        log.info("%s: ignored %d files that are not images (%s)", folder, others, "/".join(IMAGE_SUFFIXES))
    entries.sort(key=lambda e: (e.label, posixpath.basename(e.relpath)))
    return entries


def _flat_val(root: Path, files: list[Path], label_of: dict[str, int]) -> list[ImageEntry]:
    labels_file = _val_labels_file(root)
    if labels_file is None:
        raise IndexContractError(
            f"{root / 'val'} holds images without class folders but {root / VAL_LABELS} is missing "
            f'("<file name> <wnid>" per line); {PREPARE_FIX}'
        )
    labels: dict[str, int] = {}
    text = labels_file.read_bytes().decode("utf-8-sig")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        match = re.fullmatch(r"(.+?)\s+(\S+)", line.strip())  # the name may hold spaces, the wnid not
        name, wnid = match.groups() if match else ("", "")
        if not name or wnid not in label_of:
            raise IndexContractError(
                f"{labels_file}:{number}: {line!r} is not '<file name> <wnid>' with a wnid of classes.txt"
            )
        labels[name] = label_of[wnid]
    present = {p.name for p in files}
    absent = sorted(set(labels) - present)
    if absent:
        raise IndexContractError(
            f"{labels_file} lists {len(absent)} files that are not in {root / 'val'} (e.g. {absent[:3]}); "
            f"{PREPARE_FIX}"
        )
    unlabelled = sorted(present - set(labels))
    if unlabelled:
        log.warning(
            "%s: %d images have no line in %s and are skipped (e.g. %s)",
            root / "val",
            len(unlabelled),
            labels_file,
            unlabelled[:3],
        )
    entries = [ImageEntry(root / "val" / n, f"val/{n}", labels[n]) for n in labels if n in present]
    entries.sort(key=lambda e: (e.label, posixpath.basename(e.relpath)))
    return entries


def select(
    entries: Sequence[ImageEntry], quarantine: dict[str, str], limit: int | None, where: Path
) -> list[ImageEntry]:
    """`entries` less the quarantined ones (the count logged), then the first `limit` of them."""
    kept = [e for e in entries if e.relpath not in quarantine]
    if len(kept) < len(entries):
        log.info(
            "%s: skipped %d quarantined images listed in quarantine.txt", where, len(entries) - len(kept)
        )
    return kept[:limit] if limit is not None else kept


def listing_text(entries: Iterable[ImageEntry], classes: Sequence[str]) -> str:
    """ "<wnid>/<file name>" per image: the same text for class-folder and flat val layouts."""
    return "".join(f"{classes[e.label]}/{posixpath.basename(e.relpath)}\n" for e in entries)


def classes_text(root: Path) -> str:
    """classes.txt as the fingerprint hashes it."""
    return (Path(root) / "classes.txt").read_bytes().decode("utf-8-sig")


def folder_fingerprint(root: Path, classes: Sequence[str], lists: dict[str, Sequence[ImageEntry]]) -> str:
    """Hash of classes.txt and the train and val file lists (before quarantine and limit): equal for equal
    data, whichever val layout, and stable across runs; shards.json stores the value of the folder it read."""
    return fingerprint_of([classes_text(root)] + [listing_text(lists[s], classes) for s in SPLITS])


# ----------------------------------------------------------------------------------------- decoding
def _reason(err: BaseException) -> str:
    """torchvision's error without its C++ source location."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return re.sub(r"^\w+, \S+:\d+, ", "", text)


def decode_bytes(data: bytes | bytearray, name: str | Path) -> torch.Tensor:
    """Image file bytes -> uint8 RGB (3, H, W); raises DecodeError naming `name` for anything undecodable."""
    if len(data) == 0:
        raise DecodeError(name, "empty file")
    buffer = torch.frombuffer(data if isinstance(data, bytearray) else bytearray(data), dtype=torch.uint8)
    try:
        # torchvision 0.29 marks its codecs deprecated (for torchcodec's): not actionable once per image
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            if bytes(data[:3]) == JPEG_MAGIC:
                image = decode_jpeg(buffer, mode=ImageReadMode.RGB)
            else:  # a PNG (or another format) under a JPEG name
                image = decode_image(buffer, mode=ImageReadMode.RGB)
    except Exception as err:  # torchvision raises RuntimeError for corrupt, truncated or unknown data
        raise DecodeError(name, f"not a decodable image: {_reason(err)}") from None
    if image.ndim == 4:  # an animated format: its first frame
        image = image[0]
    if image.ndim != 3 or image.shape[0] != 3 or min(image.shape[1:]) < 1:
        raise DecodeError(name, f"decoded to shape {tuple(image.shape)}, not an RGB image")
    return image


def read_image(path: Path) -> torch.Tensor:
    """The file at `path`, read once and decoded: uint8 RGB (3, H, W)."""
    try:
        with open(path, "rb") as handle:
            data = bytearray(handle.read())
    except OSError as err:
        raise DecodeError(path, f"cannot read: {err.strerror or err}") from None
    return decode_bytes(data, path)


def _item_failed(index: int, path: str, reason: str) -> dict:
    return {"failed": True, "index": index, "path": path, "reason": reason}


def _as_clip(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) -> (1, 3, 1, H, W): one view of a one-frame clip."""
    return image[None, :, None]


# ------------------------------------------------------------------------------------ folder dataset
class ImageFolderDataset(Dataset):
    """Images of `entries` for mode "train" (keys `(index, seed)` from TrainSampler) or "eval" (int keys).

    train item: `video` (1, 3, 1, H, W) float, `label` (1,), `index`, `decode_failures`;
    eval item: `video` (1, 3, 1, H, W) (one view), `label`, `index`; or `failed=True` with `path` and `reason`.
    """

    def __init__(
        self,
        entries: Sequence[ImageEntry],
        *,
        mode: str,
        transform: Callable[[torch.Tensor], torch.Tensor],
        seed: int = 0,
        max_substitutes: int = 20,
    ) -> None:
        if mode not in ("train", "eval"):
            raise ValueError(f"unknown dataset mode {mode!r}")
        self.entries = list(entries)
        self.mode = mode
        self.transform = transform
        self.seed = seed
        self.max_substitutes = max_substitutes

    def __len__(self) -> int:
        return len(self.entries)

    def path_of(self, row: int) -> str:
        """The file of row `row` (for the failure lists)."""
        return str(self.entries[row].path)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        if not isinstance(key, tuple) and int(key) == EMPTY_SHARD:
            return {"placeholder": True}  # an empty evaluation shard (EvalSampler): dropped by the collate
        index, seed = key if isinstance(key, tuple) else (int(key), sample_seed(self.seed, 0, int(key)))
        if self.mode == "train":
            return self._train_item(index, seed)
        return self._eval_item(index)

    def _train_item(self, index: int, seed: int) -> dict:
        rng = np.random.default_rng(seed)
        failures = 0
        for _ in range(self.max_substitutes + 1):
            entry = self.entries[index]
            try:
                image = read_image(entry.path)
                with seeded(seed):
                    video = self.transform(image)
                break
            except Exception as err:  # any per-image problem: substitute and count (the failure policy)
                failures += 1
                log.warning("train: substituting another image for %s (%s)", entry.path, _message(err))
                index = int(rng.integers(len(self.entries)))
        else:
            raise DecodeError(
                entry.path,
                f"{self.max_substitutes + 1} images in a row failed to decode: check data.root and the files",
            )
        return {
            "video": _as_clip(video),
            "label": torch.tensor([entry.label], dtype=torch.long),
            "index": index,
            "decode_failures": failures,
        }

    def _eval_item(self, index: int) -> dict:
        entry = self.entries[index]
        try:
            video = self.transform(read_image(entry.path))
        except Exception as err:
            log.warning("eval: skipping %s (%s)", entry.path, _message(err))
            return _item_failed(index, str(entry.path), _message(err))
        return {"failed": False, "video": _as_clip(video), "label": entry.label, "index": index}


def _message(err: BaseException) -> str:
    return err.reason if isinstance(err, DecodeError) else f"{type(err).__name__}: {err}"


# --------------------------------------------------------------------------------------- tar shards
class ShardError(IndexContractError):
    """A shard set that is absent, malformed or hostile; the message names the file and the fix."""


class ShardReadError(ShardError):
    """A shard that ends early or cannot be read as a tar stream (the samples after the break are lost)."""


def shard_fix(root: Path) -> str:
    return f"write them with `python -m data_prep.image_shards {root} --overwrite`"


@dataclass(frozen=True)
class Shard:
    """One tar file of a split: `count` samples, the first of them row `offset` of the split."""

    path: Path
    count: int
    offset: int


@dataclass(frozen=True)
class ShardSet:
    """The shards of one split, in shards.json order, and the number of samples used (`total`, after limit)."""

    split: str
    shards: tuple[Shard, ...]
    total: int

    @cached_property
    def _starts(self) -> list[int]:
        return [s.offset for s in self.shards]

    def path_of(self, row: int) -> str:
        """Where row `row` lives: "<shard file> item <position>"."""
        shard = self.shards[max(bisect_right(self._starts, row) - 1, 0)]
        return f"{shard.path} item {row - shard.offset}"


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def quarantine_digest(root: Path) -> str:
    """SHA-256 of quarantine.txt ("" when there is none): shards.json records the list it excluded."""
    path = Path(root) / "quarantine.txt"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def read_shards_meta(root: Path) -> dict:
    """shards.json of `root`, checked against the folder's classes.txt; errors name the file and the fix."""
    root = Path(root)
    path = root / SHARDS_DIR / SHARDS_JSON
    if not path.is_file():
        raise ShardError(f"{path} not found: data.read_from=shards needs tar shards; {shard_fix(root)}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        splits = meta["splits"]
        assert isinstance(splits, dict) and meta.get("format") == SHARDS_FORMAT
    except (ValueError, KeyError, TypeError, AssertionError) as err:
        raise ShardError(
            f"{path} is not a shard list of format {SHARDS_FORMAT} ({err}); {shard_fix(root)}"
        ) from None
    if meta.get("classes_sha256") != sha256_text(classes_text(root)):
        raise ShardError(
            f"{path} was written for another {root / 'classes.txt'} (its labels would be wrong); {shard_fix(root)}"
        )
    if meta.get("quarantine_sha256", "") != quarantine_digest(root):
        log.warning(
            "%s: quarantine.txt changed after the shards were written; the shards still hold what it excluded "
            "then (newly quarantined images are read, and counted if they fail). To drop them, %s",
            path,
            shard_fix(root),
        )
    return meta


def shard_set(root: Path, split: str, meta: dict, limit: int | None = None) -> ShardSet:
    """The shards of `split` listed in `meta` (shards.json), each file checked to exist."""
    root = Path(root)
    listed = meta["splits"].get(split)
    if listed is None:
        raise ShardError(f"{root / SHARDS_DIR / SHARDS_JSON} has no {split!r} split; {shard_fix(root)}")
    shards, offset = [], 0
    for item in listed["shards"]:
        name, count = item.get("file"), item.get("count")
        if not isinstance(name, str) or posixpath.basename(name) != name or name in ("", ".", ".."):
            raise ShardError(f"{root / SHARDS_DIR / SHARDS_JSON}: bad shard file name {name!r}")
        if not isinstance(count, int) or count < 0:
            raise ShardError(f"{root / SHARDS_DIR / SHARDS_JSON}: bad count {count!r} for {name}")
        path = root / SHARDS_DIR / name
        if not path.is_file():
            raise ShardError(f"{path} is listed in {SHARDS_JSON} but missing; {shard_fix(root)}")
        if limit is not None and offset >= limit:
            break
        shards.append(Shard(path, count, offset))
        offset += count
    total = offset if limit is None else min(offset, limit)
    return ShardSet(split, tuple(shards), total)


def _check_member(shard: Path, member: tarfile.TarInfo) -> None:
    """Refuse what our writer never puts in a shard: links, devices, absolute or `..` names."""
    name = member.name
    if name.startswith("/") or ".." in name.split("/") or "\\" in name:
        raise ShardError(f"{shard}: member {name!r} has an absolute or '..' name; refusing this shard")
    if not (member.isfile() or member.isdir()):
        raise ShardError(
            f"{shard}: member {name!r} is a link or special file; shards hold regular files only. "
            "Write them again with python -m data_prep.image_shards"
        )


def sample_key(member_name: str) -> tuple[str, str]:
    """WebDataset's rule: the key is the name up to the first dot of its last component; the rest the type."""
    folder, base = posixpath.split(member_name)
    stem, _, extension = base.partition(".")
    return posixpath.join(folder, stem), extension.lower()


def iter_shard(
    path: Path, keep: Callable[[int], bool] = lambda position: True
) -> Iterator[tuple[int, str, dict[str, bytes]]]:
    """(position, key, {extension: bytes}) for each sample of a tar shard, read as a stream (no seeking).

    Members of one sample are adjacent (same key). Samples whose position `keep` refuses are skipped unread.
    Raises ShardError for hostile members, ShardReadError when the stream breaks (with the samples so far
    already yielded)."""
    position, key, parts = -1, None, {}
    try:
        with tarfile.open(path, mode="r|") as tar:
            for member in tar:
                _check_member(path, member)
                if member.isdir():
                    continue
                member_key, extension = sample_key(member.name)
                if member_key != key:
                    if key is not None and keep(position):
                        yield position, key, parts
                    position, key, parts = position + 1, member_key, {}
                if not keep(position):
                    continue
                if member.size > MAX_MEMBER_BYTES:
                    parts[extension] = b""  # refused unread: decodes as a failure ("empty file")
                    parts["error"] = f"member {member.name} holds {member.size} bytes (> {MAX_MEMBER_BYTES})"
                    continue
                handle = tar.extractfile(member)
                parts[extension] = handle.read() if handle is not None else b""
            if key is not None and keep(position):
                yield position, key, parts
    except ShardError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError) as err:
        raise ShardReadError(f"{path}: the tar stream breaks after sample {position} ({err})") from None


def decode_sample(parts: dict[str, bytes], name: str, num_classes: int) -> tuple[torch.Tensor, int]:
    """A shard sample's image (uint8 (3, H, W)) and label; DecodeError naming `name` for anything wrong."""
    if "error" in parts:
        raise DecodeError(name, str(parts["error"]))
    extension = next((e for e in SHARD_IMAGE_EXTENSIONS if e in parts), None)
    if extension is None:
        raise DecodeError(name, f"no image member (.{'/.'.join(SHARD_IMAGE_EXTENSIONS)}) in the shard")
    try:
        label = int(parts["cls"].decode("ascii").strip())
    except (KeyError, UnicodeDecodeError, ValueError):
        raise DecodeError(name, "no readable .cls label member in the shard") from None
    if not 0 <= label < num_classes:
        raise DecodeError(name, f"label {label} outside 0..{num_classes - 1} (classes.txt)")
    return decode_bytes(parts[extension], f"{name}.{extension}"), label


def shuffled(stream: Iterable, size: int, rng: np.random.Generator) -> Iterator:
    """WebDataset's shuffle buffer: keep `size` items, emit a random one as each new item arrives."""
    buffer: list = []
    for item in stream:
        if len(buffer) < size:
            buffer.append(item)
            continue
        k = int(rng.integers(size))
        yield buffer[k]
        buffer[k] = item
    rng.shuffle(buffer)
    yield from buffer


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def _split_evenly(count: int, parts: int, part: int) -> tuple[int, int]:
    """[start, stop) of part `part` of `parts` contiguous, near-equal pieces of range(count)."""
    return count * part // parts, count * (part + 1) // parts


_MISSING = object()  # a sample a broken shard did not deliver (counted as a failure in training)


class ImageShardDataset(IterableDataset):
    """Samples streamed from the tar shards of one split, split over DDP ranks and DataLoader workers.

    train: each epoch the shards are permuted (seed, epoch); worker `w` of rank `r` reads every W-th of them
    (W = ranks x workers; with fewer shards than W, every W-th sample of all of them) through a shuffle
    buffer, and yields a fixed quota: the rank's ceil(N / world) images in whole batches (the last, partial
    one dropped as the folder path does), so every rank runs the same number of steps; a worker that runs out
    reads its shards again. Items as `ImageFolderDataset`'s, seeded from (seed, epoch, pass x N + row).
    eval: rank `r` takes rows [r N / world, (r+1) N / world) (each row exactly once overall), split into
    whole batches over its workers; an empty rank yields one placeholder, as EvalSampler does.
    """

    def __init__(
        self,
        shards: ShardSet,
        *,
        mode: str,
        transform: Callable[[torch.Tensor], torch.Tensor],
        num_classes: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        max_substitutes: int = 20,
    ) -> None:
        if mode not in ("train", "eval"):
            raise ValueError(f"unknown dataset mode {mode!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        if mode == "train" and shards.total < 1:
            raise ShardError(f"the {shards.split!r} shards hold no images (after data.limit)")
        self.shards = shards
        self.mode = mode
        self.transform = transform
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.max_substitutes = max_substitutes
        # shared memory: persistent workers see the epoch the loop sets after they started
        self._epoch = torch.zeros((), dtype=torch.long).share_memory_()

    # ------------------------------------------------------------------------------------ sizes
    def set_epoch(self, epoch: int) -> None:
        """Choose the shard order and shuffle of epoch `epoch` (called through `EpochLoader`)."""
        self._epoch.fill_(epoch)

    @property
    def rank_range(self) -> tuple[int, int]:
        """Rows [start, stop) this rank evaluates: EvalSampler's contiguous shard."""
        return _split_evenly(self.shards.total, self.world_size, self.rank)

    def _train_items(self) -> int:
        quota = math.ceil(self.shards.total / self.world_size)
        return quota if quota <= self.batch_size else quota // self.batch_size * self.batch_size

    def __len__(self) -> int:
        """Images this rank yields per epoch (train), or rows it evaluates (at least 1: the placeholder)."""
        if self.mode == "train":
            return self._train_items()
        start, stop = self.rank_range
        return max(stop - start, 1)

    def eval_total(self) -> int:
        """Rows of this rank's evaluation shard (0 when empty)."""
        start, stop = self.rank_range
        return stop - start

    def path_of(self, row: int) -> str:
        return self.shards.path_of(row)

    def _worker_batches(self, items: int, worker: int, workers: int) -> tuple[int, int]:
        """[start, stop) of the `items` this worker yields: whole batches, split over the workers."""
        batches = math.ceil(items / self.batch_size)
        first, last = _split_evenly(batches, workers, worker)
        return min(first * self.batch_size, items), min(last * self.batch_size, items)

    # ---------------------------------------------------------------------------------- iterate
    def __iter__(self) -> Iterator[dict]:
        worker, workers = _worker()
        if self.mode == "train":
            return self._train_iter(worker, workers)
        return self._eval_iter(worker, workers)

    def _stream(self, epoch: int, cycle: int, consumer: int, consumers: int) -> Iterator[tuple]:
        """(row, key, parts) of this consumer's samples in one pass; a broken shard's lost samples as _MISSING."""
        order = np.random.default_rng([self.seed, epoch, cycle]).permutation(len(self.shards.shards))
        shards = [self.shards.shards[i] for i in order]
        whole = len(shards) >= consumers
        mine = shards[consumer::consumers] if whole else shards
        seen = 0  # samples before the current one, over the shards read (the per-sample split when not whole)
        for shard in mine:
            first = seen

            def keep(position: int, shard=shard, first=first) -> bool:
                if position >= shard.count or shard.offset + position >= self.shards.total:
                    return False  # past shards.json's count (or data.limit): never another shard's row
                return whole or (first + position) % consumers == consumer

            delivered = -1
            try:
                for position, key, parts in iter_shard(shard.path, keep):
                    delivered = position
                    yield shard.offset + position, key, parts
            except ShardReadError as err:
                log.warning("train: %s", err)
                wanted = [
                    p for p in range(delivered + 1, shard.count) if keep(p)
                ]  # what the broken stream did not deliver
                yield from ((shard.offset + p, None, _MISSING) for p in wanted)
            seen += shard.count

    def _train_iter(self, worker: int, workers: int) -> Iterator[dict]:
        epoch = int(self._epoch)
        start, stop = self._worker_batches(self._train_items(), worker, workers)
        quota = stop - start
        if quota == 0:
            return
        consumer, consumers = self.rank * workers + worker, self.world_size * workers
        rng = np.random.default_rng([self.seed, epoch, consumer, 1])
        yielded = pending = in_a_row = 0
        for cycle in itertools.count():
            good_this_cycle = 0
            samples = shuffled(self._stream(epoch, cycle, consumer, consumers), self.shuffle_buffer, rng)
            for row, key, parts in samples:
                if parts is _MISSING:
                    pending += 1  # lost with a broken shard: counted, not retried
                    continue
                try:
                    image, label = decode_sample(parts, key, self.num_classes)
                    with seeded(sample_seed(self.seed, epoch, cycle * self.shards.total + row)):
                        video = self.transform(image)
                except Exception as err:  # the failure policy: skip to the next sample, count it
                    pending += 1
                    in_a_row += 1
                    name = f"{self.shards.path_of(row)} ({key})"
                    log.warning("train: substituting another image for %s (%s)", name, _message(err))
                    if in_a_row > self.max_substitutes:
                        raise DecodeError(
                            name, f"{in_a_row} images in a row failed to decode: check the shards"
                        ) from None
                    continue
                in_a_row = 0
                good_this_cycle += 1
                yield {
                    "video": _as_clip(video),
                    "label": torch.tensor([label], dtype=torch.long),
                    "index": row,
                    "decode_failures": pending,
                }
                pending, yielded = 0, yielded + 1
                if yielded == quota:
                    return
            if good_this_cycle == 0:
                raise ShardError(
                    f"no readable image in the {self.shards.split!r} shards this worker reads "
                    f"({len(self.shards.shards)} shards); check {self.shards.shards[0].path.parent}"
                )

    def _eval_iter(self, worker: int, workers: int) -> Iterator[dict]:
        low, high = self.rank_range
        if high == low:
            if worker == 0:
                yield {"placeholder": True}  # every rank runs an evaluation step (see EvalSampler)
            return
        first, last = self._worker_batches(high - low, worker, workers)
        first, last = low + first, low + last
        for shard in self.shards.shards:
            if shard.offset >= last or shard.offset + shard.count <= first:
                continue

            def keep(position: int, shard=shard) -> bool:
                return position < shard.count and first <= shard.offset + position < last

            done: set[int] = set()
            reason = f"missing from {shard.path} (it holds fewer samples than {SHARDS_JSON} says)"
            try:
                for position, key, parts in iter_shard(shard.path, keep):
                    row = shard.offset + position
                    done.add(row)
                    yield self._eval_item(row, key, parts)
            except ShardReadError as err:
                log.warning("eval: %s", err)
                reason = str(err)
            wanted = range(max(first, shard.offset), min(last, shard.offset + shard.count))
            for row in wanted:
                if row not in done:
                    yield _item_failed(row, self.shards.path_of(row), reason)

    def _eval_item(self, row: int, key: str, parts: dict[str, bytes]) -> dict:
        try:
            image, label = decode_sample(parts, key, self.num_classes)
            video = self.transform(image)
        except Exception as err:
            name = f"{self.shards.path_of(row)} ({key})"
            log.warning("eval: skipping %s (%s)", name, _message(err))
            return _item_failed(row, name, f"{key}: {_message(err)}")
        return {"failed": False, "video": _as_clip(video), "label": label, "index": row}
