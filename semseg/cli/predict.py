"""``semseg predict CONFIG CHECKPOINT INPUTS... --out DIR``: label maps, colored masks, overlays and a
legend for images, folders, glob patterns and videos."""

from __future__ import annotations

import argparse
import contextlib
import glob
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from semseg.cli.common import add_inference_speed_options, add_threads_option, apply_threads

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm",
                            ".jp2", ".sr", ".ras"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"})

EXAMPLES = """\
examples:
  semseg predict pspnet_r50-d8_4xb2-40k_cityscapes-512x1024 zoo street.jpg --out preds
  semseg predict my_config.py work_dirs/run/iter_8000.pth photos/ 'more/**/*.jpg' clip.mp4 \\
      --out preds --device cuda --batch-size 8 --opacity 0.6

what it writes, for an input image <name> (a folder's images keep their sub-folders):
  DIR/labels/<name>.png    the class of each pixel, as a palette PNG: it opens in the classes' colors and
                           reads back as class indices (pillow, MMSegmentation, or
                           semseg.data.transforms.loading.read_label_map)
  DIR/masks/<name>.png     the classes' colors
  DIR/overlays/<name>.png  the colors blended over the image (--opacity)
  DIR/overlays/<name>.mp4  for a video: a video of overlays (.avi where OpenCV cannot write .mp4)
  DIR/legend.png           the names and colors of the classes present, with their share of the pixels
Class names and colors come from the checkpoint's meta, else the config's dataset. An input that cannot
be read is reported by name and skipped; the others are still written, and the exit status is 1.
"""


@dataclass(frozen=True)
class Source:
    """One input file, and its name under the output folders (relative, '/'-separated, no suffix)."""

    path: Path
    name: str
    video: bool


