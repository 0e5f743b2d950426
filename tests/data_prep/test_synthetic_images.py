"""The embedded image benchmark: the prepared layout, its determinism and cache, its bad files, the miniature
official archives, and that a tiny model learns it."""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import loadmat

from data_prep.synthetic_images import (
    DEVKIT_TAR,
    TRAIN_TAR,
    VAL_TAR,
    generate,
    main,
    write_official_archives,
)
from src.data.index import read_classes

SMALL = dict(classes=4, train_per_class=3, val_per_class=2, size=24, seed=5)


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for split in ("train", "val")
        for p in sorted((root / split).rglob("*"))
        if p.is_file()
    }


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_the_layout_is_the_prepared_imagenet_contract(tmp_path):
    summary = generate(tmp_path / "bench", classes=6, train_per_class=4, val_per_class=3, size=32)
    root = tmp_path / "bench"
    classes = read_classes(root)
    assert classes == sorted(classes) == summary["classes"] and len(classes) == 6
    assert all(re.fullmatch(r"n\d{8}", wnid) for wnid in classes)
    words = (root / "synset_words.txt").read_text().splitlines()
    assert [line.split(" ", 1)[0] for line in words] == classes
    assert words[3] == f"{classes[3]} horizontal stripes"
    for wnid in classes:
        train = sorted(p.name for p in (root / "train" / wnid).iterdir())
        assert train == sorted(f"{wnid}_{k}.JPEG" for k in range(4))
        assert len(list((root / "val" / wnid).iterdir())) == 3
    val_names = sorted(p.name for p in (root / "val").rglob("*.JPEG"))
    assert val_names == [f"ILSVRC2012_val_{n:08d}.JPEG" for n in range(1, 19)]
    # val numbers are shuffled across classes, as ImageNet's are: class folders do not hold runs of numbers
    first_class = sorted(int(p.stem[-8:]) for p in (root / "val" / classes[0]).iterdir())
    assert first_class != [1, 2, 3]
    for path in (root / "train").rglob("*.JPEG"):
        with Image.open(path) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (32, 32))
    assert summary["counts"] == {"train": 24, "val": 18} and summary["corrupt"] == {}


def test_a_seed_gives_the_same_bytes_and_another_seed_other_images(tmp_path):
    generate(tmp_path / "a", **SMALL)
    generate(tmp_path / "b", **SMALL)
    generate(tmp_path / "c", **{**SMALL, "seed": 6})
    a, b, c = (_files(tmp_path / name) for name in "abc")
    assert a == b
    train = [k for k in a if k.startswith("train/")]
    assert train == [k for k in c if k.startswith("train/")] and all(a[k] != c[k] for k in train)
    assert a.keys() != c.keys()  # the val images are numbered in another shuffled order too


def test_a_rerun_with_the_same_options_does_nothing_and_other_options_regenerate(tmp_path):
    root = tmp_path / "bench"
    assert generate(root, **SMALL)["cached"] is False
    (root / "quarantine.txt").write_text("train/x.JPEG\tbad\n")  # as the image doctor would leave it
    before = _mtimes(root)
    assert generate(root, **SMALL)["cached"] is True
    assert _mtimes(root) == before
    summary = generate(root, **{**SMALL, "train_per_class": 2})
    assert summary["cached"] is False and summary["counts"]["train"] == 8
    assert len(list((root / "train").rglob("*.JPEG"))) == 8
    assert not (root / "quarantine.txt").exists()  # the old doctor's findings went with the old images


