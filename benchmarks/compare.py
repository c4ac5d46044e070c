"""semseg against MMSegmentation 1.2.2 on this machine: the same weights, one process, interleaved.

Each row times one setting for semseg (A) and, where the row has one, for MMSegmentation (B), alternating
A B A B ... ``--repeats`` times; a figure is the median of its repeats, the ratio is A / B of the medians,
and the spread is the min..max over the repeats. Inference is the network forward plus post-processing
(resize to the input size, argmax) per image, data loading excluded; training is one SGD step (forward,
backward, update) per iteration on random batches. GFLOP/s counts a multiply-add as two FLOPs (the
ceiling figures of issue 7 use that convention).

On a CPU the seed page's setting (R-101-D8, 1024x512, batch 2) is scaled down: R-50-D8, 512x256
inputs, batch 2 for training, and slide inference of a 512x1024 image with 256x512 crops. Needs the
`conformance` extra (MMSegmentation, mmcv-lite, mmengine) for the B columns.

    python benchmarks/compare.py [--repeats 3] [--out benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "conformance"))

from oracle import (  # noqa: E402
    build_oracle_model,
    install_ext_stub,
    load_oracle_config,
    randomize_,
    save_oracle_state_dict,
)

import semseg  # noqa: E402
from semseg.flops import model_complexity  # noqa: E402

MODELS = {
    "PSPNet": "pspnet_r50-d8_4xb2-40k_cityscapes-512x1024",
    "DeepLabV3+": "deeplabv3plus_r50-d8_4xb2-40k_cityscapes-512x1024",
}
WHOLE_SHAPE = (256, 512)
SLIDE_SHAPE, SLIDE_CROP, SLIDE_STRIDE = (512, 1024), (256, 512), (171, 341)
TRAIN_SHAPE, TRAIN_BATCH = (256, 512), 2


@dataclass
class Row:
    """One line of the table: seconds per image / iteration of each repeat, A (semseg) and B (oracle)."""

    what: str
    a: list[float] = field(default_factory=list)
    b: list[float] = field(default_factory=list)
    flops: float | None = None  # multiply-adds per image / iteration forward
    note: str = ""


def timed(fn: Callable[[], object], count: int) -> float:
    """Seconds per call of ``fn`` over ``count`` calls (after one untimed call)."""
    fn()
    start = time.perf_counter()
    for _ in range(count):
        fn()
    return (time.perf_counter() - start) / count


def interleave(row: Row, a: Callable[[], object], b: Callable[[], object] | None, repeats: int,
               count: int) -> Row:
    for _ in range(repeats):
        row.a.append(timed(a, count))
        if b is not None:
            row.b.append(timed(b, count))
    print(f"  {row.what}: semseg {statistics.median(row.a):.3f} s"
          + (f", MMSegmentation {statistics.median(row.b):.3f} s" if row.b else ""), flush=True)
    return row


def oracle_metas(x: torch.Tensor) -> list[dict]:
    hw = tuple(x.shape[2:])
    return [dict(ori_shape=hw, img_shape=hw, pad_shape=hw, padding_size=[0, 0, 0, 0], flip=False)] * len(x)


def oracle_samples(labels: torch.Tensor) -> list:
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    samples = []
    for i, meta in enumerate(oracle_metas(labels[:, None])):
        sample = SegDataSample(metainfo=meta)
        sample.gt_sem_seg = PixelData(data=labels[i:i + 1])
        samples.append(sample)
    return samples


def build_pair(name: str, tmp: Path):
    """(oracle, checkpoint path) with random weights and random BatchNorm statistics."""
    oracle = randomize_(build_oracle_model(load_oracle_config(name).model, seed=1), seed=2)
    return oracle, save_oracle_state_dict(oracle, tmp / f"{name}.pth")


def ours(name: str, path: Path, test_cfg: dict | None = None, **options) -> torch.nn.Module:
    cfg_options = {"model.pretrained": None, **({"model.test_cfg": test_cfg} if test_cfg else {})}
    return semseg.init_model(name, checkpoint=path, cfg_options=cfg_options, **options)


def predict(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.inference(x).argmax(dim=1)


def oracle_predict(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        logits = model.inference(x, oracle_metas(x))
        return F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=False).argmax(dim=1)


def sgd(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9, weight_decay=5e-4)


def train_step(model, optimizer, x, labels, oracle: bool, bf16: bool) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        losses = model.loss(x, oracle_samples(labels)) if oracle else model.loss(x, labels)
    loss = sum(v for k, v in losses.items() if "loss" in k)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def inference_rows(label: str, name: str, tmp: Path, repeats: int, count: int) -> list[Row]:
    oracle, path = build_pair(name, tmp)
    x = torch.randn(1, 3, *WHOLE_SHAPE, generator=torch.Generator().manual_seed(0))
    exact = ours(name, path)
    flops = model_complexity(exact, x).flops
    rows = [interleave(Row(f"{label} whole, fp32 (exact)", flops=flops),
                       lambda: predict(exact, x), lambda: oracle_predict(oracle, x), repeats, count)]
    onednn = ours(name, path, onednn=True, fuse=True, inference_mode=True)
    with torch.no_grad():
        logits = exact.inference(x)
        relative = ((onednn.inference(x) - logits).abs().max() / logits.abs().max()).item()
    rows.append(interleave(Row(f"{label} whole, fp32 oneDNN prepacked + blocked layout, fused", flops=flops,
                               note=f"logits within {relative:.1e} of the exact ones (relative)"),
                           lambda: predict(onednn, x), lambda: oracle_predict(oracle, x), repeats, count))
    fused = ours(name, path, fuse=True, channels_last=True, inference_mode=True)
    rows.append(interleave(Row(f"{label} whole, fp32 fused + channels-last", flops=flops),
                           lambda: predict(fused, x), lambda: oracle_predict(oracle, x), repeats, count))
    bf16 = ours(name, path, precision="bf16", fuse=True, channels_last=True, inference_mode=True)
    agreement = (predict(bf16, x) == predict(exact, x)).float().mean().item()
    rows.append(interleave(Row(f"{label} whole, bf16 (vs MMSegmentation fp32)", flops=flops,
                               note=f"{100 * agreement:.2f} % of pixels keep the fp32 class"),
                           lambda: predict(bf16, x), lambda: oracle_predict(oracle, x), repeats, count))
    for what, precision in (("fp32", "fp32"), ("bf16", "bf16")):
        compiled = ours(name, path, precision=precision, compile=True)
        predict(compiled, x)  # compiles
        seconds = compiled.compile_seconds
        agreement = (predict(compiled, x) == predict(exact, x)).float().mean().item()
        rows.append(interleave(Row(f"{label} whole, {what} torch.compile (inductor, frozen weights)", flops=flops,
                                   note=f"compiled in {seconds:.0f} s; {100 * agreement:.2f} % of pixels keep "
                                        f"the exact fp32 class"),
                               lambda m=compiled: predict(m, x), lambda: oracle_predict(oracle, x), repeats, count))
    return rows


def slide_rows(name: str, tmp: Path, repeats: int) -> list[Row]:
    oracle, path = build_pair(name, tmp)
    slide = dict(mode="slide", crop_size=SLIDE_CROP, stride=SLIDE_STRIDE)
    oracle.test_cfg = copy.deepcopy(oracle.test_cfg)
    oracle.test_cfg.update(slide)
    x = torch.randn(1, 3, *SLIDE_SHAPE, generator=torch.Generator().manual_seed(0))
    rows = []
    for what, batch, onednn in (("crop by crop", 1, False), ("batched crops (batch_size=4)", 4, False),
                                ("crop by crop, oneDNN", 1, True)):
        model = ours(name, path, test_cfg=slide, onednn=onednn)
        model.test_cfg["batch_size"] = batch
        rows.append(interleave(Row(f"PSPNet slide {SLIDE_SHAPE[1]}x{SLIDE_SHAPE[0]}, crops "
                                   f"{SLIDE_CROP[1]}x{SLIDE_CROP[0]}, fp32 {what}"),
                               lambda m=model: predict(m, x), lambda: oracle_predict(oracle, x), repeats, 1))
    return rows


def train_rows(label: str, name: str, tmp: Path, repeats: int, count: int) -> list[Row]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(TRAIN_BATCH, 3, *TRAIN_SHAPE, generator=gen)
    labels = torch.randint(0, 19, (TRAIN_BATCH, *TRAIN_SHAPE), generator=gen)
    rows = []
    for bf16 in (False, True):
        oracle, path = build_pair(name, tmp)
        model = ours(name, path)
        oracle.train()
        model.train()
        opt_a, opt_b = sgd(model), sgd(oracle)
        what = f"{label} train step, batch {TRAIN_BATCH}, {TRAIN_SHAPE[1]}x{TRAIN_SHAPE[0]}, " \
               + ("bf16 autocast" if bf16 else "fp32")
        rows.append(interleave(Row(what, flops=3 * model_complexity(model, x).flops),
                               lambda m=model, o=opt_a, b=bf16: train_step(m, o, x, labels, False, b),
                               lambda m=oracle, o=opt_b, b=bf16: train_step(m, o, x, labels, True, b),
                               repeats, count))
    return rows


def table(rows: list[Row]) -> str:
    lines = ["| setting | semseg (s) | MMSegmentation (s) | semseg / MMSeg | semseg GFLOP/s | notes |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        a = statistics.median(row.a)
        spread = f"{a:.3f} ({min(row.a):.3f}..{max(row.a):.3f})"
        b = statistics.median(row.b) if row.b else None
        b_text = f"{b:.3f} ({min(row.b):.3f}..{max(row.b):.3f})" if b else "-"
        ratio = f"{a / b:.2f}x" if b else "-"
        gflops = f"{2 * row.flops / a / 1e9:.0f}" if row.flops else "-"
        lines.append(f"| {row.what} | {spread} | {b_text} | {ratio} | {gflops} | {row.note} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repetitions per side")
    parser.add_argument("--images", type=int, default=2, help="timed images (iterations) per repetition")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=None, help="write the markdown here (else print it)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    install_ext_stub()
    import mmseg

    started = time.strftime("%Y-%m-%d %H:%M")
    command = "python benchmarks/compare.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header = "\n".join([
        "# semseg vs MMSegmentation 1.2.2",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {args.threads} threads, "
        f"torch {torch.__version__}, MMSegmentation {mmseg.__version__}, semseg {semseg.__version__}; "
        f"{started}. Command: `{command.strip()}`.",
        "",
        f"Same random weights in both, one process, interleaved {args.repeats}x; median seconds per image "
        f"(inference: forward + resize + argmax) or per iteration (training), (min..max) over the repeats. "
        f"CPU scale-down of the seed page's setting: R-50-D8 (output stride 8), {WHOLE_SHAPE[1]}x"
        f"{WHOLE_SHAPE[0]} inputs, batch {TRAIN_BATCH} for training. GFLOP/s counts a multiply-add as two "
        f"(training: forward x 3).",
        "",
    ])
    rows: list[Row] = []

    def report(done: bool) -> None:  # after every group, so that an interrupted run keeps what it measured
        text = header + "\n" + table(rows) + "\n" + ("" if done else "\n(run interrupted: rows so far)\n")
        if args.out:
            args.out.write_text(text)
        if done:
            print(text)

    with tempfile.TemporaryDirectory() as tmp:
        for label, name in MODELS.items():
            rows += inference_rows(label, name, Path(tmp), args.repeats, args.images)
            report(done=False)
        rows += slide_rows(MODELS["PSPNet"], Path(tmp), args.repeats)
        report(done=False)
        for label, name in MODELS.items():
            rows += train_rows(label, name, Path(tmp), args.repeats, args.images)
            report(done=False)
    report(done=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
