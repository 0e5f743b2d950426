"""Safe, all-or-nothing extraction of tar / tar.gz / zip archives, including multi-part tar.gz pieces.

Every member is checked before it is written: absolute paths, `..` components, symbolic and hard links (no
dataset archive needs one, and links left by one archive let the next one write through them, outside the
target), device files and FIFOs are refused with the member named. Members are written into a temporary folder
inside the target and moved into place only after the whole archive (gzip trailer and CRC included) has been
read, and only if the resolved destination of every file lies inside the target, whatever earlier archives
or other programs left there; a truncated or hostile archive never leaves half its content looking extracted.
A marker file records finished archives so a re-run skips them.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import re
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from data_prep.download import DownloadItem, download

log = logging.getLogger(__name__)


class ExtractError(RuntimeError):
    """An archive that was refused or could not be read; names the archive, the member and the reason."""

    def __init__(self, archive: str | Path, reason: str, member: str | None = None, corrupt: bool = False):
        where = f" (member {member!r})" if member else ""
        super().__init__(f"{archive}{where}: {reason}")
        self.archive, self.member, self.reason = str(archive), member, reason
        self.corrupt = corrupt  # truncated or unreadable (a new download may help), not refused as hostile


class MultiPartReader(io.RawIOBase):
    """Read several files one after the other as one stream (SSv2's `20bn-something-something-v2-??`)."""

    def __init__(self, parts: Sequence[Path]):
        super().__init__()
        self.parts = [Path(p) for p in parts]
        self._index = 0
        self._file = open(self.parts[0], "rb") if self.parts else None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._file is not None:
            n = self._file.readinto(buffer)
            if n:
                return n
            self._file.close()
            self._index += 1
            self._file = open(self.parts[self._index], "rb") if self._index < len(self.parts) else None
        return 0

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        super().close()


def _check_name(archive: str, name: str) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise ExtractError(archive, "absolute path refused; an archive member must be relative", name)
    if ".." in path.parts:
        raise ExtractError(archive, "'..' in a member path refused; it would write outside the target", name)
    return path


def check_tar_member(archive: str, member: tarfile.TarInfo) -> None:
    _check_name(archive, member.name)
    if member.issym() or member.islnk():
        kind = "symbolic link" if member.issym() else "hard link"
        raise ExtractError(
            archive,
            f"{kind} to {member.linkname!r} refused: dataset archives hold plain files and folders only, and a "
            "link can lead later members or archives outside the target. Get the archive from the official source",
            member.name,
        )
    if not (member.isfile() or member.isdir()):
        raise ExtractError(archive, "device file / FIFO members are refused", member.name)


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _inside(path: Path, root: Path) -> bool:
    """Whether `path`, with every existing link on the way resolved, lies inside the resolved `root`."""
    real = Path(os.path.realpath(path))
    return real == root or root in real.parents


def _check_destinations(label: str, src: Path, dest: Path) -> None:
    """Refuse the whole archive if any member would land outside `dest` once links already in `dest` are
    followed (left by an earlier archive, or by anything else). Folders are what a write goes through, so each
    folder of the archive is resolved (SSv1 has 11 M files but 110 k folders); a file itself is replaced by an
    atomic rename, which replaces a link of the same name instead of following it."""
    root = Path(os.path.realpath(dest))
    for current, dirs, _files in os.walk(src):
        rel = Path(current).relative_to(src)
        for name in dirs:
            member = rel / name
            target = dest / member
            if not _inside(target, root):
                raise ExtractError(
                    label,
                    f"would be written through a link to {os.path.realpath(target)}, outside the target {root}; "
                    "refused. Remove the links in the target folder (no dataset needs them) and extract again",
                    str(member),
                )


def _move_tree(src: Path, dest: Path) -> None:
    """Move the content of `src` into `dest`, replacing files of the same name (destinations checked first)."""
    for root, _dirs, files in os.walk(src):
        rel = Path(root).relative_to(src)
        (dest / rel).mkdir(parents=True, exist_ok=True)
        for name in files:
            os.replace(Path(root) / name, dest / rel / name)


def _extract_tar(label: str, stream, tmp: Path, progress: bool) -> int:
    count = 0
    with (
        tarfile.open(fileobj=stream, mode="r|") as tar,
        tqdm(desc=f"extract {label}", unit="file", disable=not progress) as bar,
    ):
        for member in tar:
            check_tar_member(label, member)
            tar.extract(member, tmp, filter="data")
            count += member.isfile()
            bar.update(1)
    return count


def _extract_zip(label: str, path: Path, tmp: Path) -> int:
    count = 0
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            _check_name(label, info.filename)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise ExtractError(label, "symlink members are refused in zip archives", info.filename)
            archive.extract(info, tmp)
            count += not info.is_dir()
    return count


def marker_path(dest: Path, label: str) -> Path:
    """The file that says `label` was fully extracted into `dest`."""
    return Path(dest) / f".extracted-{label}"


def safe_extract(archive: Path | Sequence[Path], dest: Path, *, progress: bool = False) -> int:
    """Extract a tar(.gz)/zip archive, or the ordered parts of one split tar(.gz), into `dest`.

    Returns the number of files written (0 when a marker says it was done before; SSv1 has 11 M files, so
    no name list is kept).
    Raises ExtractError naming the member for a hostile archive, or the archive for a truncated one;
    in both cases `dest` is left as it was.
    """
    parts = [Path(archive)] if isinstance(archive, str | Path) else [Path(p) for p in archive]
    if not parts:
        raise ExtractError(str(dest), "no archive parts given")
    label = parts[0].name if len(parts) == 1 else re.sub(r"[-_.]?\d+$", "", parts[0].name) or parts[0].name
    dest = Path(dest)
    marker = marker_path(dest, label)
    if marker.exists():
        return 0
    for part in parts:
        if not part.is_file():
            raise ExtractError(part, "archive not found; download it first")
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / f".tmp-extract-{label}"
    shutil.rmtree(tmp, ignore_errors=True)  # what a killed run left behind
    tmp.mkdir()
    try:
        if len(parts) == 1 and zipfile.is_zipfile(parts[0]):
            count = _extract_zip(label, parts[0], tmp)
        else:
            raw = MultiPartReader(parts)
            buffered = io.BufferedReader(raw, buffer_size=1 << 20)
            try:
                if _is_gzip(parts[0]):
                    with gzip.GzipFile(fileobj=buffered) as gz:
                        count = _extract_tar(label, gz, tmp, progress)
                        while gz.read(1 << 20):  # read to the gzip trailer: a truncated file raises here
                            pass
                else:
                    count = _extract_tar(label, buffered, tmp, progress)
            finally:
                buffered.close()
    except ExtractError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except tarfile.FilterError as err:  # tarfile's own safety filter: name the member, it is not corruption
        shutil.rmtree(tmp, ignore_errors=True)
        member = getattr(getattr(err, "tarinfo", None), "name", None)
        raise ExtractError(label, f"refused by the tar safety filter: {err}", member) from err
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, gzip.BadGzipFile, OSError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ExtractError(
            label,
            f"truncated or corrupt archive ({type(err).__name__}: {err}); nothing was extracted, download it again",
            corrupt=True,
        ) from err
    try:
        _check_destinations(label, tmp, dest)
    except ExtractError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _move_tree(tmp, dest)
    shutil.rmtree(tmp, ignore_errors=True)
    marker.write_text(f"{count} files\n", encoding="utf-8")
    return count


def extract_downloads(
    jobs: Sequence[tuple[DownloadItem, Path]], *, delete_archives: bool = False, **download_kw
) -> None:
    """Extract each downloaded archive `item.dest` into its folder; one that turns out truncated or corrupt is
    deleted and fetched again once. An archive still bad after that is deleted too (a re-run, once the mirror is
    fixed, fetches it afresh instead of reusing it) and, after all the others are extracted, one ExtractError
    lists every bad part. Hostile archives stop at once."""
    bad: list[str] = []
    for item, folder in jobs:
        archive = Path(item.dest)
        try:
            try:
                safe_extract(archive, folder)
            except ExtractError as err:
                if not err.corrupt:
                    raise
                log.warning("%s; fetching %s again", err, item.url)
                archive.unlink(missing_ok=True)
                download(item, **download_kw)
                safe_extract(archive, folder)
        except ExtractError as err:
            if not err.corrupt:
                raise
            archive.unlink(missing_ok=True)
            bad.append(f"{item.url} ({err.reason})")
            continue
        if delete_archives:
            archive.unlink(missing_ok=True)
    if bad:
        raise ExtractError(
            "download",
            f"{len(bad)} archive(s) truncated or corrupt even after a fresh download (deleted, so a re-run fetches "
            "them again once the mirror serves them whole):\n  " + "\n  ".join(bad),
            corrupt=True,
        )
