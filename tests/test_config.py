"""Tests for semseg.config: inheritance, overrides, errors with suggestions, dump, zoo lookup."""

import copy
import pickle
from pathlib import Path

import pytest

from semseg.config import Config, ConfigDict, find_config, load_config, parse_cfg_options


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A small config tree in MMSegmentation's layout: _base_/{models,datasets,schedules}, method folders."""
    write(tmp_path / "_base_/models/pspnet.py", """
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    type='EncoderDecoder',
    backbone=dict(type='ResNetV1c', depth=50, norm_cfg=norm_cfg, strides=(1, 2, 1, 1)),
    decode_head=dict(type='PSPHead', in_channels=2048, num_classes=19, norm_cfg=norm_cfg),
    auxiliary_head=[dict(type='FCNHead', num_classes=19), dict(type='FCNHead', num_classes=19)],
    test_cfg=dict(mode='whole'))
""")
    write(tmp_path / "_base_/datasets/city.py", """
import os
crop_size = (512, 1024)
train_pipeline = [dict(type='LoadImageFromFile'), dict(type='RandomCrop', crop_size=crop_size)]
data_root = os.path.join('data', 'cityscapes')
def helper():
    return 1
class Thing:
    pass
_private = 3
""")
    write(tmp_path / "_base_/schedules/40k.py", "optimizer = dict(type='SGD', lr=0.01)\nmax_iters = 40000\n")
    write(tmp_path / "pspnet/pspnet_r50.py", """
_base_ = ['../_base_/models/pspnet.py', '../_base_/datasets/city.py', '../_base_/schedules/40k.py']
model = dict(decode_head=dict(num_classes=150))
""")
    write(tmp_path / "pspnet/pspnet_r101.py", """
_base_ = './pspnet_r50.py'
model = dict(backbone=dict(depth=101))
max_iters = 80000
""")
    return tmp_path


def test_base_list_merge_and_skipped_names(tree: Path) -> None:
    cfg = Config.fromfile(tree / "pspnet/pspnet_r50.py")
    assert cfg.model.decode_head.num_classes == 150  # own value on top of the base
    assert cfg.model.decode_head.in_channels == 2048  # base value kept by the recursive merge
    assert cfg["optimizer"]["lr"] == 0.01 and cfg.max_iters == 40000
    assert cfg.crop_size == (512, 1024)
    assert cfg.data_root == "data/cityscapes"
    for skipped in ("os", "helper", "Thing", "_private", "_base_"):
        assert skipped not in cfg
    assert cfg.filename == str(tree / "pspnet/pspnet_r50.py")


def test_base_str_nested_relative(tree: Path) -> None:
    cfg = Config.fromfile(tree / "pspnet/pspnet_r101.py")
    assert cfg.model.backbone.depth == 101
    assert cfg.model.backbone.strides == (1, 2, 1, 1)
    assert cfg.model.decode_head.num_classes == 150  # from the middle file
    assert cfg.max_iters == 80000


def test_bases_merge_left_to_right(tmp_path: Path) -> None:
    write(tmp_path / "a.py", "x = dict(a=1, b=1)\ny = 'a'\n")
    write(tmp_path / "b.py", "x = dict(b=2, c=2)\ny = 'b'\n")
    write(tmp_path / "sub/c.py", "_base_ = ['../a.py', '../b.py']\nx = dict(c=3)\n")
    cfg = Config.fromfile(tmp_path / "sub/c.py")
    assert cfg.to_dict() == {"x": {"a": 1, "b": 2, "c": 3}, "y": "b"}


def test_delete_replaces_base_value(tree: Path) -> None:
    write(tree / "pspnet/mbv2.py", """
_base_ = './pspnet_r50.py'
model = dict(backbone=dict(_delete_=True, type='MobileNetV2', widen_factor=1.0))
""")
    cfg = Config.fromfile(tree / "pspnet/mbv2.py")
    assert cfg.model.backbone.to_dict() == {"type": "MobileNetV2", "widen_factor": 1.0}
    assert cfg.model.decode_head.num_classes == 150


