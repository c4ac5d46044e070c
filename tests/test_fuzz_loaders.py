"""Fuzz the image and label-map loaders: several hundred seeded random, truncated and mutated PNG and JPEG
files. Each one either loads (an array of the documented shape and dtype; the unmutated ones exactly as
written) or ends in the documented error naming the file: ``DataError`` (a ``ValueError``) from the readers,
``SampleError`` from a dataset's ``__getitem__``. Never a hang, a crash of the process or an exception from
inside a library. The loop runs in a subprocess with a timeout, so a crash or a hang fails the test instead of
killing or blocking pytest; this file is also that subprocess's script."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import traceback
import zlib
from pathlib import Path

import numpy as np

SEED = 20240612
NUM_CASES = 420
TIMEOUT_S = 55
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", len(payload), kind) + payload + struct.pack(">I", zlib.crc32(kind + payload))


def encode_png(array: np.ndarray, color_type: int, bit_depth: int, palette: np.ndarray | None = None) -> bytes:
    """A PNG of ``array`` (rows of samples, packed to ``bit_depth``), written here so that 1-bit gray and
    paletted files exist without pillow."""
    height, width = array.shape[:2]
    rows = []
    for row in array.reshape(height, -1):
        if bit_depth < 8:
            bits = np.unpackbits(row.astype(np.uint8)[:, None], axis=1)[:, 8 - bit_depth:].ravel()
            rows.append(b"\x00" + np.packbits(bits).tobytes())
        else:
            rows.append(b"\x00" + row.astype(">u2" if bit_depth == 16 else np.uint8).tobytes())
    parts = [PNG_SIGNATURE, _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0))]
    if palette is not None:
        parts.append(_chunk(b"PLTE", palette.astype(np.uint8).tobytes()))
    parts += [_chunk(b"IDAT", zlib.compress(b"".join(rows))), _chunk(b"IEND", b"")]
    return b"".join(parts)


def originals(rng: np.random.Generator) -> list[tuple[str, str, bytes, np.ndarray | None, np.ndarray | None]]:
    """(name, suffix, bytes, expected image BGR or None, expected label map or None) of valid files."""
    import cv2

    height, width = (int(v) for v in rng.integers(1, 24, size=2))
    color = rng.integers(0, 256, size=(height, width, 3)).astype(np.uint8)
    gray = rng.integers(0, 6, size=(height, width)).astype(np.uint8)
    bits = rng.integers(0, 2, size=(height, width)).astype(np.uint8)
    palette = rng.integers(0, 256, size=(8, 3))
    wide = rng.integers(0, 6, size=(height, width)).astype(np.uint16)
    return [
        ("png-color", ".png", cv2.imencode(".png", color)[1].tobytes(), color, None),
        ("png-gray", ".png", cv2.imencode(".png", gray)[1].tobytes(), None, gray),
        ("png-palette", ".png", encode_png(gray, 3, 8, palette), None, gray),
        ("png-palette-4bit", ".png", encode_png(gray, 3, 4, palette[:16]), None, gray),
        ("png-1bit", ".png", encode_png(bits, 0, 1), None, bits),
        ("png-16bit", ".png", encode_png(wide, 0, 16), None, wide.astype(np.uint8)),
        ("png-rgba", ".png", cv2.imencode(".png", np.dstack([color, color[:, :, :1]]))[1].tobytes(), None, None),
        ("jpeg-color", ".jpg", cv2.imencode(".jpg", color)[1].tobytes(), None, None),
        ("jpeg-gray", ".jpg", cv2.imencode(".jpg", gray * 40)[1].tobytes(), None, None),
    ]


def with_header(data: bytes, **fields: int) -> bytes:
    """A PNG with IHDR fields (width, height, depth, color) replaced, its CRC recomputed."""
    header = bytearray(data[16:29])
    for name, value in fields.items():
        if name in ("width", "height"):
            offset = 0 if name == "width" else 4
            header[offset:offset + 4] = struct.pack(">I", value)
        else:
            header[8 if name == "depth" else 9] = value
    return data[:16] + bytes(header) + struct.pack(">I", zlib.crc32(b"IHDR" + bytes(header))) + data[33:]


def crafted(rng: np.random.Generator) -> list[tuple[str, bytes]]:
    """Hand-made headers that once escaped as library errors: a palette bit depth of 40 (numpy tried to
    allocate 1 TiB), 40000x40000 pixels (cv2.error), and their neighbours."""
    import cv2

    pool = {name: data for name, _, data, _, _ in originals(rng)}
    palette, color, jpeg = pool["png-palette"], pool["png-color"], pool["jpeg-color"]
    sof = jpeg.find(b"\xff\xc0")
    idat = palette.find(b"IDAT") - 4
    plte = palette.find(b"PLTE") - 4
    cases = [(f"palette-depth-{depth}", with_header(palette, depth=depth)) for depth in (0, 3, 16, 40, 64, 255)]
    cases += [(f"{name}-{w}x{h}", with_header(data, width=w, height=h)) for name, data in
              (("color", color), ("palette", palette)) for w, h in ((40000, 40000), (2**31 - 1, 2**31 - 1),
                                                                    (2**30, 2), (0, 5), (5, 0))]
    cases += [("color-as-palette", with_header(color, color=3)), ("color-type-7", with_header(color, color=7)),
              ("palette-without-plte", palette[:plte] + palette[idat:]), ("png-without-idat", palette[:idat]),
              ("signature-only", palette[:8]), ("ihdr-only", palette[:33]),
              ("jpeg-65535x65535", jpeg[:sof + 5] + struct.pack(">HH", 65535, 65535) + jpeg[sof + 9:]),
              ("jpeg-0x0", jpeg[:sof + 5] + struct.pack(">HH", 0, 0) + jpeg[sof + 9:]),
              ("jpeg-soi-only", b"\xff\xd8"), ("png-16bit-rgb", cv2.imencode(".png", np.full((3, 4, 3), 40000,
                                                                                              np.uint16))[1].tobytes())]
    return cases


def mutate(rng: np.random.Generator, data: bytes) -> tuple[str, bytes]:
    """One random mutation of ``data``: truncation, byte flips, a rewritten PNG header field, inserted or
    deleted bytes, a garbage body behind a real signature, or an empty file."""
    kind = int(rng.integers(8))
    buf = bytearray(data)
    if kind == 0:
        return "truncate", bytes(buf[: int(rng.integers(0, len(buf)))])
    if kind == 1:
        for pos in rng.integers(0, len(buf), size=int(rng.integers(1, 9))):
            buf[pos] = int(rng.integers(256))
        return "flip", bytes(buf)
    if kind == 2 and data.startswith(PNG_SIGNATURE) and len(buf) >= 33:
        header = bytearray(buf[16:29])
        field = int(rng.integers(4))
        if field < 2:  # width or height: zero, huge, or random
            header[4 * field:4 * field + 4] = struct.pack(">I", int(rng.choice([0, 1, 2**31 - 1, 70000,
                                                                                  int(rng.integers(2**32))])))
        else:  # bit depth or color type
            header[6 + field] = int(rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 16, 32, 64, 255]))
        crc = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(header))) if rng.random() < 0.7 else b"\0\0\0\0"
        return "header", bytes(buf[:16]) + bytes(header) + crc + bytes(buf[33:])
    if kind == 3:
        pos = int(rng.integers(0, len(buf) + 1))
        return "insert", bytes(buf[:pos]) + rng.bytes(int(rng.integers(1, 64))) + bytes(buf[pos:])
    if kind == 4:
        start = int(rng.integers(0, len(buf)))
        return "delete", bytes(buf[:start]) + bytes(buf[start + int(rng.integers(1, 64)):])
    if kind == 5:
        head = PNG_SIGNATURE if data.startswith(PNG_SIGNATURE) else b"\xff\xd8\xff"
        return "garbage", head + rng.bytes(int(rng.integers(0, 200)))
    if kind == 6:
        return "empty", b""
    return "tail", bytes(buf[: max(0, len(buf) - int(rng.integers(1, 13)))])


def check_array(array: object, ndim: tuple[int, ...]) -> str | None:
    if not isinstance(array, np.ndarray) or array.ndim not in ndim or array.size == 0:
        return f"not an array of ndim {ndim}: {type(array).__name__} {getattr(array, 'shape', None)}"
    return None


def outcome(call, path: Path, expected_types: tuple[type, ...], ndim: tuple[int, ...]) -> dict:
    """{'ok': shape} or {'error': type} for the documented failures; {'escaped': ...} for anything else."""
    try:
        result = call()
    except expected_types as error:
        if str(path) not in str(error):
            return {"escaped": f"{type(error).__name__} without the path: {error}"}
        return {"error": type(error).__name__}
    except BaseException as error:  # noqa: BLE001 - the point: anything undocumented is a failure
        frame = traceback.extract_tb(error.__traceback__)[-1]
        return {"escaped": f"{type(error).__module__}.{type(error).__name__}: {error} "
                           f"at {frame.filename}:{frame.lineno}"}
    problem = check_array(result, ndim)
    return {"escaped": problem} if problem else {"ok": list(result.shape)}


def run_fuzz(out_dir: Path) -> None:
    """Write the cases under ``out_dir``, load each, and append one JSON line per case to results.jsonl
    (a line 'start' first, so a crash or hang shows which case it was)."""
    from semseg.data.datasets import BaseSegDataset
    from semseg.data.datasets.base import SampleError
    from semseg.data.transforms.loading import (
        DataError,
        LabelSpec,
        LoadAnnotations,
        read_image,
        read_label_map,
    )

    rng = np.random.default_rng(SEED)
    img_dir, ann_dir = out_dir / "img", out_dir / "ann"
    img_dir.mkdir(parents=True)
    ann_dir.mkdir(parents=True)
    spec = LabelSpec(num_classes=6, ignore_index=255)
    load = LoadAnnotations()
    special = crafted(rng)
    with open(out_dir / "results.jsonl", "w") as log:
        for index in range(NUM_CASES):
            pool = originals(rng)
            name, suffix, data, image, label = pool[int(rng.integers(len(pool)))]
            mutation = "none"
            if index < len(special):
                mutation, data = special[index]
                suffix = ".jpg" if mutation.startswith("jpeg") else ".png"
            elif index % 7 and rng.random() < 0.95:  # every 7th case (and a few more) stays valid
                mutation, data = mutate(rng, data)
            if rng.random() < 0.1:
                suffix = ".jpg" if suffix == ".png" else ".png"  # a name that lies about the content
            path = out_dir / f"case{index:04d}{suffix}"
            path.write_bytes(data)
            log.write(json.dumps({"case": index, "start": True}) + "\n")
            log.flush()
            record = {"case": index, "source": name, "mutation": mutation,
                      "image": outcome(lambda p=path: read_image(p), path, (DataError, FileNotFoundError), (3,)),
                      "label": outcome(lambda p=path: read_label_map(p), path, (DataError,), (2, 3)),
                      "annotation": outcome(lambda p=path: load({"seg_map_path": str(p), "label_spec": spec})[
                          "gt_seg_map"], path, (DataError,), (2,))}
            if mutation == "none":
                if image is not None:
                    record["exact"] = bool(np.array_equal(read_image(path), image))
                elif label is not None and suffix == ".png":
                    record["exact"] = bool(np.array_equal(read_label_map(path), label))
            (img_dir / f"{index:04d}.png").write_bytes(data)
            (ann_dir / f"{index:04d}.png").write_bytes(pool[int(rng.integers(len(pool)))][2] if rng.random() < 0.5
                                                       else data)
            log.write(json.dumps(record) + "\n")
            log.flush()
        dataset = BaseSegDataset(data_root=str(out_dir), img_suffix=".png",
                                 data_prefix={"img_path": "img", "seg_map_path": "ann"},
                                 metainfo={"classes": [f"c{k}" for k in range(6)]},
                                 pipeline=[{"type": "LoadImageFromFile"}, {"type": "LoadAnnotations"},
                                           {"type": "PackSegInputs"}])
        for index in range(len(dataset)):
            info = dataset.get_data_info(index)
            paths = (info["img_path"], info["seg_map_path"])
            try:
                packed = dataset[index]
                result = {"ok": list(packed["gt_sem_seg"].shape)}
            except SampleError as error:
                named = any(p in str(error) for p in paths)
                result = {"error": "SampleError"} if named else {"escaped": f"SampleError without a path: {error}"}
            except BaseException as error:  # noqa: BLE001
                result = {"escaped": f"{type(error).__module__}.{type(error).__name__}: {error}"}
            log.write(json.dumps({"case": index, "dataset": result}) + "\n")
            log.flush()


def test_loaders_survive_random_truncated_and_mutated_files(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENCV_LOG_LEVEL": "ERROR"}
    proc = subprocess.run([sys.executable, __file__, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S, cwd=Path(__file__).parents[1])
    lines = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    finished = [line for line in lines if "image" in line]
    assert proc.returncode == 0, f"fuzz process died (rc {proc.returncode}) after {lines[-1:]}: {proc.stderr[-3000:]}"
    assert len(finished) == NUM_CASES
    escaped = [(line["case"], key, line[key]["escaped"]) for line in lines for key in ("image", "label",
                                                                                         "annotation", "dataset")
               if key in line and "escaped" in line[key]]
    assert not escaped, escaped[:10]
    for key in ("image", "label", "annotation"):
        outcomes = {next(iter(line[key])) for line in finished}
        assert outcomes == {"ok", "error"}, (key, outcomes)  # both: the cases are neither all good nor all bad
    samples = [line["dataset"] for line in lines if "dataset" in line]
    assert len(samples) == NUM_CASES and {next(iter(s)) for s in samples} == {"ok", "error"}
    exact = [line["exact"] for line in finished if "exact" in line]
    assert len(exact) >= 30 and all(exact)
    mutations = {line["mutation"] for line in finished}
    assert mutations >= {"none", "truncate", "flip", "header", "insert", "delete", "garbage", "empty", "tail",
                         "palette-depth-40", "color-40000x40000", "jpeg-65535x65535"}
    crafted_errors = {line["mutation"] for line in finished if "error" in line["label"]}
    assert {"palette-depth-40", "color-40000x40000", "palette-without-plte"} <= crafted_errors


if __name__ == "__main__":
    run_fuzz(Path(sys.argv[1]))
