"""Guards on registration and on the test suite itself: every table entry imports, every head and
backbone has a unit case and a conformance case, and ``make test`` cannot pass without the oracle."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import torch

from semseg.build import BACKBONES, HEADS, LOSSES, NECKS, SEGMENTORS, TABLES, build, lookup

TESTS = Path(__file__).parent
REPO = TESTS.parent


@pytest.mark.parametrize(("kind", "name"), [(kind, name) for kind, table in TABLES.items() for name in table])
def test_every_table_entry_imports(kind: str, name: str) -> None:
    assert callable(lookup(kind, name))


def _hrnet_extra(widths: tuple[int, ...]) -> dict:
    stage = dict(num_modules=1, block="BASIC")
    return dict(
        stage1=dict(num_modules=1, num_branches=1, block="BOTTLENECK", num_blocks=(1,), num_channels=(8,)),
        stage2=dict(stage, num_branches=2, num_blocks=(1, 1), num_channels=widths[:2]),
        stage3=dict(stage, num_branches=3, num_blocks=(1, 1, 1), num_channels=widths[:3]),
        stage4=dict(stage, num_branches=4, num_blocks=(1, 1, 1, 1), num_channels=widths),
    )


# One small instance of every backbone, to check the contract: forward returns a list of NCHW maps whose
# channels and strides are the backbone's ``out_channels`` and ``out_strides``.
SMALL_BACKBONES = {
    "ResNet": dict(depth=18, base_channels=8, stem_channels=8),
    "ResNetV1c": dict(depth=50, base_channels=4, stem_channels=8, out_indices=(1, 3), strides=(1, 2, 1, 1),
                      dilations=(1, 1, 2, 4)),
    "ResNetV1d": dict(depth=18, base_channels=8, stem_channels=8, out_indices=(0, 2)),
    "ResNeSt": dict(depth=50, base_channels=8, stem_channels=8, radix=2, groups=1, base_width=4),
    "HRNet": dict(extra=_hrnet_extra((4, 8, 12, 16))),
    "MobileNetV2": dict(widen_factor=0.35, out_indices=(1, 2, 4, 6)),
    "MobileNetV3": dict(arch="small", out_indices=(0, 1, 12)),
    "CGNet": dict(num_channels=(8, 16, 32), num_blocks=(2, 3), dilations=(2, 4), reductions=(4, 8)),
    "FastSCNN": dict(downsample_dw_channels=(8, 12), global_in_channels=16, global_block_channels=(16, 24, 32),
                     global_out_channels=32, higher_in_channels=16, lower_in_channels=32, fusion_out_channels=16),
    "BiSeNetV2": dict(detail_channels=(8, 8, 16), semantic_channels=(4, 8, 12, 16), semantic_expansion_ratio=2,
                      bga_channels=16),
    "SwinTransformer": dict(embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=7),
    "UNet": dict(base_channels=4),
    "VisionTransformer": dict(img_size=(64, 96), patch_size=16, embed_dims=16, num_layers=2, num_heads=2,
                              out_indices=(0, 1)),
}


def test_every_backbone_has_a_contract_case() -> None:
    assert set(SMALL_BACKBONES) == set(BACKBONES)


@pytest.mark.parametrize("type_name", sorted(SMALL_BACKBONES))
def test_backbones_state_their_outputs(type_name: str) -> None:
    torch.manual_seed(0)
    model = build("backbone", dict(type=type_name, **SMALL_BACKBONES[type_name])).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 96))
    assert isinstance(outs, (list, tuple)) and all(out.dim() == 4 for out in outs)
    assert [out.shape[1] for out in outs] == list(model.out_channels)
    assert [(64 // out.shape[2], 96 // out.shape[3]) for out in outs] == [(s, s) for s in model.out_strides]


@cache
def names_used(path: Path) -> frozenset[str]:
    """The string constants and the names a test file uses (``type="PSPHead"`` or ``PSPHead(...)``);
    a type name in a comment or docstring does not count."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
                  and isinstance(node.body[0], ast.Expr)}
    strings = {node.value for node in ast.walk(tree)
               if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings}
    return frozenset(strings | {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)})


def files_naming(type_name: str, conformance: bool) -> list[str]:
    files = (TESTS / "conformance").glob("test_*.py") if conformance else TESTS.glob("test_*.py")
    return [p.name for p in files if p.name != Path(__file__).name and type_name in names_used(p)]


@pytest.mark.parametrize("type_name", sorted({**HEADS, **BACKBONES, **NECKS, **LOSSES, **SEGMENTORS}))
def test_every_model_part_has_unit_and_conformance_cases(type_name: str) -> None:
    assert files_naming(type_name, conformance=False), f"no unit test under tests/ builds {type_name!r}"
    assert files_naming(type_name, conformance=True), f"no conformance test compares {type_name!r} with the oracle"


def test_the_guard_reads_code_not_comments(tmp_path: Path) -> None:
    path = tmp_path / "test_x.py"
    path.write_text('"""PSPHead in a docstring."""\n# "FCNHead" in a comment\nCFG = dict(type="UPerHead")\n'
                    'head = ASPPHead()\n')
    assert names_used(path) == {"dict", "CFG", "UPerHead", "head", "ASPPHead"}


@pytest.mark.parametrize("required", [True, False])
def test_a_broken_oracle_fails_the_run_where_it_is_required(tmp_path: Path, required: bool) -> None:
    fake = tmp_path / "site" / "mmseg"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('mmseg broken on purpose')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "SEMSEG_REQUIRE_ORACLE")}
    env["PYTHONPATH"] = os.pathsep.join([str(fake.parent), str(REPO)])
    if required:
        env["SEMSEG_REQUIRE_ORACLE"] = "1"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
         "tests/conformance/test_oracle_harness.py"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    output = result.stdout + result.stderr
    assert "mmseg broken on purpose" in output
    if required:
        assert result.returncode != 0
    else:
        assert result.returncode == 0 and "skipped" in output and "passed" not in output
