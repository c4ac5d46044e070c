"""``semseg browse-dataset CONFIG``: draw samples as the model sees them, after the pipeline, with their labels."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

EXAMPLES = """\
examples:
  semseg browse-dataset fcn_r18-d8_1xb8-600_synthetic-96x96 --out browse --num 8
  semseg browse-dataset my_config.py --phase val --cfg-options val_dataloader.dataset.data_root=data/mine
"""

GAP = 4  # pixels of white between the panels
CHECKER = 4  # side of the squares of the checkerboard that marks pixels of no class (ignore_index)


def checkerboard(height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 black and white squares: the color of pixels that belong to no class."""
    ys, xs = np.ogrid[:height, :width]
    board = (((ys // CHECKER) + (xs // CHECKER)) % 2 * 255).astype(np.uint8)
    return np.repeat(board[..., None], 3, axis=2)


def colorize(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) BGR colors; values outside the palette (ignore) as a checkerboard."""
    valid = (labels >= 0) & (labels < len(palette))
    colors = checkerboard(*labels.shape)
    colors[valid] = palette[labels[valid]]
    return colors


def _legend(entries: list[tuple[np.ndarray, str]], width: int) -> np.ndarray:
    """A white strip, ``width`` wide, with one color swatch (a (12, 12, 3) patch) and name per entry."""
    font, scale, row = cv2.FONT_HERSHEY_SIMPLEX, 0.4, 16
    column = max(cv2.getTextSize(name, font, scale, 1)[0][0] for _, name in entries) + 28
    per_row = max(1, width // column)
    rows = -(-len(entries) // per_row)
    strip = np.full((rows * row + 4, max(width, column), 3), 255, np.uint8)
    for i, (swatch, name) in enumerate(entries):
        y, x = 4 + (i // per_row) * row, 4 + (i % per_row) * column
        strip[y:y + 12, x:x + 12] = swatch
        cv2.putText(strip, name, (x + 18, y + 10), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def draw_sample(image: np.ndarray, labels: np.ndarray | None, palette: np.ndarray,
                class_names: Sequence[str], opacity: float = 0.5) -> np.ndarray:
    """One picture of a sample: image | colored labels | overlay side by side, and a legend of the
    classes present below (pixels of no class, such as ``ignore_index``, as a black and white checkerboard).

    ``image`` (H, W, 3) uint8 BGR, ``labels`` (H, W) integers or None (image only), ``palette`` (C, 3)
    uint8 BGR. Returns a uint8 BGR picture.
    """
    if labels is None:
        return image
    colors = colorize(labels, palette)
    overlay = (image * (1 - opacity) + colors * opacity).round().astype(np.uint8)
    gap = np.full((image.shape[0], GAP, 3), 255, np.uint8)
    panels = np.concatenate([image, gap, colors, gap, overlay], axis=1)
    values = np.unique(labels)
    entries = [(np.broadcast_to(palette[v], (12, 12, 3)), class_names[v] if v < len(class_names) else f"class {v}")
               for v in values if 0 <= v < len(palette)]
    others = [int(v) for v in values if not 0 <= v < len(palette)]
    if others:
        entries.append((checkerboard(12, 12), "no class (ignore): " + ", ".join(map(str, others))))
    legend = _legend(entries, panels.shape[1])
    if legend.shape[1] > panels.shape[1]:
        panels = np.pad(panels, ((0, 0), (0, legend.shape[1] - panels.shape[1]), (0, 0)), constant_values=255)
    return np.concatenate([panels, legend], axis=0)


def _to_display(image: torch.Tensor) -> np.ndarray:
    """A packed (C, H, W) image tensor -> (H, W, 3) uint8 BGR (values clipped to 0..255)."""
    array = image.detach().float().clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return cv2.cvtColor(array, cv2.COLOR_GRAY2BGR) if array.shape[2] == 1 else np.ascontiguousarray(array[..., :3])


def model_view(preprocessor, image: torch.Tensor, labels: torch.Tensor | None,
               training: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The sample after the model's data preprocessor (its padding included), denormalized back to pixel
    values in loading (BGR) order: image (C, H', W') float, labels (H', W') long or None."""
    batch, padded = preprocessor([image], None if labels is None else [labels], training=training)
    view = batch[0]
    if preprocessor.normalize:
        view = view * preprocessor.std + preprocessor.mean
    if preprocessor.swap_channels and view.shape[0] == 3:
        view = view.flip(0)
    return view, None if padded is None else padded[0]


def run(args: argparse.Namespace) -> int:
    import random

    from semseg.apis import palette_for
    from semseg.build import build
    from semseg.config import load_config

    if args.num < 1 or not 0 <= args.opacity <= 1:
        raise ValueError(f"--num must be >= 1 and --opacity in [0, 1], got {args.num} and {args.opacity}")
    cfg = load_config(args.config, args.cfg_options)
    key = f"{args.phase}_dataloader"
    if not cfg.get(key) or not cfg[key].get("dataset"):
        raise KeyError(f"config {cfg.filename or args.config!r} has no {key}.dataset")
    dataset = build("dataset", cfg[key].dataset.to_dict())
    metainfo = getattr(dataset, "metainfo", None) or {}
    model_cfg = cfg.get("model") or {}
    preprocessor = build("data_preprocessor", dict(model_cfg.get("data_preprocessor") or {"type": "SegDataPreProcessor"}))
    num_classes = len(metainfo.get("classes") or ()) or int((model_cfg.get("decode_head") or {}).get("num_classes", 0))
    class_names = list(metainfo.get("classes") or [f"class {i}" for i in range(num_classes)])
    # one color per class (BGR): the dataset's palette, completed with fixed random colors where it is short
    palette = np.asarray(metainfo.get("palette") or np.zeros((0, 3)), np.uint8).reshape(-1, 3)[:, ::-1]
    palette = np.concatenate([palette, palette_for(num_classes or 255)[len(palette):]])[:num_classes or 255]

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    count = min(args.num, len(dataset))
    for index in range(count):
        sample = dataset[index]
        if isinstance(sample, list):  # a TestTimeAug pipeline: its first view
            sample = sample[0]
        image, labels = model_view(preprocessor, sample["inputs"], sample.get("gt_sem_seg"),
                                   training=args.phase == "train")
        picture = draw_sample(_to_display(image), None if labels is None else labels.numpy(), palette,
                              class_names, args.opacity)
        source = (sample.get("meta") or {}).get("img_path")
        path = out / (f"{index:05d}_{Path(source).stem}.png" if source else f"{index:05d}.png")
        if not cv2.imwrite(str(path), picture):
            raise OSError(f"could not write {path}")
    print(f"{count} {args.phase} samples (image | labels | overlay) written to {out}")
    return 0


def register(commands) -> None:
    """Add the subcommand to ``commands`` (an argparse subparsers action)."""
    browse = commands.add_parser(
        "browse-dataset", help="draw dataset samples with their labels as the model sees them",
        description="Run samples through the config's pipeline (augmentations included) and the model's data\n"
                    "preprocessor (padding), and write one PNG each: image | colored labels | overlay, with a\n"
                    "legend of the classes present. Colors are the dataset's palette; pixels of no class\n"
                    "(ignore_index, e.g. padding) are a black and white checkerboard.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    browse.add_argument("config", help="config file or zoo name")
    browse.add_argument("--out", default="browse_dataset", metavar="DIR",
                        help="write the PNGs here (default: ./browse_dataset)")
    browse.add_argument("--num", type=int, default=10, metavar="N", help="number of samples, from the first "
                                                                         "(default: 10)")
    browse.add_argument("--phase", choices=["train", "val", "test"], default="train",
                        help="which dataloader's dataset and pipeline (default: train)")
    browse.add_argument("--opacity", type=float, default=0.5, help="label colors' weight in the overlay "
                                                                   "(default: 0.5)")
    browse.add_argument("--seed", type=int, default=0, help="seed of the pipeline's random augmentations "
                                                            "(default: 0)")
    browse.add_argument("--cfg-options", nargs="+", default=None, metavar="KEY=VALUE",
                        help="override config entries, e.g. train_dataloader.dataset.data_root=data/mine")
    browse.set_defaults(func=run)