def test_base_references_dict_and_tuple(tree: Path) -> None:
    write(tree / "pspnet/ref.py", """
_base_ = './pspnet_r50.py'
head = {{_base_.model.decode_head}}
size = {{ _base_.crop_size }}
quoted = '{{_base_.model.test_cfg.mode}}'
first_aux = {{_base_.model.auxiliary_head.1}}
model = dict(test_cfg=dict(mode='slide', crop_size={{_base_.crop_size}}))
""")
    cfg = Config.fromfile(tree / "pspnet/ref.py")
    assert cfg.head.to_dict() == {
        "type": "PSPHead", "in_channels": 2048, "num_classes": 150,
        "norm_cfg": {"type": "SyncBN", "requires_grad": True},
    }
    assert cfg.size == (512, 1024) and isinstance(cfg.size, tuple)
    assert cfg.quoted == "whole"
    assert cfg.first_aux.type == "FCNHead"
    assert cfg.model.test_cfg.to_dict() == {"mode": "slide", "crop_size": (512, 1024)}


def test_bad_base_reference_names_key(tree: Path) -> None:
    write(tree / "pspnet/badref.py", "_base_ = './pspnet_r50.py'\nx = {{_base_.modle}}\n")
    with pytest.raises(KeyError, match=r"badref\.py.*modle.*did you mean 'model'"):
        Config.fromfile(tree / "pspnet/badref.py")


def test_missing_base_names_file_and_referrer(tmp_path: Path) -> None:
    write(tmp_path / "top.py", "_base_ = ['./nope/missing.py']\nx = 1\n")
    with pytest.raises(FileNotFoundError) as err:
        Config.fromfile(tmp_path / "top.py")
    assert "missing.py" in str(err.value) and "top.py" in str(err.value)


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    write(tmp_path / "broken.py", "a = 1\nb = dict(x=1,,)\n")
    with pytest.raises(SyntaxError) as err:
        Config.fromfile(tmp_path / "broken.py")
    assert "broken.py" in str(err.value) and "line 2" in str(err.value)


def test_circular_bases_are_an_error(tmp_path: Path) -> None:
    write(tmp_path / "a.py", "_base_ = './b.py'\n")
    write(tmp_path / "b.py", "_base_ = './a.py'\n")
    with pytest.raises(ValueError, match="circular"):
        Config.fromfile(tmp_path / "a.py")


def test_configdict_attributes_and_suggestion() -> None:
    d = ConfigDict(model=dict(decode_head=dict(channels=512), heads=[dict(a=1)], pair=(dict(b=2), 3)))
    assert isinstance(d.model.heads[0], ConfigDict) and isinstance(d.model.pair[0], ConfigDict)
    assert isinstance(d.model.pair, tuple)
    d.model.decode_head.channels = 256
    d.model.new = dict(x=1)
    assert d["model"]["decode_head"]["channels"] == 256 and d.model.new.x == 1
    with pytest.raises(AttributeError, match=r"no key 'decode_hed' in model; did you mean 'decode_head'\?"):
        _ = d.model.decode_hed
    with pytest.raises(AttributeError, match=r"in model\.heads\.0; did you mean 'a'"):
        _ = d.model.heads[0].aa
    assert not hasattr(d, "nothing_like_it")
    plain = d.to_dict()
    assert type(plain["model"]) is dict and type(plain["model"]["heads"][0]) is dict
    assert type(plain["model"]["pair"]) is tuple and type(plain["model"]["pair"][0]) is dict
    clone = copy.deepcopy(d)
    clone.model.decode_head.channels = 1
    assert d.model.decode_head.channels == 256
    assert pickle.loads(pickle.dumps(d)) == d


def test_config_wrapper_errors_suggest() -> None:
    cfg = Config.from_dict({"model": {"type": "EncoderDecoder"}}, filename="x.py")
    assert cfg.get("model")["type"] == "EncoderDecoder" and "model" in cfg and cfg.get("nope", 3) == 3
    with pytest.raises(AttributeError, match="did you mean 'model'"):
        _ = cfg.modle


