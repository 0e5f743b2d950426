"""Published weights by name: the official UniFormer releases on the Hugging Face Hub, fetched into the hub's cache.

`--model.init_from uniformer_s_k400_16x8` (a catalogue name) or `--model.init_from hf://owner/repo/file.pth[@rev]`
downloads through `huggingface_hub` into its standard cache (`HF_HOME`, resumable; `HF_HUB_OFFLINE=1`: the cache
only), checks the file's SHA-256 against the catalogue where it is known, and returns the local file, which then
loads as a path does. StructViT starts from UniFormer weights exactly (identity StructSA filters), so these are the
starting points of every StructViT fine-tune until StructViT weights are published.

    python -m src.weights list                          # the catalogue: name, use, variant, frames, classes
    python -m src.weights download uniformer_s_k400_16x8 # pre-fetch (e.g. on a login node with network)

`STRUCTVIT_WEIGHTS_CATALOGUE=entries.json` adds entries of your own (a JSON list of objects with the fields of
`PublishedWeights`), e.g. a mirror on an organisation's hub.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass, fields
from pathlib import Path

from src.weights_classes import K400_UNIFORMER, SSV1_SORTED, SSV2_LABELS_JSON

HF_SCHEME = "hf://"
EXTRA_CATALOGUE_ENV = "STRUCTVIT_WEIGHTS_CATALOGUE"


class WeightsError(ValueError):
    """Published weights that cannot be had (unknown name, no network and no cache, a truncated or altered file);
    the message is one line naming the weights and the fix."""


@dataclass(frozen=True)
class PublishedWeights:
    """One published file and what it was trained for.

    Args:
        name: the short name `--model.init_from` takes.
        repo: the Hugging Face Hub model repository.
        filename: the file in it.
        purpose: what the weights are (dataset, pretraining) and what to start from them.
        fits: the variants of this project they load into completely (`src.models.list_models()`).
        frames: clip length they were trained with (frames x sampling stride, or "segment" / "image").
        classes: the head's class names in row order; None: the head is not used (`head_note` says why).
        head_note: where the class order comes from, or why the head is not used.
        sha256: SHA-256 of the file (the Hub's LFS pointer); None where not known: then it is not checked.
        size: bytes, from the same pointer; None where not known.
        source: where the file name, hash and recipe were read.
        revision: branch, tag or commit of `repo`.
    """

    name: str
    repo: str
    filename: str
    purpose: str
    fits: tuple[str, ...]
    frames: str
    classes: tuple[str, ...] | None
    head_note: str
    sha256: str | None
    size: int | None
    source: str
    revision: str = "main"

    @property
    def location(self) -> str:
        """`repo/filename`, as the messages name it."""
        return f"{self.repo}/{self.filename}"


_VIDEO = "https://huggingface.co/Sense-X/uniformer_video"
_IMAGE = "https://huggingface.co/Sense-X/uniformer_image"
_ZOO = "github.com/Sense-X/UniFormer video_classification/README.md and exp/<run>/config.yaml"
_K400_ORDER = "Kinetics-400 in UniFormer's order (src/weights_classes.py K400_UNIFORMER)"
_SSV2_ORDER = "SSv2 in labels.json order (src/weights_classes.py SSV2_LABELS_JSON)"
_SSV1_ORDER = "SSv1 in sorted-name order (src/weights_classes.py SSV1_SORTED)"
_K600_NO_HEAD = (
    "not used: the Kinetics-600 label order of the release cannot be established here (its train lists are not "
    "readable in the repository), and no dataset of this project has its classes"
)
_IN1K_NO_HEAD = (
    "not used: ImageNet-1k image classes (wnid order), which no video dataset of this project shares"
)

CATALOGUE: tuple[PublishedWeights, ...] = (
    PublishedWeights(
        name="uniformer_s_k400_16x8",
        repo="Sense-X/uniformer_video",
        filename="uniformer_small_k400_16x8.pth",
        purpose="UniFormer-S trained on Kinetics-400 (80.8% top-1); start of StructViT-S fine-tunes",
        fits=("uniformer_s", "structvit_s"),
        frames="16 x 8",
        classes=K400_UNIFORMER,
        head_note=_K400_ORDER,
        sha256="d5fd7b0c49ee6a5422ef5d0c884d962c742003bfbd900747485eb99fa269d0db",
        size=85735325,
        source=f"{_VIDEO} commit 703ba75 (LFS pointer); recipe {_ZOO} uniformer_s16x8_k400",
    ),
    PublishedWeights(
        name="uniformer_b_k400_32x4",
        repo="Sense-X/uniformer_video",
        filename="uniformer_base_k400_32x4.pth",
        purpose="UniFormer-B trained on Kinetics-400 (82.9% top-1); start of StructViT-B fine-tunes",
        fits=("uniformer_b", "structvit_b"),
        frames="32 x 4",
        classes=K400_UNIFORMER,
        head_note=_K400_ORDER,
        sha256="b432450566cdc4f50222e4851b5d304bba4444a699cdbb43fa529ceb18ae1f8e",
        size=199525573,
        source=f"{_VIDEO} commit 5065353 (LFS pointer); recipe {_ZOO} uniformer_b32x4_k400",
    ),
    PublishedWeights(
        name="uniformer_s_k600_16x8_nohead",
        repo="Sense-X/uniformer_video",
        filename="uniformer_small_k600_16x8.pth",
        purpose="UniFormer-S trained on Kinetics-600 (82.7% top-1); backbone only",
        fits=("uniformer_s", "structvit_s"),
        frames="16 x 8",
        classes=None,
        head_note=_K600_NO_HEAD,
        sha256="2a9143a63691c442b23f912ed3489e5800fc5916fb7aa1b25322ad5da2466c6f",
        size=86145693,
        source=f"{_VIDEO} commit 0a4d284 (LFS pointer); recipe {_ZOO} uniformer_s16x8_k600",
    ),
    PublishedWeights(
        name="uniformer_b_k600_32x4_nohead",
        repo="Sense-X/uniformer_video",
        filename="uniformer_base_k600_32x4.pth",
        purpose="UniFormer-B trained on Kinetics-600 (84.5% top-1); backbone only",
        fits=("uniformer_b", "structvit_b"),
        frames="32 x 4",
        classes=None,
        head_note=_K600_NO_HEAD,
        sha256="d44685e1d12e5aa413032e7719a8be45b95a19da4e7f76ac0e811f9a6f4825ae",
        size=199935941,
        source=f"{_VIDEO} commit 439ebd0 (LFS pointer); recipe {_ZOO} uniformer_b32x4_k600",
    ),
    PublishedWeights(
        name="uniformer_s_ssv2_16_prek600",
        repo="Sense-X/uniformer_video",
        filename="uniformer_small_sthv2_16_prek600.pth",
        purpose="UniFormer-S fine-tuned on Something-Something V2 from Kinetics-600 (69.4% top-1)",
        fits=("uniformer_s", "structvit_s"),
        frames="16, segment",
        classes=SSV2_LABELS_JSON,
        head_note=_SSV2_ORDER,
        sha256="6b085f96980edf491386893902a5a304a63f4da395d528bcdeef6e7464bd160f",
        size=85271581,
        source=f"{_VIDEO} commit 2b91204 (LFS pointer); recipe {_ZOO} uniformer_s16_sthv2_prek600",
    ),
    PublishedWeights(
        name="uniformer_b_ssv2_32_prek600",
        repo="Sense-X/uniformer_video",
        filename="uniformer_base_sthv2_32_prek600.pth",
        purpose="UniFormer-B fine-tuned on Something-Something V2 from Kinetics-600 (71.2% top-1)",
        fits=("uniformer_b", "structvit_b"),
        frames="32, segment",
        classes=SSV2_LABELS_JSON,
        head_note=_SSV2_ORDER,
        sha256="b7a74408ed230e9671d30da2f596bef84900aaaa325a5793f6cb3ba25f721eae",
        size=199061829,
        source=f"{_VIDEO} commit 97b6ead (LFS pointer); recipe {_ZOO} uniformer_b32_sthv2_prek600",
    ),
    PublishedWeights(
        name="uniformer_s_ssv1_16_prek600",
        repo="Sense-X/uniformer_video",
        filename="uniformer_small_sthv1_16_prek600.pth",
        purpose="UniFormer-S fine-tuned on Something-Something V1 from Kinetics-600 (57.6% top-1)",
        fits=("uniformer_s", "structvit_s"),
        frames="16, segment",
        classes=SSV1_SORTED,
        head_note=_SSV1_ORDER,
        sha256="9a4dbb1e6e2adeb817959edcfbd43cdbb41c7e5c1393f6a3335d0a089d4ba424",
        size=None,  # the Hub page shows 85.3 MB, not the exact byte count: filled in once verified
        source=f"{_VIDEO} blob @ aede221 (LFS details); recipe {_ZOO} uniformer_s16_sthv1_prek600",
    ),
    PublishedWeights(
        name="uniformer_b_ssv1_32_prek600",
        repo="Sense-X/uniformer_video",
        filename="uniformer_base_sthv1_32_prek600.pth",
        purpose="UniFormer-B fine-tuned on Something-Something V1 from Kinetics-600 (61.0% top-1)",
        fits=("uniformer_b", "structvit_b"),
        frames="32, segment",
        classes=SSV1_SORTED,
        head_note=_SSV1_ORDER,
        sha256="8da7f948d7fcc72444dd3783ff12fb18e997d78acc3d70135d14687433448090",
        size=199061829,
        source=f"{_VIDEO} commit 4733286 (LFS pointer); recipe {_ZOO} uniformer_b32_sthv1_prek600",
    ),
    PublishedWeights(
        name="uniformer_s_in1k",
        repo="Sense-X/uniformer_image",
        filename="uniformer_small_in1k.pth",
        purpose="UniFormer-S on ImageNet-1k (82.9% top-1), inflated to 3-D: the start of the Kinetics-400 recipe",
        fits=("uniformer_s", "structvit_s"),
        frames="image (2-D kernels inflated)",
        classes=None,
        head_note=_IN1K_NO_HEAD,
        # Sense-X/uniformer_image commit 06b31d8: its pointer was not readable here; filled in once verified
        sha256=None,
        size=None,
        source=f"{_IMAGE} commit 06b31d8; github.com/Sense-X/UniFormer image_classification/README.md",
    ),
    PublishedWeights(
        name="uniformer_b_in1k",
        repo="Sense-X/uniformer_image",
        filename="uniformer_base_in1k.pth",
        purpose="UniFormer-B on ImageNet-1k (83.9% top-1), inflated to 3-D: the start of Kinetics-400 for -B",
        fits=("uniformer_b", "structvit_b"),
        frames="image (2-D kernels inflated)",
        classes=None,
        head_note=_IN1K_NO_HEAD,
        sha256="82c01015818cb897b00a29352043053df53ce4c02c2d012226b3a8a12ccb60eb",
        size=199378501,
        source=f"{_IMAGE} commit ae70a7d (LFS pointer); github.com/Sense-X/UniFormer image_classification/README.md",
    ),
)


def _extra_entries() -> tuple[PublishedWeights, ...]:
    """Entries from the JSON file `STRUCTVIT_WEIGHTS_CATALOGUE` names (none when it is unset)."""
    path = os.environ.get(EXTRA_CATALOGUE_ENV)
    if not path:
        return ()
    known = {f.name for f in fields(PublishedWeights)}
    try:
        records = json.loads(Path(path).read_text())
        entries = []
        for record in records:
            unknown = sorted(set(record) - known)
            if unknown:
                raise ValueError(f"unknown fields {unknown} (known: {', '.join(sorted(known))})")
            classes = record.get("classes")
            entries.append(
                PublishedWeights(
                    **{
                        **record,
                        "fits": tuple(record["fits"]),
                        "classes": tuple(classes) if classes else None,
                    }
                )
            )
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise WeightsError(f"{EXTRA_CATALOGUE_ENV}={path}: not a catalogue of weights ({err})") from None
    return tuple(entries)


def catalogue() -> dict[str, PublishedWeights]:
    """Every known entry by name: the built-in ones and those of `STRUCTVIT_WEIGHTS_CATALOGUE`."""
    return {entry.name: entry for entry in (*CATALOGUE, *_extra_entries())}


def is_published(source: str) -> bool:
    """Whether `--model.init_from source` names published weights (a catalogue name or an hf:// source)."""
    return str(source).startswith(HF_SCHEME) or str(source) in catalogue()


def looks_like_name(source: str) -> bool:
    """A value with no folder and no file extension: meant as a catalogue name rather than a path."""
    text = str(source)
    return "/" not in text and os.sep not in text and "." not in text


def unknown_name_message(source: str) -> str:
    """The known names, with the closest to `source` first when there is one."""
    names = list(catalogue())
    close = difflib.get_close_matches(str(source), names, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]}? " if close else ""
    return (
        f"{source} is neither a file nor the name of published weights; {hint}known names: {', '.join(names)} "
        "(python -m src.weights list describes them)"
    )


def parse_hf(source: str) -> tuple[str, str, str]:
    """`hf://owner/repo/path/to/file[@revision]` -> (repo, filename, revision)."""
    rest = str(source)[len(HF_SCHEME) :]
    rest, _, revision = rest.partition("@")
    parts = rest.split("/")
    if len(parts) < 3 or not all(parts):
        raise WeightsError(
            "an hf:// source is hf://owner/repo/file (e.g. "
            "hf://Sense-X/uniformer_video/uniformer_small_k400_16x8.pth, optionally @revision)"
        )
    return "/".join(parts[:2]), "/".join(parts[2:]), revision or "main"


def sha256_of(path: str | Path) -> str:
    """SHA-256 of a file, read in 8 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(8 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Fetched:
    """A published file on local disk: where it is and what it is."""

    source: str  # what was asked for: a catalogue name or an hf:// source
    path: Path
    sha256: str
    entry: PublishedWeights | None  # None for an hf:// source


def entry_of(source: str) -> PublishedWeights | None:
    """The catalogue entry of a name (None for an hf:// source); an unknown name is a WeightsError."""
    if str(source).startswith(HF_SCHEME):
        return None
    entry = catalogue().get(str(source))
    if entry is None:
        raise WeightsError(unknown_name_message(source))
    return entry


def fetch(source: str, *, force: bool = False) -> Fetched:
    """The local file of a catalogue name or hf:// source, downloaded into the Hub cache when it is not there.

    The file's size and SHA-256 are checked against the catalogue where it knows them; an hf:// source is only
    checked when it loads. Raises WeightsError (one line: the weights, why, the fix)."""
    entry = entry_of(source)
    if entry is None:
        repo, filename, revision = parse_hf(source)
    else:
        repo, filename, revision = entry.repo, entry.filename, entry.revision
    location = f"{repo}/{filename}"
    path = _download(source, repo, filename, revision, force=force)
    actual_size = path.stat().st_size
    if entry is not None and entry.size is not None and actual_size != entry.size:
        raise WeightsError(
            f"{path} has {actual_size} bytes, the published {location} has {entry.size} (a truncated or "
            f"altered download); delete it and download again: python -m src.weights download {source} --force"
        )
    digest = sha256_of(path)
    if entry is not None and entry.sha256 is not None and digest != entry.sha256:
        raise WeightsError(
            f"{path} has SHA-256 {digest}, the published {location} has {entry.sha256} (a truncated or "
            f"altered download); delete it and download again: python -m src.weights download {source} --force"
        )
    return Fetched(str(source), path, digest, entry)


def _download(source: str, repo: str, filename: str, revision: str, *, force: bool) -> Path:
    """`hf_hub_download` with its failures as one WeightsError line naming the file and how to get it."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    location = f"{repo}/{filename}"
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    # its retries (about 25 s without network) each warn a line: the user gets one error line instead
    hub_log.setLevel(logging.ERROR)
    try:
        return Path(hf_hub_download(repo, filename, revision=revision, force_download=force))
    except LocalEntryNotFoundError as err:
        if constants.is_offline_mode():
            reason = f"HF_HUB_OFFLINE is set and it is not in the cache {constants.HF_HUB_CACHE}"
        else:
            cause = err.__cause__ or err.__context__
            why = str(cause).splitlines()[0][:160] if cause and str(cause) else type(cause or err).__name__
            reason = f"the hub {constants.ENDPOINT} is unreachable: {why}; not in the cache {constants.HF_HUB_CACHE}"
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as err:
        first = str(err).splitlines()[0][:160]
        raise WeightsError(
            f"the hub {constants.ENDPOINT} has no {location} at revision {revision} ({first})"
        ) from None
    except (HfHubHTTPError, OSError) as err:
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
    finally:
        hub_log.setLevel(level)
    raise WeightsError(
        f"cannot download {location} ({reason}); run 'python -m src.weights download {source}' where the hub is "
        "reachable, or set --model.init_from to a local file"
    )


def _describe(entry: PublishedWeights) -> str:
    classes = f"{len(entry.classes)} classes, {entry.head_note}" if entry.classes else entry.head_note
    return (
        f"{entry.name}\n    {entry.purpose}\n    fits: {', '.join(entry.fits)}; frames: {entry.frames}\n"
        f"    head: {classes}\n    file: {entry.location}@{entry.revision}"
        f" (SHA-256 {entry.sha256 or 'not known: not checked'})\n    source: {entry.source}"
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m src.weights list | download NAME [--force]`."""
    parser = argparse.ArgumentParser(prog="python -m src.weights", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the catalogue of published weights")
    download = commands.add_parser("download", help="fetch weights into the Hugging Face cache (HF_HOME)")
    download.add_argument("name", help="a catalogue name or hf://owner/repo/file[@revision]")
    download.add_argument("--force", action="store_true", help="download again even when cached")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            print("\n".join(_describe(entry) for entry in catalogue().values()))
            return 0
        fetched = fetch(args.name, force=args.force)
    except WeightsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{fetched.source}: {fetched.path} (SHA-256 {fetched.sha256})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
