"""``semseg train CONFIG``: train (one process, or one per GPU under torchrun)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from semseg.cli.common import add_threads_option, apply_threads
from semseg.cli.progress import ConsoleProgress

EXAMPLES = """\
examples:
  semseg train fcn_r18-d8_1xb8-600_synthetic-96x96 --work-dir work_dirs/demo   # a few CPU minutes, no download
  torchrun --nproc-per-node 4 -m semseg train my_config.py --amp \\
      --cfg-options train_dataloader.batch_size=4 optim_wrapper.optimizer.lr=0.02

The work dir receives <timestamp>.log (text), <timestamp>.jsonl (one JSON line per log / validation, for
semseg plot-log), iter_<N>.pth checkpoints and best_<metric>_iter_<N>.pth. Interrupted runs continue
with --resume. Under torchrun, each process loads batches of train_dataloader.batch_size (the total batch
is that times the number of processes) and DDP averages the gradients."""


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    from semseg.config import load_config
    from semseg.engine import distributed
    from semseg.engine.trainer import Trainer

    cfg = load_config(args.config, args.cfg_options)
    if args.check_data:
        from semseg.data.check import check_config_data

        check_config_data(cfg, ("train_dataloader", "val_dataloader"))
    work_dir = args.work_dir or cfg.get("work_dir") or str(Path("work_dirs") / Path(str(args.config)).stem)
    resume = args.resume_from or args.resume
    with distributed.process_group_scope():
        compile_option = dict(mode=args.compile_mode) if args.compile_mode else args.compile
        trainer = Trainer(cfg, work_dir, resume=resume, amp=args.amp, device=args.device,
                          channels_last=args.channels_last, fused_optimizer=args.fused_optimizer,
                          check_finite_every=args.check_finite_every, compile=compile_option)
        if sys.stderr.isatty():  # a bar between the log lines; elsewhere the log lines alone
            trainer.on_iteration = ConsoleProgress("train")
        trainer.train()
    return 0


def register(commands) -> None:
    """Add the subcommand to ``commands`` (an argparse subparsers action)."""
    train = commands.add_parser(
        "train", help="train the model a config (or zoo name) describes",
        description="Train for the config's train_cfg.max_iters iterations, validating every val_interval and\n"
                    "saving checkpoints as its default_hooks.checkpoint says; loss, lr, time per iteration and\n"
                    "ETA are logged every default_hooks.logger.interval iterations.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("config", help="config file (MMSegmentation 1.x form) or zoo name")
    train.add_argument("--work-dir", default=None, metavar="DIR",
                       help="where logs and checkpoints go (default: the config's work_dir, else "
                            "work_dirs/<config name>)")
    train.add_argument("--resume", action="store_true", help="resume from the latest checkpoint in the work dir")
    train.add_argument("--resume-from", default=None, metavar="CHECKPOINT",
                       help="resume from this training checkpoint (model, optimizer, scheduler, iteration)")
    train.add_argument("--amp", action="store_true", help="mixed precision (float16 on GPUs, bfloat16 on CPUs)")
    train.add_argument("--device", default=None,
                       help="cpu, cuda or cuda:N (default: cuda when available; under torchrun each process's GPU)")
    train.add_argument("--channels-last", action="store_true", help="weights and batches in channels-last format")
    train.add_argument("--fused-optimizer", action="store_true",
                       help="fused optimizer step on CUDA, foreach elsewhere (unless the config's optimizer sets it)")
    train.add_argument("--check-finite-every", type=int, default=1, metavar="N",
                       help="check the loss for NaN/inf every N iterations (and before each log, validation and "
                            "checkpoint) instead of every iteration: no per-iteration host sync on GPUs")
    train.add_argument("--compile", action="store_true", help="torch.compile the model (the first iteration, "
                                                              "which compiles, is logged apart)")
    train.add_argument("--compile-mode", default=None, metavar="MODE", help="torch.compile mode (implies --compile), "
                                                             "e.g. max-autotune")
    train.add_argument("--cfg-options", nargs="+", default=None, metavar="KEY=VALUE",
                       help="override config entries, e.g. train_cfg.max_iters=2000 "
                            "model.decode_head.num_classes=3")
    train.add_argument("--check-data", action="store_true",
                       help="read every training and validation file first: report all bad files and a class "
                            "histogram, and stop if any file is bad")
    add_threads_option(train)
    train.set_defaults(func=run)
