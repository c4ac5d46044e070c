"""Chaining transforms: a pipeline, and test-time augmentation over the product of alternatives."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Sequence

from semseg.build import build


def _build_step(step: dict | Callable) -> Callable:
    if isinstance(step, dict):
        return build("transform", step)
    if callable(step):
        return step
    raise TypeError(f"a pipeline step must be a config dict or a callable, got {step!r}")


class Compose:
    """Apply transforms built from a pipeline config list in order; a step returning ``None`` (an image
    skipped by ``ignore_empty``) stops the pipeline, which then returns ``None``."""

    def __init__(self, pipeline: Sequence[dict | Callable]):
        self.transforms = [_build_step(step) for step in pipeline]

    def __call__(self, results: dict) -> dict | None:
        for transform in self.transforms:
            results = transform(results)
            if results is None:
                return None
        return results


class TestTimeAug:
    """Test-time augmentation: ``transforms`` is a list of lists of alternatives; every combination (the
    cartesian product, first list varying slowest) runs on its own copy of ``results``.

    Returns the list of outputs, one per combination (MMSegmentation instead gathers them into a dict of
    lists). With the usual config (k resizes x 2 flips x [LoadAnnotations] x [PackSegInputs]) that is 2k
    packed inputs.
    """

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, transforms: Sequence[Sequence[dict | Callable]]):
        alternatives = [[_build_step(step) for step in options] for options in transforms]
        if not alternatives or not all(alternatives):
            raise ValueError("TestTimeAug needs a non-empty list of non-empty lists of transforms")
        self.subroutines = [Compose(combination) for combination in itertools.product(*alternatives)]

    def __call__(self, results: dict) -> list:
        outputs = [subroutine(copy.deepcopy(results)) for subroutine in self.subroutines]
        if any(output is None for output in outputs):
            raise ValueError("a TestTimeAug combination returned None; every combination must give a result")
        return outputs