@pytest.mark.parametrize(
    "item, expected",
    [
        ("a=1", 1),
        ("a=-3", -3),
        ("a=0.5", 0.5),
        ("a=1e-4", 1e-4),
        ("a=True", True),
        ("a=false", False),
        ("a=None", None),
        ("a=whole", "whole"),
        ("a='slide'", "slide"),
        ('a="x,y"', "x,y"),  # quotes keep a comma inside one string
        ("a=[1,2]", [1, 2]),
        ("a=(512, 1024)", (512, 1024)),
        ("a=(1)", (1,)),
        ("a=[(1,2),(3,4)]", [(1, 2), (3, 4)]),
        ("a=[[1,2],[3]]", [[1, 2], [3]]),
        ("a=1,2,3", [1, 2, 3]),
        ("a=[a,'b']", ["a", "b"]),
        ("a=[]", []),
        ("a=[1,2", "[1,2"),  # does not parse: stays a string
        ("a=", ""),
        ("a.b.c=x=y", "x=y"),
    ],
)
def test_parse_cfg_options(item: str, expected: object) -> None:
    (value,) = parse_cfg_options([item]).values()
    assert value == expected and type(value) is type(expected)


def test_parse_cfg_options_key_and_error() -> None:
    assert parse_cfg_options(["model.decode_head.num_classes=19"]) == {"model.decode_head.num_classes": 19}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_cfg_options(["model.decode_head.num_classes"])


def test_merge_from_dict_paths_and_errors(tree: Path) -> None:
    cfg = Config.fromfile(tree / "pspnet/pspnet_r50.py")
    cfg.merge_from_dict({
        "model.decode_head.num_classes": 21,
        "model.auxiliary_head.1.num_classes": 5,
        "model.test_cfg.crop_size": (512, 512),  # a new leaf
        "model.backbone": {"depth": 101},  # a dict merges
        "work_dir": "runs/x",
    })
    assert cfg.model.decode_head.num_classes == 21
    assert [h.num_classes for h in cfg.model.auxiliary_head] == [19, 5]
    assert cfg.model.test_cfg.to_dict() == {"mode": "whole", "crop_size": (512, 512)}
    assert cfg.model.backbone.depth == 101 and cfg.model.backbone.type == "ResNetV1c"
    assert cfg.work_dir == "runs/x"
    cfg.merge_from_dict({"model.backbone": {"_delete_": True, "type": "MobileNetV2"}})
    assert cfg.model.backbone.to_dict() == {"type": "MobileNetV2"}
    with pytest.raises(KeyError) as err:
        cfg.merge_from_dict({"model.decode_hed.num_classes": 3})
    assert "model.decode_hed.num_classes" in str(err.value) and "did you mean 'decode_head'" in str(err.value)
    with pytest.raises(KeyError, match="not a valid index"):
        cfg.merge_from_dict({"model.auxiliary_head.2.num_classes": 3})


def test_dump_roundtrip(tree: Path, tmp_path: Path) -> None:
    cfg = Config.fromfile(tree / "pspnet/pspnet_r101.py")
    cfg.merge_from_dict({
        "odd": {"with-dash": 1, 3: "int key"},
        "single": (1,),
        "inf": float("inf"),
        "long": list(range(60)),
        "text": "it's \"quoted\"\n",
    })
    out = tmp_path / "dumped.py"
    cfg.dump(out)
    assert out.read_text() == cfg.pretty_text
    assert max(len(line) for line in cfg.pretty_text.splitlines()) <= 110
    again = Config.fromfile(out)
    assert again.to_dict() == cfg.to_dict()
    assert isinstance(again.single, tuple) and isinstance(again.model.backbone.strides, tuple)


