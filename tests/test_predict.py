"""``semseg predict`` on a generated folder (nested, with a corrupt file), a glob and a 5-frame video: the
files written (palette label PNGs that read back as indices, masks, overlays, the overlay video, the
legend), the exit status and messages; the palette PNG writer; ``inference_model`` on a list; SegResult's
Jupyter picture; ``init_model``'s warning about random weights."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import semseg
from semseg.apis import classes_and_palette
from semseg.cli import main
from semseg.cli.predict import collect_inputs
from semseg.data.datasets.synthetic import generate_sample, synthetic_metainfo
from semseg.data.transforms.loading import read_label_map
from semseg.engine.checkpoint import save_checkpoint
from semseg.visualize import encode_label_png, legend, write_label_png

SYNTHETIC = "fcn_r18-d8_1xb8-600_synthetic-96x96"
TINY = {"model.backbone.stem_channels": 8, "model.backbone.base_channels": 4,
        "model.decode_head.in_channels": 32, "model.decode_head.channels": 8,
        "model.auxiliary_head.in_channels": 16, "model.auxiliary_head.channels": 4}
TINY_ARGS = ["--cfg-options", *(f"{key}={value}" for key, value in TINY.items())]
PALETTE = np.array(synthetic_metainfo(5)["palette"], dtype=np.uint8)  # RGB, the config's dataset's


def tiny_model(checkpoint: Path | None = None) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights, on purpose
        return semseg.init_model(SYNTHETIC, checkpoint, cfg_options=TINY)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """A tiny checkpoint (random weights, logits spread so that several classes show), a folder of images
    in nested sub-folders with a corrupt PNG and a text file, another folder for a glob, a 5-frame video."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("predict")
    model = tiny_model()
    with torch.no_grad():
        model.decode_head.conv_seg.weight.mul_(30)
    save_checkpoint({"state_dict": model.state_dict(), "meta": {}}, root / "tiny.pth")
    images = root / "images"
    for index, (name, size) in enumerate({"a.png": (37, 53), "sub/b.jpg": (41, 30),
                                          "sub/deeper/c.png": (37, 53)}.items()):
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(images / name), generate_sample(index, size)[0])
    (images / "sub" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"truncated")
    (images / "notes.txt").write_text("not an image")
    (root / "extra").mkdir()
    assert cv2.imwrite(str(root / "extra" / "d.png"), generate_sample(5, (29, 31))[0])
    video = cv2.VideoWriter(str(root / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (48, 40))
    assert video.isOpened()
    for index in range(5):
        video.write(generate_sample(10 + index, (40, 48))[0])
    video.release()
    return {"root": root, "ckpt": root / "tiny.pth", "images": images, "video": root / "clip.avi"}


def png_chunks(data: bytes) -> dict[bytes, bytes]:
    """The chunks of a PNG file by type (IDAT joined), their CRCs checked."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks: dict[bytes, bytes] = {}
    pos = 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        payload = data[pos + 8:pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0] == zlib.crc32(kind + payload)
        chunks[kind] = chunks.get(kind, b"") + payload
        pos += 12 + length
    return chunks


def decode_indexed_png(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(indices (H, W), palette (K, 3) RGB) of an 8-bit indexed PNG whose rows use filter 0."""
    chunks = png_chunks(data)
    width, height, depth, color_type = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, color_type) == (8, 3)  # 8-bit palette mode
    rows = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), dtype=np.uint8).reshape(height, width + 1)
    assert (rows[:, 0] == 0).all()
    return rows[:, 1:], np.frombuffer(chunks[b"PLTE"], dtype=np.uint8).reshape(-1, 3)


