"""type tables: unknown names and misspelt arguments are reported with the nearest valid one."""

from __future__ import annotations

import pytest

from semseg.build import accepted_arguments, build, lookup
from semseg.models.heads.fcn import FCNHead

HEAD = dict(type="FCNHead", in_channels=8, channels=8, num_classes=3, num_convs=1)


def test_unknown_type_suggests_the_nearest() -> None:
    with pytest.raises(KeyError, match="unknown head type 'PSPHaed'; did you mean 'PSPHead'"):
        lookup("head", "PSPHaed")


def test_arguments_forwarded_to_the_base_class_are_checked() -> None:
    # FCNHead takes **kwargs for BaseDecodeHead: a misspelt base argument is still caught by name
    with pytest.raises(TypeError, match="FCNHead has no argument 'num_clases'; did you mean 'num_classes'"):
        build("head", {**HEAD, "num_clases": 4})
    with pytest.raises(TypeError, match="ResNetV1c has no argument 'dilation'; did you mean 'dilations'"):
        build("backbone", dict(type="ResNetV1c", depth=18, dilation=2))


def test_accepted_arguments_walk_the_forwarding_chain() -> None:
    names = accepted_arguments(FCNHead)
    assert {"num_convs", "concat_input", "num_classes", "in_index", "loss_decode"} <= names
    assert "kwargs" not in names

    class TakesAnything:
        def __init__(self, **kwargs):
            pass

    assert accepted_arguments(TakesAnything) is None


def test_config_without_type_is_refused() -> None:
    with pytest.raises(TypeError, match="must be a dict with a 'type' key"):
        build("head", {"in_channels": 8})
