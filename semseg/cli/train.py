"""``semseg train CONFIG``: train (one process, or one per GPU under torchrun)."""

from __future__ import annotations

import argparse
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    from semseg.config import load_config
    from semseg.engine import distributed
    from semseg.engine.trainer import Trainer

    cfg = load_config(args.config, args.cfg_options)
    work_dir = args.work_dir or cfg.get("work_dir") or str(Path("work_dirs") / Path(str(args.config)).stem)
    resume = args.resume_from or args.resume
    try:
        compile_option = dict(mode=args.compile_mode) if args.compile_mode else args.compile
        Trainer(cfg, work_dir, resume=resume, amp=args.amp, device=args.device, channels_last=args.channels_last,
                fused_optimizer=args.fused_optimizer, check_finite_every=args.check_finite_every,
                compile=compile_option).train()
    except BaseException:
        distributed.cleanup(wait=False)
        raise
    distributed.cleanup()
    return 0


def register(commands) -> None:
    """Add the subcommand to ``commands`` (an argparse subparsers action)."""
    train = commands.add_parser("train", help="train the model a config (or zoo name) describes")
    train.add_argument("config")
    train.add_argument("--work-dir", default=None, help="default: work_dirs/<config name>")
    train.add_argument("--resume", action="store_true", help="resume from the latest checkpoint in the work dir")
    train.add_argument("--resume-from", default=None, help="resume from this checkpoint")
    train.add_argument("--amp", action="store_true", help="mixed precision (float16 on GPUs, bfloat16 on CPUs)")
    train.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    train.add_argument("--channels-last", action="store_true", help="weights and batches in channels-last format")
    train.add_argument("--fused-optimizer", action="store_true",
                       help="fused optimizer step on CUDA, foreach elsewhere (unless the config's optimizer sets it)")
    train.add_argument("--check-finite-every", type=int, default=1, metavar="N",
                       help="check the loss for NaN/inf every N iterations (and before each log, validation and "
                            "checkpoint) instead of every iteration: no per-iteration host sync on GPUs")
    train.add_argument("--compile", action="store_true", help="torch.compile the model (the first iteration, "
                                                              "which compiles, is logged apart)")
    train.add_argument("--compile-mode", default=None, help="torch.compile mode (implies --compile), "
                                                             "e.g. max-autotune")
    train.add_argument("--cfg-options", nargs="+", default=None, metavar="KEY=VALUE")
    train.set_defaults(func=run)