def test_predict_folder_glob_video_and_a_corrupt_file(data, tmp_path: Path, capsys) -> None:
    torch.set_num_threads(1)
    out = tmp_path / "out"
    argv = ["predict", SYNTHETIC, str(data["ckpt"]), str(data["images"]), str(data["root"] / "extra" / "*.png"),
            str(data["video"]), str(data["root"] / "missing.png"), "--out", str(out), "--opacity", "0.7",
            "--batch-size", "2", *TINY_ARGS]
    assert main(argv) == 1  # two inputs failed; the others are written
    captured = capsys.readouterr()
    assert "bad.png" in captured.err and "cannot decode" in captured.err and "missing.png" in captured.err
    assert "image file not found" not in captured.err + captured.out
    assert "4 images and 1 video" in captured.out

    model = tiny_model(data["ckpt"])
    names = ["a", "sub/b", "sub/deeper/c", "d"]
    sources = [data["images"] / "a.png", data["images"] / "sub/b.jpg", data["images"] / "sub/deeper/c.png",
               data["root"] / "extra" / "d.png"]
    present = set()
    for name, source in zip(names, sources, strict=True):
        image = cv2.imread(str(source))
        expected = semseg.inference_model(model, source).labels
        present |= set(np.unique(expected).tolist())
        label_png = out / "labels" / f"{name}.png"
        indices, palette = decode_indexed_png(label_png.read_bytes())
        assert np.array_equal(indices, expected)
        assert np.array_equal(palette[:5], PALETTE)
        assert np.array_equal(read_label_map(label_png), expected)  # label readers get the indices
        colors = PALETTE[expected][..., ::-1]  # BGR
        assert np.array_equal(cv2.imread(str(label_png)), colors)  # viewers get the colors
        assert np.array_equal(cv2.imread(str(out / "masks" / f"{name}.png")), colors)
        blended = (image * (1 - 0.7) + colors * 0.7).astype(np.uint8)
        assert np.array_equal(cv2.imread(str(out / "overlays" / f"{name}.png")), blended)
    assert len(present) > 1  # several classes, so colors and legend rows are tested
    assert not list(out.rglob("bad*")) and not list(out.rglob("notes*"))

    videos = list((out / "overlays").glob("clip.*"))
    assert len(videos) == 1 and videos[0].suffix in (".mp4", ".avi")
    capture = cv2.VideoCapture(str(videos[0]))
    frames = []
    while (frame := capture.read())[0]:
        frames.append(frame[1])
    capture.release()
    assert len(frames) == 5 and all(frame.shape == (40, 48, 3) for frame in frames)

    key = cv2.imread(str(out / "legend.png"))
    assert key is not None and key.shape[0] >= 22 * len(present)


def test_legend_lists_the_classes_present_in_their_colors() -> None:
    palette = np.array([[0, 0, 255], [0, 255, 0]], dtype=np.uint8)
    key = legend(["road", "sky"], palette, shares=[0.75, 0.25], row_height=22)
    assert key.shape[0] == 2 * 22 + 6 and key.dtype == np.uint8
    assert (key[12, 12] == [0, 0, 255]).all() and (key[22 + 12, 12] == [0, 255, 0]).all()  # swatch centers
    text = key[:, 30:]
    assert (text < 128).any()  # names drawn in black on white


