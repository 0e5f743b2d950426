"""Time each preparation command on generated videos of realistic size and extrapolate to 1,000 videos.

For every dataset a miniature source is generated in the official layout (videos at the dataset's typical
resolution, length and codec), the real `prepare` runs on it, and the wall time is scaled per 1,000 videos.
Generation time is not counted. Kinetics and Diving-48 are served from a local HTTP server, so network time is
not part of the figure (it depends on your link: K400 is ~450 GB).

python -m data_prep.measure --out /tmp/prep-measure --videos 20 --workers 2 [--datasets k400 ssv2 ...]
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import shutil
import tarfile
import threading
import time
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

DATASETS = ("k400", "ssv2", "ssv1", "diving48", "gym", "doctor")


def _texture(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 8 + 4, width // 8 + 4, 3), dtype=np.uint8)  # room to shift 16 px
    return np.kron(small, np.ones((8, 8, 1), dtype=np.uint8))[: height + 16, : width + 16]


def write_video(
    path: Path,
    frames: int,
    height: int,
    width: int,
    fps: float,
    codec: str = "libx264",
    seed: int = 0,
    crf: int = 23,
    grain: int = 0,
) -> Path:
    """A moving textured clip in mp4 (H.264) or webm (VP9); `grain` adds camera-like noise, which sets the
    bitrate (and so the file size) near real footage at the given crf."""
    path.parent.mkdir(parents=True, exist_ok=True)
    base = _texture(height, width, seed)
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "veryfast", "crf": str(crf)}
        else:
            stream.options = {"deadline": "realtime", "cpu-used": "8", "crf": str(crf), "b": "0"}
        for i in range(frames):
            dy, dx = (i // 2) % 16, i % 16
            img = base[dy : dy + height, dx : dx + width]
            if grain:
                img = np.clip(img.astype(np.int16) + rng.integers(-grain, grain + 1, img.shape), 0, 255)
            img = np.ascontiguousarray(img, dtype=np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode(None))
    return path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def _serve(root: Path):
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _tar(path: Path, files: dict[str, Path]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, src in files.items():
            tar.add(src, arcname=name)


def measure_k400(root: Path, n: int, workers: int) -> dict:
    from data_prep import kinetics

    www, work = root / "www", root / "work"
    vids = [
        write_video(work / f"vid{i:07d}xx_000000_000010.mp4", 250, 360, 480, 25, seed=i, crf=16, grain=6)
        for i in range(n)
    ]
    half = n // 2
    _tar(www / "train" / "part_0.tar.gz", {p.name: p for p in vids[:half]})
    _tar(www / "train" / "part_1.tar.gz", {p.name: p for p in vids[half:]})
    (www / "train" / "k400_train_path.txt").write_text("part_0.tar.gz\npart_1.tar.gz\n")
    (www / "annotations").mkdir(parents=True)
    rows = "".join(f"abseiling,vid{i:07d}xx,0,10,train,0\n" for i in range(n))
    (www / "annotations" / "train.csv").write_text(
        "label,youtube_id,time_start,time_end,split,is_cc\n" + rows
    )
    httpd, url = _serve(www)
    try:
        common = dict(splits=["train"], workers=workers, replacement=False, progress=False)
        t = _timed(lambda: kinetics.prepare(root / "k400", url, **common))
        t320 = _timed(lambda: kinetics.prepare(root / "k400_320", url, short_side=320, **common))
    finally:
        httpd.shutdown()
    size = sum(p.stat().st_size for p in vids) / n
    return {
        "videos": n,
        "video": "10 s, 480x360, 25 fps, H.264",
        "mean_bytes": int(size),
        "download_extract_index_s": t,
        "with_transcode_320_s": t320,
    }


def measure_ssv2(root: Path, n: int, workers: int) -> dict:
    from data_prep import ssv2

    src, work = root / "src", root / "work"
    vids = [
        write_video(work / f"{i}.webm", 48, 240, 427, 12, codec="libvpx-vp9", seed=i, crf=32)
        for i in range(n)
    ]
    _tar(root / "all.tar.gz", {f"20bn-something-something-v2/{p.name}": p for p in vids})
    data = (root / "all.tar.gz").read_bytes()
    src.mkdir()
    step = len(data) // 2 + 1
    for k in range(2):
        (src / f"20bn-something-something-v2-{k:02d}").write_bytes(data[k * step : (k + 1) * step])
    (src / "labels").mkdir()
    (src / "labels" / "labels.json").write_text(json.dumps({"Holding something": "0"}))
    records = [{"id": str(i), "template": "Holding [something]", "label": "holding x"} for i in range(n)]
    (src / "labels" / "train.json").write_text(json.dumps(records))
    (src / "labels" / "validation.json").write_text("[]")
    t = _timed(lambda: ssv2.prepare(src, root / "ssv2", workers=workers, progress=False))
    tt = _timed(lambda: ssv2.prepare(src, root / "ssv2", workers=workers, transcode=True, progress=False))
    size = sum(p.stat().st_size for p in vids) / n
    return {
        "videos": n,
        "video": "4 s, 427x240, 12 fps, VP9 webm",
        "mean_bytes": int(size),
        "extract_index_s": t,
        "transcode_h264_extra_s": tt,
    }


def measure_ssv1(root: Path, n: int, workers: int) -> dict:
    from PIL import Image

    from data_prep import ssv1

    src, work = root / "src", root / "work" / "20bn-something-something-v1"
    base = _texture(100, 176, 0)
    for i in range(n):
        for f in range(36):
            (work / str(i)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.ascontiguousarray(base[f % 16 : f % 16 + 100, :176])).save(
                work / str(i) / f"{f + 1:05d}.jpg", quality=90
            )
    _tar(root / "all.tar.gz", {f"20bn-something-something-v1/{i}": work / str(i) for i in range(n)})
    src.mkdir()
    shutil.copy(root / "all.tar.gz", src / "20bn-something-something-v1-00")
    (src / "something-something-v1-labels.csv").write_text("Holding something\n")
    (src / "something-something-v1-train.csv").write_text(
        "".join(f"{i};Holding something\n" for i in range(n))
    )
    (src / "something-something-v1-validation.csv").write_text("")
    t = _timed(lambda: ssv1.prepare(src, root / "ssv1", workers=workers, progress=False))
    return {"videos": n, "video": "36 JPEG frames, 176x100", "extract_index_s": t}


def measure_diving48(root: Path, n: int, workers: int) -> dict:
    from data_prep import diving48

    www, work = root / "www", root / "work"
    vids = [write_video(work / f"v{i:05d}.mp4", 100, 360, 640, 30, seed=i, crf=20, grain=6) for i in range(n)]
    _tar(www / "Diving48_rgb.tar.gz", {f"rgb/{p.name}": p for p in vids})
    (www / "Diving48_vocab.json").write_text(json.dumps([["Back", "15som", "05Twis", "FREE"]]))
    recs = [{"vid_name": p.stem, "label": 0, "start_frame": 0, "end_frame": 99} for p in vids]
    (www / "Diving48_V2_train.json").write_text(json.dumps(recs))
    (www / "Diving48_V2_test.json").write_text("[]")
    httpd, url = _serve(www)
    try:
        t = _timed(
            lambda: diving48.prepare(
                root / "dl", root / "diving48", base_url=url, workers=workers, progress=False
            )
        )
    finally:
        httpd.shutdown()
    size = sum(p.stat().st_size for p in vids) / n
    return {
        "videos": n,
        "video": "3.3 s, 640x360, 30 fps, H.264",
        "mean_bytes": int(size),
        "download_extract_index_s": t,
    }


def measure_gym(root: Path, n: int, workers: int) -> dict:
    from data_prep import finegym

    videos, ann = root / "videos", root / "annotations"
    length = 4.0 * n + 10
    write_video(videos / "AAAAAAAAAAA.mp4", int(length * 25), 720, 1280, 25, crf=20, grain=4)
    segments = {
        f"A_{i:04d}_{i + 1:04d}": {"stages": 1, "timestamps": [[4.0 * i + 0.5, 4.0 * i + 3.0]]}
        for i in range(n)
    }
    tree = {
        "AAAAAAAAAAA": {
            "E_000001_000090": {"event": 1, "timestamps": [[1.0, length - 1]], "segments": segments}
        }
    }
    ann.mkdir()
    (ann / "finegym_annotation_info_v1.1.json").write_text(json.dumps(tree))
    for name in ("gym99", "gym288"):
        (ann / f"{name}_categories.txt").write_text("Clabel: 0; set: 1; Glabel: 0; (VT) x\n")
        (ann / f"{name}_train_element_v1.1.txt").write_text(
            "".join(f"AAAAAAAAAAA_E_000001_000090_{k} 0\n" for k in segments)
        )
        (ann / f"{name}_val_element.txt").write_text("")
    t = _timed(lambda: finegym.prepare(videos, ann, root / "data", workers=workers, progress=False))
    return {
        "videos": n,
        "video": "2.5 s elements cut from a 1280x720 25 fps H.264 source, re-encoded at short side 320",
        "trim_encode_index_s": t,
    }


def measure_doctor(root: Path, n: int, workers: int) -> dict:
    from data_prep import doctor
    from src.data.index import IndexRow, write_index

    vids = [
        write_video(root / "v" / f"{i}.mp4", 250, 360, 480, 25, seed=i, crf=16, grain=6) for i in range(n)
    ]
    write_index(
        root / "warm", dataset="m", classes=["a"], splits={"train": [IndexRow(f"../v/{vids[0].name}", 0)]}
    )
    doctor.doctor(
        root / "warm", workers=workers, progress=False
    )  # one-time start of the worker server (~10 s)
    write_index(
        root, dataset="m", classes=["a"], splits={"train": [IndexRow(f"v/{p.name}", 0) for p in vids]}
    )
    t = _timed(lambda: doctor.doctor(root, workers=workers, progress=False))
    return {
        "videos": n,
        "video": "10 s, 480x360, 25 fps, H.264 (after a one-time ~10 s start)",
        "doctor_s": t,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep.measure", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="scratch folder (deleted and re-created)")
    parser.add_argument("--videos", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    results = {}
    for name in args.datasets:
        root = args.out / name
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        result = globals()[f"measure_{name}"](root, args.videos, args.workers)
        per_1000 = {
            k.replace("_s", "_per_1000_min"): round(v * 1000 / args.videos / 60, 1)
            for k, v in result.items()
            if k.endswith("_s")
        }
        results[name] = {**result, **per_1000}
        print(json.dumps({name: results[name]}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
