"""docs/custom_dataset.md runs: its config block, on a generated folder in the guide's layout, trains two
iterations (tiny widths) and tests; its reduce_zero_label recipe reads 0 as ignored; its commands parse."""

from __future__ import annotations

import re
import shlex
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from semseg.build import build
from semseg.cli import build_parser, main
from semseg.config import load_config
from semseg.data.datasets.synthetic import generate_sample

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "custom_dataset.md"
# PSPNet at tiny widths, no pretrained download, in-process data loading, two iterations
TINY = {"model.pretrained": None, "model.backbone.depth": 18, "model.backbone.stem_channels": 8,
        "model.backbone.base_channels": 4, "model.decode_head.in_channels": 32, "model.decode_head.channels": 8,
        "model.auxiliary_head.in_channels": 16, "model.auxiliary_head.channels": 4,
        "train_dataloader.batch_size": 2, "train_dataloader.num_workers": 0,
        "train_dataloader.persistent_workers": False, "val_dataloader.num_workers": 0,
        "val_dataloader.persistent_workers": False, "test_dataloader.num_workers": 0,
        "test_dataloader.persistent_workers": False, "train_cfg.max_iters": 2, "train_cfg.val_interval": 2,
        "default_hooks.checkpoint.interval": 2, "default_hooks.logger.interval": 1}
SIZE = (37, 50)


def guide_block(marker: str) -> str:
    """The fenced block that follows the HTML comment ``<!-- ... marker ... -->``."""
    match = re.search(rf"<!--[^>]*{marker}[^>]*-->\s*```\w*\n(.*?)```", GUIDE.read_text(), re.S)
    assert match, f"no block marked {marker!r} in {GUIDE}"
    return match.group(1)


def guide_commands() -> list[list[str]]:
    """The ``semseg ...`` lines of the guide's bash blocks, as argument lists."""
    blocks = re.findall(r"```bash\n(.*?)```", GUIDE.read_text(), re.S)
    return [shlex.split(line, comments=True)[1:] for block in blocks for line in block.splitlines()
            if line.startswith("semseg ")]


def write_folder(root: Path, ann: str = "ann_dir") -> dict[str, list[np.ndarray]]:
    """The guide's layout: img_dir/{train,val}/*.jpg and ann_dir/.../*.png with classes 0..2 and some 255
    (a sub-folder in train), the label maps under ``ann``. Returns the labels."""
    labels = {}
    for split, count in (("train", 3), ("val", 2)):
        labels[split] = []
        for index in range(count):
            image, label = generate_sample(index, SIZE, num_classes=3, split=split)
            label[:3] = 255  # an ignored band
            name = f"sub/{index:04d}" if split == "train" and index == 2 else f"{index:04d}"
            (root / "img_dir" / split / name).parent.mkdir(parents=True, exist_ok=True)
            (root / ann / split / name).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / "img_dir" / split / f"{name}.jpg"), image)
            cv2.imwrite(str(root / ann / split / f"{name}.png"), label)
            labels[split].append(label)
    return labels


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder as the guide sets it up: pspnet_base.py from `semseg config`, my_config.py from the
    guide's block, data/my_dataset."""
    monkeypatch.chdir(tmp_path)
    assert main(next(words for words in guide_commands() if words[0] == "config")) == 0
    (tmp_path / "my_config.py").write_text(guide_block("my_config.py"))
    write_folder(tmp_path / "data" / "my_dataset")
    return tmp_path


def test_guide_config_trains_and_tests_on_a_generated_folder(project: Path, capsys) -> None:
    torch.set_num_threads(1)
    options = [f"{key}={value}" for key, value in TINY.items()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["train", "my_config.py", "--work-dir", "work", "--cfg-options", *options]) == 0
    checkpoint = project / "work" / "iter_2.pth"
    assert checkpoint.is_file() and (project / "work" / "best_mIoU_iter_2.pth").is_file()
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["test", "my_config.py", str(checkpoint), "--show-dir", "overlays", "--work-dir", "work",
                     "--cfg-options", *options]) == 0
    table = capsys.readouterr().out
    assert all(name in table for name in ("background", "road", "building", "mIoU"))
    assert sorted(p.name for p in (project / "overlays").iterdir()) == ["0000.png", "0001.png"]
    cfg = load_config("my_config.py", TINY)
    assert cfg.model.decode_head.num_classes == 3 and cfg.model.data_preprocessor["size"] == (512, 512)
    assert cfg.test_dataloader.dataset.data_prefix["img_path"] == "img_dir/val"


def test_guide_layout_lists_sub_folders_and_reads_label_values(project: Path) -> None:
    cfg = load_config("my_config.py", TINY)
    dataset = build("dataset", cfg.train_dataloader.dataset.to_dict())
    assert len(dataset) == 3 and dataset.metainfo["classes"] == ("background", "road", "building")
    assert dataset.metainfo["palette"] == [[0, 0, 0], [128, 64, 128], [70, 70, 70]]
    paths = [dataset.get_data_info(i)["seg_map_path"] for i in range(3)]
    assert paths[-1].endswith("ann_dir/train/sub/0002.png")


def test_reduce_zero_label_recipe_ignores_zero(project: Path) -> None:
    labels = write_folder(project / "data" / "my_dataset", ann="ann_zero")  # read as 0 = unlabeled
    recipe = guide_block_python_with("reduce_zero_label=True")
    namespace: dict = {}
    exec(recipe, namespace)  # the guide's snippet: metainfo and the dataset's keys
    cfg = load_config("my_config.py", TINY).val_dataloader.dataset.to_dict()
    cfg.update(namespace["dataset"], data_prefix=dict(img_path="img_dir/val", seg_map_path="ann_zero/val"))
    dataset = build("dataset", cfg)
    assert dataset.metainfo["classes"] == ("road", "building")
    for index, expected in enumerate(labels["val"]):
        gt = dataset[index]["gt_sem_seg"]
        gt = (gt.data if hasattr(gt, "data") else gt).squeeze().numpy()
        assert np.array_equal(gt, np.where((expected == 0) | (expected == 255), 255, expected - 1))


def guide_block_python_with(text: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)
    return next(block for block in blocks if text in block)


def test_guide_commands_parse() -> None:
    parser = build_parser()
    lines = guide_commands()
    assert {words[0] for words in lines} >= {"config", "browse-dataset", "train", "test", "predict", "plot-log"}
    for words in lines:
        assert parser.parse_args(words).command == words[0]
