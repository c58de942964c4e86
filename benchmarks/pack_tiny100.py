"""Carry the whole of tiny100-32 to a lent GPU machine in parts that fit its 64 MiB per call.

The device tool sends at most 64 MiB a call; tiny100-32's pickles hold 169 MB of pixels. Lossless
WebP (method 2) stores them in ~60% of that, split into parts of under 55 MB, one per call:

    python benchmarks/pack_tiny100.py pack DATA_DIR OUT_DIR [--parts 2]    # here: OUT_DIR/p1/, p2/, ...
    python benchmarks/pack_tiny100.py unpack DEST_DIR PART_DIR...          # there: DEST_DIR/{train,test,meta}

`unpack` rebuilds the three pickles (same dicts, keys and pickle protocol as the originals) and
checks the sha256 of every split's pixels and labels against the values `pack` recorded, so the
data there is the data here, image for image; it exits non-zero on any mismatch. It also prints
the md5 of each file it wrote beside the one recorded here (equal when numpy pickles arrays the
same way on both machines).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import pickle
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SPLITS = ("train", "test")


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _encode(row: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(row.reshape(3, 32, 32).transpose(1, 2, 0)).save(buf, "WEBP", lossless=True, quality=100, method=2)
    return buf.getvalue()


def _decode(blob: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")).transpose(2, 0, 1).reshape(-1)


def pack(data: Path, out: Path, parts: int) -> None:
    head: dict = {"splits": {}, "md5": {}}
    blobs: list[bytes] = []
    for name in SPLITS + ("meta",):
        head["md5"][name] = hashlib.md5((data / name).read_bytes()).hexdigest()
    for split in SPLITS:
        d = pickle.loads((data / split).read_bytes(), encoding="latin1")
        x = np.asarray(d["data"], dtype=np.uint8)
        labels = np.asarray(d["fine_labels"], dtype=np.int64)
        start = len(blobs)
        for row in x:
            blob = _encode(row)
            assert np.array_equal(_decode(blob), row), "WebP round trip is not lossless"
            blobs.append(blob)
        head["splits"][split] = {"first": start, "n": len(x), "keys": list(d), "pixels_sha256": _sha(x),
                                 "labels_sha256": _sha(labels), "batch_label": d["batch_label"]}
        head[f"{split}_side"] = {k: d[k] for k in d if k not in ("data", "batch_label")}
    head["meta"] = (data / "meta").read_bytes()
    sizes = [len(b) for b in blobs]
    side = lzma.compress(pickle.dumps(head, protocol=4))
    # split the images into `parts` runs of about equal bytes; part 1 also carries the side data
    total, cut, acc, bounds = sum(sizes), 1, 0, [0]
    for i, s in enumerate(sizes):
        acc += s
        if cut < parts and acc >= total * cut / parts:
            bounds.append(i + 1)
            cut += 1
    bounds.append(len(blobs))
    for p in range(parts):
        d = out / f"p{p + 1}"
        d.mkdir(parents=True, exist_ok=True)
        lo, hi = bounds[p], bounds[p + 1]
        index = {"part": p + 1, "parts": parts, "first": lo, "sizes": sizes[lo:hi]}
        (d / "index.json").write_text(json.dumps(index))
        (d / "images.bin").write_bytes(b"".join(blobs[lo:hi]))
        if p == 0:
            (d / "side.xz").write_bytes(side)
        mb = sum((d / f).stat().st_size for f in ("index.json", "images.bin", "side.xz") if (d / f).exists()) / 1e6
        print(f"{d}: images {lo}..{hi - 1}, {mb:.1f} MB")


def unpack(dest: Path, part_dirs: list[Path]) -> int:
    blobs: dict[int, bytes] = {}
    head = None
    for d in part_dirs:
        index = json.loads((d / "index.json").read_text())
        raw = (d / "images.bin").read_bytes()
        off = 0
        for i, s in enumerate(index["sizes"]):
            blobs[index["first"] + i] = raw[off:off + s]
            off += s
        if (d / "side.xz").exists():
            head = pickle.loads(lzma.decompress((d / "side.xz").read_bytes()))
    if head is None:
        print("side.xz (part 1) missing", file=sys.stderr)
        return 2
    dest.mkdir(parents=True, exist_ok=True)
    bad = 0
    for split in SPLITS:
        info = head["splits"][split]
        missing = [i for i in range(info["first"], info["first"] + info["n"]) if i not in blobs]
        if missing:
            print(f"{split}: {len(missing)} images missing (a part was not given)", file=sys.stderr)
            return 2
        x = np.stack([_decode(blobs[i]) for i in range(info["first"], info["first"] + info["n"])])
        side = head[f"{split}_side"]
        d = {}
        for k in info["keys"]:
            d[k] = x if k == "data" else info["batch_label"] if k == "batch_label" else side[k]
        ok = _sha(x) == info["pixels_sha256"] and _sha(np.asarray(d["fine_labels"], dtype=np.int64)) == info["labels_sha256"]
        bad += not ok
        (dest / split).write_bytes(pickle.dumps(d, protocol=4))
        md5 = hashlib.md5((dest / split).read_bytes()).hexdigest()
        print(f"{split}: {len(x)} images, pixels and labels {'identical' if ok else 'DIFFER'} (sha256); "
              f"file md5 {md5} ({'same as' if md5 == head['md5'][split] else 'differs from'} the original's)")
    (dest / "meta").write_bytes(head["meta"])
    print(f"meta: md5 {hashlib.md5(head['meta']).hexdigest()} (original {head['md5']['meta']})")
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("data", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--parts", type=int, default=2)
    u = sub.add_parser("unpack")
    u.add_argument("dest", type=Path)
    u.add_argument("part_dirs", type=Path, nargs="+")
    a = ap.parse_args()
    if a.cmd == "pack":
        pack(a.data, a.out, a.parts)
        return 0
    return unpack(a.dest, a.part_dirs)


if __name__ == "__main__":
    sys.exit(main())
