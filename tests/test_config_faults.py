"""Config faults found at start-up, before any work (issue 12, item 7): keys nothing takes, wrong value
types, a crop larger than the image scale, num_classes disagreeing between heads and dataset, each a
one-line ConfigError naming the key's path and the nearest valid key; unknown top-level keys warn;
SyncBN on one process is a logged switch to BatchNorm; loader faults (syntax, code errors, bytes) too."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest

from semseg.config import Config, ConfigError, load_config
from semseg.config_check import RUNNER_KEYS, ConfigWarning, check_config

CONFIGS = Path(__file__).resolve().parents[1] / "semseg" / "configs"
SYNTHETIC = CONFIGS / "synthetic" / "fcn_r18-d8_1xb8-600_synthetic-96x96.py"


def check(*options: str, config: str | Path = SYNTHETIC, training: bool = True) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigWarning)  # a test that expects a warning says so
        return check_config(load_config(config, list(options)), training=training)


def error_of(*options: str, config: str | Path = SYNTHETIC) -> str:
    with pytest.raises(ConfigError) as info:
        check(*options, config=config)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(("option", "expected"), [
    # the three faults a new user met: each ran (whole inference, 600 iterations) or failed deep inside
    ("model.test_cfg.mod=slide", "model.test_cfg.mod: model.test_cfg takes no key 'mod'; did you mean 'mode'?"),
    ("train_cfg.max_iter=5", "train_cfg.max_iter: IterBasedTrainLoop takes no key 'max_iter'; did you mean "
                             "'max_iters'?"),
    ("model.decode_head.num_classes=five", "model.decode_head.num_classes: expected int, got 'five' (str)"),
    # constructor arguments at any depth
    ("model.decode_head.num_clases=5", "model.decode_head.num_clases: FCNHead takes no key 'num_clases'; "
                                       "did you mean 'num_classes'?"),
    ("model.backbone.dept=18", "model.backbone.dept: ResNetV1c takes no key 'dept'; did you mean 'depth'?"),
    ("model.decode_head.loss_decode.loss_wieght=1.0", "model.decode_head.loss_decode.loss_wieght: "
                                                      "CrossEntropyLoss takes no key 'loss_wieght'"),
    ("model.backbone.norm_cfg.requires_grd=True", "model.backbone.norm_cfg.requires_grd: norm_cfg of type 'BN' "
                                                  "takes no key 'requires_grd'; did you mean 'requires_grad'?"),
    ("model.decode_head.type=FCNHaed", "model.decode_head.type: unknown head type 'FCNHaed'; did you mean 'FCNHead'"),
    ("train_dataloader.dataset.pipeline.2.keep_ration=True", "train_dataloader.dataset.pipeline.2.keep_ration: "
                                                             "RandomResize takes no key 'keep_ration'"),
    ("train_dataloader.dataset.num_sample=4", "train_dataloader.dataset.num_sample: SyntheticDataset takes no "
                                              "key 'num_sample'; did you mean 'num_samples'?"),
    ("train_dataloader.sampler.shufle=True", "train_dataloader.sampler.shufle: InfiniteSampler takes no key"),
    ("optim_wrapper.optimizer.lrr=0.1", "optim_wrapper.optimizer.lrr: SGD takes no key 'lrr'; did you mean 'lr'?"),
    ("param_scheduler.1.powr=1.0", "param_scheduler.1.powr: PolyLR takes no key 'powr'; did you mean 'power'?"),
    # settings dicts: loops, dataloaders, hooks, evaluators, randomness, the model's inference settings
    ("train_dataloader.batchsize=2", "train_dataloader.batchsize: a dataloader takes no key 'batchsize'; "
                                     "did you mean 'batch_size'?"),
    ("default_hooks.checkpoint.intervall=3", "default_hooks.checkpoint.intervall: CheckpointHook takes no key "
                                             "'intervall'; did you mean 'interval'?"),
    ("default_hooks.chekpoint={'type': 'CheckpointHook'}", "default_hooks.chekpoint: default_hooks"),
    ("val_evaluator.iou_metric=[mIoU]", "val_evaluator.iou_metric: IoUMetric takes no key 'iou_metric'"),
    ("randomness.sed=1", "randomness.sed: randomness takes no key 'sed'; did you mean 'seed'?"),
    ("test_cfg.mode=slide", "(the inference settings are model.test_cfg)"),
    ("model.test_cfg.stride=(64,64)", None),  # a slide key under whole mode is harmless
    # wrong types and values
    ("model.backbone.depth=eighteen", "model.backbone.depth: expected int, got 'eighteen' (str)"),
    ("train_cfg.max_iters=5.5", "train_cfg.max_iters: expected int, got 5.5 (float)"),
    ("train_dataloader.batch_size=0", "train_dataloader.batch_size: expected a positive int, got 0"),
    ("default_hooks.logger.interval=often", "default_hooks.logger.interval: expected int, got 'often' (str)"),
    ("model.decode_head.dropout_ratio=1.5", "model.decode_head.dropout_ratio: expected a probability"),
    ("model.test_cfg.mode=sliding", "model.test_cfg.mode: expected 'whole' or 'slide', got 'sliding' (str)"),
    ("model.test_cfg.mode=slide", "model.test_cfg: mode='slide' needs crop_size and stride"),
])
def test_fault_is_a_one_line_error_naming_the_key(option: str, expected: str | None) -> None:
    if expected is None:
        check(option)
    else:
        assert expected in error_of(option)


def test_slide_stride_larger_than_crop_would_leave_holes() -> None:
    message = error_of("model.test_cfg.mode=slide", "model.test_cfg.crop_size=(64,64)", "model.test_cfg.stride=(80,64)")
    assert message == ("model.test_cfg.stride: (80, 64) is larger than crop_size (64, 64): windows would leave "
                       "pixels unpredicted")
    check("model.test_cfg.mode=slide", "model.test_cfg.crop_size=(64,64)", "model.test_cfg.stride=(64,48)")


def test_crop_larger_than_the_image_scale() -> None:
    # the train pipeline resizes to 128 x 128 times at most 1.25 (keep_ratio): no side exceeds 160
    message = error_of("train_dataloader.dataset.pipeline.3.crop_size=(96,200)")
    assert message.startswith("train_dataloader.dataset.pipeline.3.crop_size: (96, 200) (h, w) is larger than the "
                              "images pipeline.2 makes (sides at most 160 x 160)")
    check("train_dataloader.dataset.pipeline.3.crop_size=(160,160)")
    # without keep_ratio the image is exactly the scale times the ratio: (w, h) = (160, 80) at most
    assert "is larger than the images" in error_of("train_dataloader.dataset.pipeline.2.keep_ratio=False",
                                                   "train_dataloader.dataset.pipeline.2.scale=(128,64)",
                                                   "train_dataloader.dataset.pipeline.3.crop_size=(96,96)")


def test_num_classes_must_agree_between_heads_and_dataset() -> None:
    assert error_of("model.auxiliary_head.num_classes=4") == \
        "model.auxiliary_head.num_classes: 4 disagrees with model.decode_head.num_classes=5"
    assert error_of("model.decode_head.num_classes=6", "model.auxiliary_head.num_classes=6") == \
        "model.decode_head.num_classes: 6 disagrees with the 5 classes of train_dataloader.dataset"
    check("model.decode_head.num_classes=7", "model.auxiliary_head.num_classes=7",
          "train_dataloader.dataset.num_classes=7", "val_dataloader.dataset.num_classes=7",
          "test_dataloader.dataset.num_classes=7")
    # a zoo config: Cityscapes has 19 classes
    message = error_of("model.decode_head.num_classes=150", "model.auxiliary_head.num_classes=150",
                       config="pspnet_r50-d8_4xb2-40k_cityscapes-512x1024")
    assert message == "model.decode_head.num_classes: 150 disagrees with the 19 classes of train_dataloader.dataset " \
                      "(CityscapesDataset)"


def test_missing_required_argument_and_type_are_named() -> None:
    assert error_of("model.decode_head={'_delete_': True, 'type': 'FCNHead', 'in_channels': 128}") == \
        "model.decode_head: FCNHead needs 'channels', 'num_classes'"
    assert "model.backbone.tpye: a backbone config takes no key 'tpye'; did you mean 'type'?" in \
        error_of("model.backbone={'_delete_': True, 'tpye': 'ResNet', 'depth': 18}")


def test_training_needs_its_sections() -> None:
    cfg = load_config(SYNTHETIC)
    del cfg.train_cfg["max_iters"]
    with pytest.raises(ConfigError, match="^train_cfg: training needs max_iters$"):
        check_config(cfg, training=True)
    check_config(cfg)  # testing and predicting do not read train_cfg


def test_runner_keys_are_accepted_and_unknown_top_level_keys_warn() -> None:
    cfg = load_config(SYNTHETIC)
    for key in RUNNER_KEYS:
        cfg[key] = {"type": "Anything"}
    cfg["my_crop"] = (96, 96)  # a helper variable of the user's: its value is used in the config
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_config(cfg, training=True)
    cfg["trian_dataloader"] = {"batch_size": 2}
    cfg["colour"] = "red"
    with pytest.warns(ConfigWarning) as records:
        check_config(cfg)
    messages = sorted(str(r.message) for r in records)
    assert messages == ["config key 'colour' is not read by semseg (nor by MMSegmentation's runner)",
                        "config key 'trian_dataloader' is not read by semseg (nor by MMSegmentation's runner); "
                        "did you mean 'train_dataloader'?"]


def test_cfg_option_on_a_helper_variable_warns_it_changes_nothing() -> None:
    with pytest.warns(ConfigWarning, match="cfg-option 'num_classes' sets a variable of the config file"):
        check_config(load_config(SYNTHETIC, ["num_classes=five"]))


def test_syncbn_on_one_process_is_a_logged_switch_to_batchnorm(caplog) -> None:
    options = ["model.backbone.norm_cfg.type=SyncBN", "model.decode_head.norm_cfg.type=SyncBN"]
    with caplog.at_level(logging.INFO, logger="semseg.config_check"):
        notes = check(*options)
    assert notes == ["SyncBN (model.backbone.norm_cfg and 1 more) on one process: using BatchNorm2d instead "
                     "(same parameters and statistics; nothing to synchronize)"]
    assert notes[0] in caplog.text
    assert check(*options, training=False) == []  # inference: SyncBN in eval mode is BatchNorm
    assert check_config(load_config(SYNTHETIC, options), training=True, world_size=2) == []
    assert check() == []


def test_every_zoo_config_passes_without_warnings() -> None:
    """The checks reject no config of the zoo (the 498 names and the configs beside them) and warn about none."""
    names = sorted(p for p in CONFIGS.rglob("*.py") if "_base_" not in p.parts)
    assert len(names) > 500
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigWarning)
        for path in names:
            check_config(Config.fromfile(path), training=True)


def test_loader_faults_are_config_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("a = 1\nb = dict(x=1,,)\n")
    with pytest.raises(ConfigError, match=r"invalid config file .*broken\.py, line 2") as info:
        load_config(broken)
    assert isinstance(info.value, SyntaxError)  # still what code written before ConfigError caught
    code = tmp_path / "code.py"
    code.write_text("a = 1\nb = undefined_name + 1\n")
    with pytest.raises(ConfigError, match=r"config file .*code\.py, line 2: NameError: name 'undefined_name'"):
        load_config(code)
    binary = tmp_path / "binary.py"
    binary.write_bytes(b"a = 1\n\xff\xfe\x00")
    with pytest.raises(ConfigError, match=r"binary\.py, line 2: not UTF-8 text"):
        load_config(binary)
    with pytest.raises(ConfigError, match="no config file or zoo config named") as info:
        load_config(tmp_path / "missing.py")
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(ConfigError, match="cfg-option 'modle.x': no key 'modle' in config; did you mean 'model'") as info:
        load_config(SYNTHETIC, ["modle.x=1"])
    assert isinstance(info.value, KeyError) and str(info.value).startswith("cfg-option")  # no KeyError quotes