def test_a_folder_with_other_files_is_refused_not_deleted(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="thesis.tex"):
        generate(mine, **SMALL)
    assert (mine / "thesis.tex").read_text() == "precious"
    root = tmp_path / "bench"
    generate(root, **SMALL)
    (root / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes.txt"):
        generate(root, **{**SMALL, "seed": 9})
    assert (root / "notes.txt").exists() and (root / "train").is_dir()


def test_corrupt_puts_a_truncated_a_cmyk_and_a_png_named_jpeg_file_in_train(tmp_path):
    summary = generate(tmp_path / "bench", **SMALL, corrupt=True)
    root = tmp_path / "bench"
    bad = summary["corrupt"]
    assert set(bad) == {"truncated", "cmyk", "png"} and all(p.startswith("train/") for p in bad.values())
    with pytest.raises(OSError, match="(?i)truncated"), Image.open(root / bad["truncated"]) as image:
        image.load()
    with Image.open(root / bad["cmyk"]) as image:
        assert (image.format, image.mode) == ("JPEG", "CMYK")
    with Image.open(root / bad["png"]) as image:
        assert image.format == "PNG" and bad["png"].endswith(".JPEG")
    assert summary["counts"]["train"] == 12  # the bad files replace good ones: the counts stay


def test_the_official_archives_have_the_ilsvrc2012_structure(tmp_path):
    summary = write_official_archives(tmp_path / "arch", **SMALL)
    arch = tmp_path / "arch"
    ids = summary["ilsvrc2012_ids"]
    wnids = sorted(ids)
    assert [ids[w] for w in wnids] != list(range(1, 5))  # ID order is not the sorted-wnid order
    with tarfile.open(arch / TRAIN_TAR) as outer:
        names = outer.getnames()
        assert (
            names
            == sorted(names, key=lambda n: ids[n[:-4]])
            == [f"{w}.tar" for w in sorted(wnids, key=ids.get)]
        )
        inner = tarfile.open(fileobj=outer.extractfile(names[0]))
        assert sorted(inner.getnames()) == sorted(f"{names[0][:-4]}_{k}.JPEG" for k in range(3))
    with tarfile.open(arch / VAL_TAR) as val:
        assert val.getnames() == [f"ILSVRC2012_val_{n:08d}.JPEG" for n in range(1, 9)]
    with tarfile.open(arch / DEVKIT_TAR) as devkit:
        meta = devkit.extractfile("ILSVRC2012_devkit_t12/data/meta.mat").read()
        truth = devkit.extractfile("ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt").read()
    synsets = loadmat(io.BytesIO(meta), squeeze_me=True)["synsets"]
    assert synsets.dtype.names[:6] == ("ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children")
    leaves = {str(s["WNID"]): int(s["ILSVRC2012_ID"]) for s in synsets if int(s["num_children"]) == 0}
    non_leaves = [s for s in synsets if int(s["num_children"]) > 0]
    assert leaves == ids and len(non_leaves) == 3
    assert all(len(np.atleast_1d(s["children"])) == int(s["num_children"]) for s in non_leaves)
    assert any(wnids[0] < str(s["WNID"]) < wnids[-1] for s in non_leaves)  # they sort between the leaves
    truth_ids = [int(x) for x in truth.split()]
    assert len(truth_ids) == 8 and truth_ids != sorted(truth_ids)
    assert write_official_archives(arch, **SMALL)["cached"] is True


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_tiny_cnn_learns_the_benchmark_in_seconds(tmp_path):
    torch = pytest.importorskip("torch")
    from torch import nn

    root = tmp_path / "bench"
    generate(root, classes=6, train_per_class=40, val_per_class=10, size=32, seed=1)
    classes = read_classes(root)

    def load(split):
        pairs = [(p, label) for label, w in enumerate(classes) for p in sorted((root / split / w).iterdir())]
        pixels = np.stack(
            [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255 for p, _ in pairs]
        )
        return torch.from_numpy(pixels).permute(0, 3, 1, 2) - 0.5, torch.tensor([label for _, label in pairs])

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: threads only add overhead (30 s instead of 4 s on 2 cores)
    (x_train, y_train), (x_val, y_val) = load("train"), load("val")
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(32, len(classes)),
    )
    try:
        optimizer = torch.optim.Adam(model.parameters(), 3e-3)
        for _ in range(30):
            order = torch.randperm(len(x_train))
            for start in range(0, len(order), 32):
                batch = order[start : start + 32]
                loss = nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        with torch.no_grad():
            accuracy = (model(x_val).argmax(1) == y_val).float().mean().item()
    finally:
        torch.set_num_threads(threads)
    assert accuracy >= 0.6, f"val accuracy {accuracy:.2f} (chance 0.17)"


def test_the_command_line_writes_both_and_says_so(tmp_path, capsys):
    args = [
        "--out",
        str(tmp_path / "bench"),
        "--classes",
        "3",
        "--train-per-class",
        "2",
        "--val-per-class",
        "1",
    ]
    args += ["--size", "16", "--corrupt", "--official-archives", str(tmp_path / "arch")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "3 classes, train 6, val 3, generated" in out and "bad train files" in out
    assert all((tmp_path / "arch" / name).is_file() for name in (TRAIN_TAR, VAL_TAR, DEVKIT_TAR))
    assert main(args) == 0 and "cached" in capsys.readouterr().out
    assert main(["--out", str(tmp_path / "x"), "--classes", "1"]) == 2
    assert "--classes must be" in capsys.readouterr().err