def test_find_config(tmp_path: Path) -> None:
    write(tmp_path / "configs/pspnet/pspnet_r50-d8_4xb2-40k_cityscapes-512x1024.py", "x = 1\n")
    write(tmp_path / "configs/fcn/fcn_r50-d8_4xb2-40k_cityscapes-512x1024.py", "x = 2\n")
    write(tmp_path / "configs/_base_/models/pspnet_r50-d8.py", "x = 3\n")
    root = tmp_path / "configs"
    path = root / "pspnet/pspnet_r50-d8_4xb2-40k_cityscapes-512x1024.py"
    assert find_config("pspnet_r50-d8_4xb2-40k_cityscapes-512x1024", root=root) == path
    assert find_config("pspnet_r50-d8_4xb2-40k_cityscapes-512x1024.py", root=root) == path
    own = write(tmp_path / "mine.py", "y = 1\n")
    assert find_config(str(own), root=root) == own
    with pytest.raises(FileNotFoundError) as err:
        find_config("pspnet_r50-d8_4xb2-80k_cityscapes-512x1024", root=root)
    assert "pspnet_r50-d8_4xb2-40k_cityscapes-512x1024" in str(err.value)
    with pytest.raises(FileNotFoundError) as err:
        find_config("pspnet_r50-d8", root=root)  # only a _base_ file has this name
    assert "_base_" not in str(err.value)


def test_load_config_entry_points(tree: Path) -> None:
    path = tree / "pspnet/pspnet_r50.py"
    cfg = load_config(path, ["model.decode_head.num_classes=19", "model.test_cfg.mode=slide"])
    assert cfg.model.decode_head.num_classes == 19 and cfg.model.test_cfg.mode == "slide"
    again = load_config(cfg, {"model.decode_head.num_classes": 7})
    assert again.model.decode_head.num_classes == 7 and cfg.model.decode_head.num_classes == 19
    raw = {"model": {"type": "EncoderDecoder"}}
    from_dict = load_config(raw, {"model.type": "CascadeEncoderDecoder"})
    assert from_dict.model.type == "CascadeEncoderDecoder" and raw["model"]["type"] == "EncoderDecoder"


# Chosen for their features: `_base_` lists of four files, two-level chains, `_delete_` (mobilenet_v2,
# segformer, convnext, knet, twins, beit, vit). The oracle tree has no `{{_base_.x}}` references.
ORACLE_CONFIGS = [
    "pspnet/pspnet_r50-d8_4xb2-40k_cityscapes-512x1024.py",
    "pspnet/pspnet_r101-d8_4xb2-80k_cityscapes-512x1024.py",
    "deeplabv3plus/deeplabv3plus_r50-d8_4xb4-80k_ade20k-512x512.py",
    "mobilenet_v2/mobilenet-v2-d8_fcn_4xb4-160k_ade20k-512x512.py",
    "mobilenet_v2/mobilenet-v2-d8_deeplabv3plus_4xb2-80k_cityscapes-512x1024.py",
    "segformer/segformer_mit-b0_8xb1-160k_cityscapes-1024x1024.py",
    "convnext/convnext-tiny_upernet_8xb2-amp-160k_ade20k-512x512.py",
    "knet/knet-s3_r50-d8_upernet_8xb2-adamw-80k_ade20k-512x512.py",
    "twins/twins_svt-s_fpn_fpnhead_8xb4-80k_ade20k-512x512.py",
    "beit/beit-base_upernet_8xb2-160k_ade20k-640x640.py",
    "vit/vit_vit-b16_mln_upernet_8xb2-80k_ade20k-512x512.py",
    "hrnet/fcn_hr18s_4xb2-40k_cityscapes-512x1024.py",
    "ocrnet/ocrnet_hr18_4xb2-40k_cityscapes-512x1024.py",
    "pspnet/pspnet_r101-d8_4xb2-amp-80k_cityscapes-512x1024.py",
]


@pytest.mark.conformance
@pytest.mark.parametrize("name", ORACLE_CONFIGS)
def test_oracle_configs_resolve_like_mmengine(name: str) -> None:
    import mmengine
    from oracle import mmseg_config_dir

    path = mmseg_config_dir() / name
    assert path.is_file(), f"oracle config moved: {path}"
    expected = mmengine.Config.fromfile(str(path), import_custom_modules=False).to_dict()
    # Compared as they are: no tuple/list normalizing is needed, both keep tuples as tuples.
    assert Config.fromfile(path).to_dict() == expected
