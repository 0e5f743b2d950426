"""prepare-imagenet on the miniature official ILSVRC2012 archives gives back the generated layout; hostile
archives are refused by member; a rerun does nothing; the image doctor repairs, quarantines and survives."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from data_prep import image_doctor
from data_prep.extract import ExtractError
from data_prep.imagenet import DEVKIT_TAR, TRAIN_TAR, VAL_TAR, ImagenetError, main, prepare, read_devkit
from data_prep.synthetic_images import generate, write_official_archives
from src.data.index import read_classes, read_quarantine

OPTIONS = dict(classes=4, train_per_class=4, val_per_class=3, size=24, seed=3, corrupt=True)


def _tree(root: Path) -> dict[str, bytes]:
    """Every file of the prepared layout (images, originals kept by the doctor, class lists, quarantine)."""
    files = {
        p.relative_to(root).as_posix(): p.read_bytes()
        for folder in ("train", "val", "replaced")
        for p in sorted((root / folder).rglob("*"))
        if p.is_file()
    }
    for name in ("classes.txt", "synset_words.txt", "quarantine.txt"):
        files[name] = (root / name).read_bytes()
    return files


def _snapshot(folder: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("archives")
    write_official_archives(folder, **OPTIONS)
    return folder


@pytest.fixture(scope="module")
def expected(tmp_path_factory) -> Path:
    """The layout written by the generator directly, after the image doctor (as prepare-imagenet ends)."""
    root = tmp_path_factory.mktemp("expected") / "bench"
    generate(root, **OPTIONS)
    image_doctor.doctor(root, workers=1, progress=False)
    return root


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, archives) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("prepared") / "imagenet"
    return root, prepare(archives, root, workers=2, progress=False)


def _copy_archives(archives: Path, dest: Path) -> Path:
    dest.mkdir()
    for name in (TRAIN_TAR, VAL_TAR, DEVKIT_TAR):
        shutil.copy(archives / name, dest / name)
    return dest


# ----------------------------------------------------------------------------------------------- the result


@pytest.mark.timeout(60)
def test_prepared_archives_give_the_generated_layout_byte_for_byte(prepared, expected):
    root, summary = prepared
    assert _tree(root) == _tree(expected)
    assert summary["complete"] and not summary["already_prepared"]
    assert summary["counts"] == {"train": 16, "val": 12} and summary["num_classes"] == 4
    assert summary["doctor"] == {"checked": 28, "ok": 25, "reencoded": 2, "quarantined": 1}


def test_labels_are_the_sorted_wnids_and_val_follows_the_ground_truth(prepared, archives):
    root, _ = prepared
    synsets, truth = read_devkit(archives / DEVKIT_TAR)
    assert len(synsets) == 4  # the 3 non-leaf synsets of meta.mat are not classes
    by_id = [s.wnid for s in synsets]
    assert read_classes(root) == sorted(by_id) != by_id  # ILSVRC2012_ID order is not the label order
    words = dict(line.split(" ", 1) for line in (root / "synset_words.txt").read_text().splitlines())
    assert words == {s.wnid: s.words for s in synsets}
    for number, ilsvrc_id in enumerate(truth, 1):
        wnid = synsets[ilsvrc_id - 1].wnid
        assert (root / "val" / wnid / f"ILSVRC2012_val_{number:08d}.JPEG").is_file()


def test_bad_images_are_reencoded_or_quarantined_and_never_stop_the_run(prepared):
    root, _ = prepared
    cmyk, png, truncated = (f"train/{w}/{w}_0.JPEG" for w in ("n00000020", "n00000030", "n00000010"))
    quarantine = read_quarantine(root)
    assert list(quarantine) == [truncated] and "truncated" in quarantine[truncated].lower()
    for path in (cmyk, png):
        with Image.open(root / path) as image:
            assert (image.format, image.mode) == ("JPEG", "RGB")
            image.load()
    with Image.open(root / "replaced" / cmyk) as image:
        assert image.mode == "CMYK"
    with Image.open(root / "replaced" / png) as image:
        assert image.format == "PNG"
    assert (root / truncated).exists()  # quarantined files stay in place; the DataModule skips them


def test_a_rerun_on_the_complete_folder_does_nothing(prepared, archives, capsys):
    root, _ = prepared
    before = _snapshot(root)
    assert prepare(archives, root, progress=False)["already_prepared"] is True
    assert main(["--archives", str(archives), "--out", str(root), "--quiet"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert _snapshot(root) == before


@pytest.mark.timeout(60)
def test_a_run_stopped_by_a_truncated_archive_continues_after_a_new_download(tmp_path, archives, expected):
    folder = _copy_archives(archives, tmp_path / "archives")
    whole = (folder / TRAIN_TAR).read_bytes()
    (folder / TRAIN_TAR).write_bytes(whole[: int(len(whole) * 0.6)])
    root = tmp_path / "imagenet"
    with pytest.raises(ImagenetError, match="truncated or corrupt.*download the archive again"):
        prepare(folder, root, workers=1, progress=False)
    done = sorted(p.name for p in (root / "train").iterdir())
    assert 0 < len(done) < 4 and not any(name.startswith(".") for name in done)  # whole classes only
    (folder / TRAIN_TAR).write_bytes(whole)  # the new download
    summary = prepare(folder, root, workers=1, progress=False)
    assert summary["train_classes_found_done"] == len(done) and summary["train_classes_written"] == 4 - len(
        done
    )
    assert _tree(root) == _tree(expected)


def test_flat_val_layout_and_switching_layout_needs_overwrite(tmp_path, archives, expected):
    root = tmp_path / "imagenet"
    summary = prepare(archives, root, val_layout="flat", workers=1, progress=False)
    assert summary["counts"]["val"] == 12 and all(p.is_file() for p in (root / "val").iterdir())
    labels = dict(line.split(" ") for line in (root / "val_labels.txt").read_text().splitlines())
    expected_labels = {p.name: p.parent.name for p in (expected / "val").rglob("*.JPEG")}
    assert labels == expected_labels
    with pytest.raises(ImagenetError, match="--val-layout flat; pass --overwrite"):
        prepare(archives, root, val_layout="folders", progress=False)
    prepare(archives, root, val_layout="folders", overwrite=True, workers=1, progress=False)
    assert _tree(root) == _tree(expected) and not (root / "val_labels.txt").exists()


# ----------------------------------------------------------------------------------------------- bad input


def test_a_missing_devkit_is_named_with_where_to_get_it(tmp_path, archives, capsys):
    folder = _copy_archives(archives, tmp_path / "archives")
    (folder / DEVKIT_TAR).unlink()
    with pytest.raises(ImagenetError, match=DEVKIT_TAR.replace(".", r"\.")) as err:
        prepare(folder, tmp_path / "imagenet", progress=False)
    assert "image-net.org" in str(err.value) and TRAIN_TAR not in str(err.value)
    assert not (tmp_path / "imagenet").exists()  # nothing is created before the archives are all there
    assert main(["--archives", str(folder), "--out", str(tmp_path / "imagenet")]) == 2
    assert "Development kit" in capsys.readouterr().err


def test_a_folder_with_train_or_val_it_did_not_write_is_refused(tmp_path, archives):
    root = tmp_path / "imagenet"
    (root / "train" / "mine").mkdir(parents=True)
    with pytest.raises(ImagenetError, match="did not write"):
        prepare(archives, root, progress=False)
    assert (root / "train" / "mine").is_dir()


def _member(name: str, data: bytes = b"", symlink: str | None = None) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    if symlink is not None:
        info.type, info.linkname = tarfile.SYMTYPE, symlink
    else:
        info.size = len(data)
    return info, data


def _with_member(tar_bytes: bytes, member: tarfile.TarInfo, data: bytes, at: int = 1) -> bytes:
    """The tar `tar_bytes` with one more member at position `at`."""
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else b"") for m in tar.getmembers()]
    members.insert(at, (member, data))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, payload in members:
            tar.addfile(info, io.BytesIO(payload) if info.isfile() else None)
    return out.getvalue()


def _add_hostile_member(folder: Path, archive: str, name: str, symlink: str | None) -> None:
    """Add the member to the train or val tar, or ("inner") to the first per-class tar in the train tar."""
    hostile = _member(name, b"evil", symlink)
    if archive != "inner":
        path = folder / archive
        path.write_bytes(_with_member(path.read_bytes(), *hostile))
        return
    path = folder / TRAIN_TAR
    with tarfile.open(path) as outer:
        first = outer.getmembers()[0]
        inner = _with_member(outer.extractfile(first).read(), *hostile)
    path.write_bytes(
        _with_member(path.read_bytes(), *_member(first.name, inner), at=0)
    )  # replaces the first:
    with tarfile.open(path) as outer:  # a tar keeps the last of two same-named members; drop the old one
        members = [(m, outer.extractfile(m).read()) for m in outer.getmembers()]
    del members[1]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, payload in members:
            tar.addfile(info, io.BytesIO(payload))
    path.write_bytes(out.getvalue())


@pytest.mark.parametrize(
    ("archive", "name", "symlink", "message"),
    [
        (TRAIN_TAR, "../evil.JPEG", None, "'..'"),
        (TRAIN_TAR, "ABSOLUTE", None, "absolute path"),
        (TRAIN_TAR, "n00000010.tar", "../../outside", "symbolic link to '../../outside' refused"),
        ("inner", "../../x", None, "'..'"),
        ("inner", "nested/y.JPEG", None, "flat name"),
        (VAL_TAR, "ILSVRC2012_val_00000001.JPEG", "/etc/passwd", "symbolic link to '/etc/passwd' refused"),
        (VAL_TAR, "../evil.JPEG", None, "'..'"),
    ],
)
def test_hostile_members_are_refused_by_name_and_nothing_is_written_outside(
    tmp_path, archives, archive, name, symlink, message, capsys
):
    folder = _copy_archives(archives, tmp_path / "archives")
    name = str(tmp_path / "evil.JPEG") if name == "ABSOLUTE" else name
    _add_hostile_member(folder, archive, name, symlink)
    root = tmp_path / "imagenet"
    before = {p for p in tmp_path.rglob("*") if root not in (p, *p.parents)}
    with pytest.raises(ExtractError, match=message) as err:
        prepare(folder, root, workers=1, progress=False)
    assert err.value.member == name
    after = {p for p in tmp_path.rglob("*") if root not in (p, *p.parents)}
    assert after == before  # nothing new anywhere outside ROOT
    assert not [p for p in root.rglob("*") if p.name in ("x", "y.JPEG", "evil.JPEG") or p.is_symlink()]
    assert not [p for p in root.rglob(".tmp-*")]  # no half-written class or val folder is left
    assert main(["--archives", str(folder), "--out", str(root), "--quiet"]) == 2
    assert name in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- the doctor


def crash_on_boom(root: str, relpath: str) -> dict:
    """A decoder that kills its process on one file (as a segfaulting codec would)."""
    if "boom" in relpath:
        os.abort()
    return image_doctor.check_image(root, relpath)


@pytest.mark.timeout(60)
def test_the_doctor_survives_a_crashing_decoder_and_a_rerun_finds_the_same(tmp_path, capsys):
    root = tmp_path / "bench"
    generate(root, classes=3, train_per_class=8, val_per_class=2, size=16, seed=0, corrupt=True)
    shutil.copy(root / "train/n00000030/n00000030_1.JPEG", root / "train/n00000030/boom.JPEG")
    (root / "val/n00000010/garbage.jpg").write_bytes(b"\0" * 100)
    summary = image_doctor.doctor(root, workers=2, progress=False, check=crash_on_boom)
    assert summary["checked"] == 3 * 8 + 3 * 2 + 2
    assert (summary["reencoded"], summary["quarantined"]) == (2, 3)
    quarantine = read_quarantine(root)
    assert "crashed its worker" in quarantine["train/n00000030/boom.JPEG"]
    assert "undecodable" in quarantine["val/n00000010/garbage.jpg"]
    assert "truncated" in quarantine["train/n00000010/n00000010_0.JPEG"].lower()
    again = image_doctor.doctor(root, workers=1, progress=False, check=crash_on_boom)
    assert (again["reencoded"], again["quarantined"]) == (0, 3) and read_quarantine(root) == quarantine
    assert image_doctor.main([str(root), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "32 images, 30 ok, 0 re-encoded, 2 quarantined" in out  # the real decoder: boom.JPEG is fine