def _is_media(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES


def _inside(path: Path, folder: Path | None) -> bool:
    return folder is not None and path.resolve().is_relative_to(folder)


def _glob_root(pattern: str) -> Path:
    """The folder a glob pattern starts in: its leading parts without wildcards."""
    parts = []
    for part in Path(pattern).parts[:-1]:
        if glob.has_magic(part):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def collect_inputs(inputs: list[str], exclude: Path | None = None) -> tuple[list[Source], list[tuple[str, str]]]:
    """Expand files, folders (recursively: images and videos by suffix) and glob patterns into sources,
    each file once, sorted within a folder or pattern. Files under ``exclude`` (the output folder) are left
    out. Returns the sources and ``(input, reason)`` for each input that gave nothing."""
    exclude = exclude.resolve() if exclude is not None else None
    sources: list[Source] = []
    problems: list[tuple[str, str]] = []
    seen_paths: set[Path] = set()
    seen_names: set[str] = set()

    def add(path: Path, name: str) -> None:
        if path.resolve() in seen_paths:
            return
        seen_paths.add(path.resolve())
        unique, count = name, 1
        while unique in seen_names:  # e.g. a.jpg beside a.png, or two folders' x.png
            count += 1
            unique = f"{name}_{count}"
        seen_names.add(unique)
        sources.append(Source(path, unique, path.suffix.lower() in VIDEO_SUFFIXES))

    def add_folder(folder: Path, root: Path) -> int:
        files = sorted(f for f in folder.rglob("*") if f.is_file() and _is_media(f) and not _inside(f, exclude))
        for file in files:
            add(file, file.relative_to(root).with_suffix("").as_posix())
        return len(files)

    for item in inputs:
        path = Path(item)
        if path.is_dir():
            if not add_folder(path, path):
                problems.append((item, "no images or videos in this folder (searched recursively for "
                                       f"{', '.join(sorted(IMAGE_SUFFIXES | VIDEO_SUFFIXES))})"))
        elif path.is_file():
            add(path, path.stem)
        elif glob.has_magic(item):
            root = _glob_root(item)
            found = 0
            for match in sorted(Path(m) for m in glob.glob(item, recursive=True)):
                if match.is_dir():
                    found += add_folder(match, root)
                elif _is_media(match) and not _inside(match, exclude):
                    add(match, match.relative_to(root).with_suffix("").as_posix())
                    found += 1
            if not found:
                problems.append((item, "no image or video matches this pattern"))
        else:
            problems.append((item, "no such file or folder"))
    return sources, problems


class Writer:
    """Writes each prediction's label PNG, mask and overlay, and counts the pixels of each class for the
    legend."""

    def __init__(self, out: Path, names: list[str], palette_rgb: np.ndarray, opacity: float):
        self.out = out
        self.names = names
        self.palette_rgb = palette_rgb
        self.palette_bgr = np.ascontiguousarray(palette_rgb[:, ::-1])
        self.opacity = opacity
        self.counts = np.zeros(len(names), dtype=np.int64)

    def count(self, labels: np.ndarray) -> None:
        self.counts += np.bincount(labels.ravel(), minlength=len(self.counts))[:len(self.counts)]

    def overlay(self, image: np.ndarray, labels: np.ndarray) -> np.ndarray:
        from semseg.visualize import overlay

        return overlay(image, labels, self.palette_bgr, self.opacity)

    def image(self, name: str, image: np.ndarray, labels: np.ndarray) -> None:
        from semseg.visualize import colorize, write_image, write_label_png

        self.count(labels)
        write_label_png(self.out / "labels" / f"{name}.png", labels, self.palette_rgb)
        write_image(self.out / "masks" / f"{name}.png", colorize(labels, self.palette_bgr))
        write_image(self.out / "overlays" / f"{name}.png", self.overlay(image, labels))

    def legend(self) -> Path | None:
        """Write ``legend.png`` with the classes present so far; None when nothing was predicted."""
        from semseg.visualize import legend, write_image

        present = np.flatnonzero(self.counts)
        if not len(present):
            return None
        names = [self.names[k] for k in present]
        path = self.out / "legend.png"
        write_image(path, legend(names, self.palette_bgr[present], self.counts[present] / self.counts.sum()))
        return path


def _frame_count(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
    capture.release()
    return max(frames, 1)


class _Run:
    """One ``semseg predict``: the model, the writer, progress over images and video frames, failures."""

    def __init__(self, args: argparse.Namespace, model, writer: Writer, total: int):
        from semseg.cli.progress import ConsoleProgress

        self.args = args
        self.model = model
        self.writer = writer
        self.progress = ConsoleProgress("predict")
        self.total = max(total, 1)
        self.done = 0
        self.failed: list[str] = []
        self.progress(0, self.total)

    def step(self, count: int) -> None:
        self.done += count
        self.progress(min(self.done, self.total - 1), self.total)

    def fail(self, source: Source, reason: str) -> None:
        self.failed.append(str(source.path))
        newline = "\n" if self.progress.tty else ""
        print(f"{newline}semseg predict: skipped {source.path}: {reason}", file=sys.stderr, flush=True)

    def predict(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        from semseg.apis import inference_model

        results = inference_model(self.model, frames, tta=self.args.tta, batch_size=self.args.batch_size)
        return [result.labels for result in results]

    def images(self, sources: list[Source]) -> int:
        """Predict and write images, ``batch_size`` at a time; returns how many were written."""
        from semseg.data.transforms.loading import read_image

        written = 0
        for start in range(0, len(sources), self.args.batch_size):
            loaded = []
            for source in sources[start:start + self.args.batch_size]:
                try:
                    loaded.append((source, read_image(source.path)))
                except (OSError, ValueError) as error:
                    self.fail(source, str(error))
            if loaded:
                for (source, image), labels in zip(loaded, self.predict([i for _, i in loaded]), strict=True):
                    self.writer.image(source.name, image, labels)
                written += len(loaded)
            self.step(min(self.args.batch_size, len(sources) - start))
        return written

    def video(self, source: Source) -> Path | None:
        """Predict every frame of a video and write the overlays as a video; returns its path (None when
        no frame could be read)."""
        from semseg.visualize import open_video_writer

        capture = cv2.VideoCapture(str(source.path))
        writer, path, frames = None, None, 0
        try:
            fps = capture.get(cv2.CAP_PROP_FPS) if capture.isOpened() else 0.0
            while capture.isOpened():
                batch = []
                while len(batch) < self.args.batch_size:
                    ok, frame = capture.read()
                    if not ok:
                        break
                    batch.append(frame)
                if not batch:
                    break
                predictions = self.predict(batch)
                if writer is None:
                    height, width = batch[0].shape[:2]
                    writer, path = open_video_writer(self.writer.out / "overlays" / source.name,
                                                     fps if fps and fps > 0 else 25.0, (width, height))
                for frame, labels in zip(batch, predictions, strict=True):
                    self.writer.count(labels)
                    writer.write(self.writer.overlay(frame, labels))
                frames += len(batch)
                self.step(len(batch))
        finally:
            capture.release()
            if writer is not None:
                writer.release()
        if not frames:
            self.fail(source, "cannot read a frame from this video (corrupt, or a codec this OpenCV lacks)")
            self.step(1)
        return path


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's own log lines (a corrupt file is reported once, by name, by this command)."""
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is None:
        yield
        return
    level = logging.getLogLevel()
    logging.setLogLevel(logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        logging.setLogLevel(level)


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    import torch

    from semseg.apis import classes_and_palette, init_model

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = init_model(args.config, args.checkpoint, device=device, cfg_options=args.cfg_options,
                       precision=args.precision, fuse=args.fuse, onednn=args.onednn)
    out = Path(args.out)
    sources, problems = collect_inputs(args.inputs, exclude=out)
    for item, reason in problems:
        print(f"semseg predict: {item}: {reason}", file=sys.stderr)
    names, palette = classes_and_palette(model)
    writer = Writer(out, names, palette, args.opacity)
    images = [source for source in sources if not source.video]
    videos = [source for source in sources if source.video]
    with _quiet_opencv():
        state = _Run(args, model, writer, len(images) + sum(_frame_count(source.path) for source in videos))
        written = state.images(images)
        videos_written = [path for path in map(state.video, videos) if path is not None]
    state.progress(state.total, state.total)
    writer.legend()
    failed = state.failed + [item for item, _ in problems]
    if written or videos_written:
        counts = [f"{written} image{'s' * (written != 1)}"]
        if videos:
            counts.append(f"{len(videos_written)} video{'s' * (len(videos_written) != 1)}")
        print(f"{' and '.join(counts)} -> {out}: labels/ (palette PNGs of class indices), masks/, overlays/, "
              "legend.png")
    if failed:
        print(f"semseg predict: {len(failed)} input{'s' * (len(failed) != 1)} failed: {', '.join(failed)}",
              file=sys.stderr)
    return 1 if failed or not (written or videos_written) else 0


def _opacity(value: str) -> float:
    opacity = float(value)
    if not 0.0 <= opacity <= 1.0:
        raise argparse.ArgumentTypeError(f"opacity must be between 0 and 1, got {value}")
    return opacity


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return number


def register(commands) -> None:
    """Add the subcommand to ``commands`` (an argparse subparsers action)."""
    predict = commands.add_parser(
        "predict", help="segment images, folders, glob patterns and videos: label PNGs, masks, overlays",
        description="Segment images, folders (searched recursively), glob patterns and video files with a\n"
                    "config (or zoo name) and a checkpoint, and write palette label PNGs, colored masks,\n"
                    "overlays and a legend under --out.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    predict.add_argument("config", help="config file or zoo name")
    predict.add_argument("checkpoint", help="checkpoint file or URL ('zoo': the zoo name's published weights)")
    predict.add_argument("inputs", nargs="+", metavar="INPUT",
                         help="image or video files, folders (searched recursively) or glob patterns "
                              "(quoted, e.g. 'photos/**/*.jpg')")
    predict.add_argument("--out", default="predictions", metavar="DIR",
                         help="output folder (default: predictions); its files are never taken as inputs")
    predict.add_argument("--opacity", type=_opacity, default=0.5,
                         help="weight of the class colors in the overlays, 0 to 1 (default: 0.5)")
    predict.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    predict.add_argument("--batch-size", type=_positive, default=1,
                         help="images (or video frames) of the same size per forward pass (default: 1)")
    predict.add_argument("--tta", action="store_true",
                         help="test-time augmentation: the config's tta_pipeline (multi-scale + flip)")
    add_inference_speed_options(predict)
    predict.add_argument("--cfg-options", nargs="+", default=None, metavar="KEY=VALUE",
                         help="override config entries, e.g. model.test_cfg.mode=slide")
    add_threads_option(predict)
    predict.set_defaults(func=run)