def test_only_bad_inputs_fail_and_write_nothing(data, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    bad = data["images"] / "sub" / "bad.png"
    assert main(["predict", SYNTHETIC, str(data["ckpt"]), str(bad), str(data["root"] / "*.nothing"),
                 "--out", str(out), *TINY_ARGS]) == 1
    err = capsys.readouterr().err
    assert "skipped" in err and str(bad) in err and "*.nothing: no image or video matches" in err
    assert not [path for path in out.rglob("*") if path.is_file()]


def test_tta_and_batches_give_inference_model_labels(data, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    out = tmp_path / "out"
    folder = data["images"] / "sub"
    assert main(["predict", SYNTHETIC, str(data["ckpt"]), str(folder / "b.jpg"), str(folder / "deeper"),
                 "--out", str(out), "--tta", "--batch-size", "2", *TINY_ARGS]) == 0
    model = tiny_model(data["ckpt"])
    for name, source in (("b", folder / "b.jpg"), ("c", folder / "deeper" / "c.png")):
        expected = semseg.inference_model(model, source, tta=True).labels
        assert np.array_equal(read_label_map(out / "labels" / f"{name}.png"), expected)


def test_checkpoint_meta_gives_names_and_colors(data, tmp_path: Path) -> None:
    state = torch.load(data["ckpt"], weights_only=True)["state_dict"]
    classes = ("sky", "road", "car", "tree", "person")
    palette = [[1, 2, 3], [10, 20, 30], [100, 110, 120], [200, 210, 220], [250, 0, 5]]
    ckpt = tmp_path / "meta.pth"
    save_checkpoint({"state_dict": state, "meta": {"dataset_meta": {"classes": classes, "palette": palette}}}, ckpt)
    names, colors = classes_and_palette(tiny_model(ckpt))
    assert names == list(classes) and np.array_equal(colors, palette)
    out = tmp_path / "out"
    assert main(["predict", SYNTHETIC, str(ckpt), str(data["images"] / "a.png"), "--out", str(out), *TINY_ARGS]) == 0
    assert np.array_equal(decode_indexed_png((out / "labels" / "a.png").read_bytes())[1][:5], palette)
    # without meta, the config's dataset names the classes
    names, colors = classes_and_palette(tiny_model(data["ckpt"]))
    assert names == list(synthetic_metainfo(5)["classes"]) and np.array_equal(colors, PALETTE)


def test_collect_inputs_names_layout_duplicates_and_output_folder(tmp_path: Path) -> None:
    for name in ("x.jpg", "x.png", "sub/y.png", "out/old.png", "clip.MP4", "readme.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    sources, problems = collect_inputs([str(tmp_path), str(tmp_path / "x.png"), str(tmp_path / "none")],
                                       exclude=tmp_path / "out")
    assert [(s.name, s.video) for s in sources] == [("clip", True), ("sub/y", False), ("x", False),
                                                     ("x_2", False)]  # each file once; out/ left out
    assert problems == [(str(tmp_path / "none"), "no such file or folder")]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no images or videos in this folder" in collect_inputs([str(empty)])[1][0][1]


def test_predict_help_shows_examples_and_describes_every_option(capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["predict", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "semseg predict " in out and "legend.png" in out
    for option in ("--out", "--opacity", "--device", "--batch-size", "--tta", "--precision", "--fuse",
                   "--cfg-options", "INPUT"):
        assert option in out


def test_label_png_writer_bounds_and_16_bit_fallback(tmp_path: Path) -> None:
    labels = np.array([[0, 3], [7, 255]], dtype=np.int64)
    indices, palette = decode_indexed_png(encode_label_png(labels, np.zeros((2, 3), np.uint8)))
    assert np.array_equal(indices, labels) and len(palette) == 256  # every index used has an entry
    with pytest.raises(ValueError, match="0..255"):
        encode_label_png(np.array([[-1]]), np.zeros((1, 3), np.uint8))
    many = np.array([[0, 300], [149, 999]])
    write_label_png(tmp_path / "many.png", many, np.zeros((1000, 3), np.uint8))
    assert np.array_equal(read_label_map(tmp_path / "many.png"), many)  # 16-bit grayscale


def test_inference_model_list_and_jupyter_picture(data) -> None:
    torch.set_num_threads(1)
    model = tiny_model(data["ckpt"])
    paths = [data["images"] / "a.png", data["images"] / "sub/deeper/c.png", data["images"] / "sub/b.jpg"]
    singles = [semseg.inference_model(model, path) for path in paths]
    batched = semseg.inference_model(model, [paths[0], cv2.imread(str(paths[1])), paths[2]], batch_size=2)
    assert isinstance(batched, list) and len(batched) == 3
    for single, result in zip(singles, batched, strict=True):
        assert np.array_equal(single.labels, result.labels)
        assert torch.allclose(single.logits, result.logits, atol=1e-5)
    result = singles[0]
    assert result.classes[1] == "shape_1" and result.mask().shape == (37, 53, 3)
    assert result.overlay().shape == (37, 53, 3)
    picture = cv2.imdecode(np.frombuffer(result._repr_png_(), np.uint8), cv2.IMREAD_COLOR)
    assert picture.shape[0] >= 37 and picture.shape[1] > 53  # the overlay, and the legend beside it
    assert np.array_equal(picture[:37, :53], result.overlay())
    assert repr(result).startswith("SegResult(53x37, classes present: ")


def test_init_model_zoo_name_without_checkpoint_warns_random_weights(data) -> None:
    with pytest.warns(UserWarning, match=r"weights are random.*checkpoint='zoo'.*download\.openmmlab\.com"):
        semseg.init_model("fcn_r18-d8_4xb2-80k_cityscapes-512x1024",
                          cfg_options={"model.backbone.base_channels": 4, "model.backbone.stem_channels": 8,
                                       "model.decode_head.in_channels": 32, "model.auxiliary_head.in_channels": 16})
    with pytest.warns(UserWarning, match="weights are random.*no published weights"):
        semseg.init_model(SYNTHETIC, cfg_options=TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        semseg.init_model(SYNTHETIC, data["ckpt"], cfg_options=TINY)  # weights given
        semseg.init_model(semseg.load_config(SYNTHETIC, TINY))  # a config object: the caller built it
