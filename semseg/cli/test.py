"""``semseg test CONFIG CHECKPOINT``: evaluate on the config's test set."""

from __future__ import annotations

import argparse

from semseg.cli.common import add_inference_speed_options, add_threads_option, apply_threads

EXAMPLES = """\
examples:
  semseg test pspnet_r50-d8_4xb2-40k_cityscapes-512x1024 zoo --work-dir work_dirs/psp
  semseg test my_config.py work_dirs/run/iter_8000.pth --tta --confusion-matrix cm.png \\
      --cfg-options test_dataloader.batch_size=2
"""


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    from semseg.engine import distributed
    from semseg.engine.testing import run_test

    if args.check_data:
        from semseg.config import load_config
        from semseg.data.check import check_config_data

        check_config_data(load_config(args.config, args.cfg_options), ("test_dataloader",))
    with distributed.process_group_scope():
        run_test(args.config, args.checkpoint, cfg_options=args.cfg_options, tta=args.tta,
                 show_dir=args.show_dir, out_dir=args.out, device=args.device, work_dir=args.work_dir,
                 precision=args.precision, fuse=args.fuse, onednn=args.onednn, confusion_matrix=args.confusion_matrix)
    return 0


def register(commands) -> None:
    """Add the subcommand to ``commands`` (an argparse subparsers action)."""
    test = commands.add_parser(
        "test", help="evaluate a checkpoint on the config's test set (mIoU, mAcc, aAcc)",
        description="Evaluate a checkpoint on the config's test_dataloader with its test_evaluator and print\n"
                    "the per-class table and the summary (aAcc, mIoU, mAcc). Under torchrun, each process\n"
                    "evaluates a share of the images.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    test.add_argument("config", help="config file or zoo name")
    test.add_argument("checkpoint", help="checkpoint file or URL ('zoo': the zoo name's published weights)")
    test.add_argument("--tta", action="store_true",
                      help="test-time augmentation: the config's tta_pipeline (multi-scale + flip)")
    test.add_argument("--show-dir", default=None, metavar="DIR", help="write colored overlays here")
    test.add_argument("--out", default=None, metavar="DIR",
                      help="write label PNGs here (Cityscapes: labelIds, as its evaluation server expects)")
    test.add_argument("--work-dir", default=None, metavar="DIR", help="write the metrics to DIR/test_metrics.json")
    test.add_argument("--confusion-matrix", default=None, metavar="FILE",
                      help="write the confusion matrix plot to FILE (.png, .pdf or .svg; rows: ground truth, "
                           "normalized to sum 1) and its pixel counts beside it as FILE's stem .npy and .csv "
                           "(needs matplotlib: pip install 'semseg[vis]')")
    test.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    add_inference_speed_options(test)
    test.add_argument("--cfg-options", nargs="+", default=None, metavar="KEY=VALUE",
                      help="override config entries, e.g. model.test_cfg.mode=slide test_dataloader.batch_size=2")
    test.add_argument("--check-data", action="store_true",
                      help="read every test file first: report all bad files and a class histogram, and stop if "
                           "any file is bad")
    add_threads_option(test)
    test.set_defaults(func=run)
