"""What a segmentor is, in a few lines: backbone, neck, heads, classes, output, inference mode, parameters.

``print(model)`` keeps PyTorch's module tree (what a PyTorch user asks for when printing a module);
``model.summary()`` gives the short form, and Jupyter shows the short form as a table with the module tree
folded under it (``_repr_html_``), so a notebook cell ending in ``model`` is readable at a glance.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

__all__ = ["ModelSummary", "summarize", "summary_html"]

SHOWN_CLASSES = 8  # class names listed before '...'


def _count(params: int) -> str:
    """12345678 -> '12.35 M'."""
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if params >= scale:
            return f"{params / scale:.2f} {unit}"
    return str(params)


def _params(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def _describe(module: nn.Module) -> str:
    """A module's class, with its depth when it has one (``ResNetV1c-50``)."""
    depth = getattr(module, "depth", None)
    return f"{type(module).__name__}-{depth}" if isinstance(depth, int) else type(module).__name__


def _heads(module: nn.Module | None) -> list[nn.Module]:
    if module is None:
        return []
    return list(module) if isinstance(module, nn.ModuleList) else [module]


@dataclass
class ModelSummary:
    """The facts :func:`summarize` collects; ``str()`` gives aligned lines, :meth:`html` a table.

    ``parts`` holds (role, description, parameter count) per component: backbone, neck, decode head(s)
    (a cascade's stages joined by '->'), auxiliary head(s).
    """

    segmentor: str
    config: str | None
    parts: list[tuple[str, str, int]]
    num_classes: int
    classes: list[str] | None
    output: str
    inference: str
    parameters: int
    trainable: int
    rows: list[tuple[str, str]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        rows = [(role, f"{what}  ({_count(count)} parameters)") for role, what, count in self.parts]
        names = self.classes or []
        listed = ", ".join(names[:SHOWN_CLASSES]) + (", ..." if len(names) > SHOWN_CLASSES else "")
        rows.append(("classes", f"{self.num_classes}" + (f": {listed}" if listed else "")))
        rows += [("output", self.output), ("inference", self.inference),
                 ("parameters", f"{_count(self.parameters)} ({_count(self.trainable)} trainable)")]
        self.rows = rows

    def __str__(self) -> str:
        title = self.segmentor + (f" ({self.config})" if self.config else "")
        width = max(len(role) for role, _ in self.rows)
        return "\n".join([title] + [f"  {role:<{width}}  {value}" for role, value in self.rows])

    def html(self, module_tree: str | None = None) -> str:
        """The summary as an HTML table; with ``module_tree`` (``repr(model)``), that text folded below."""
        title = html.escape(self.segmentor + (f" ({self.config})" if self.config else ""))
        cells = "".join(f"<tr><th style='text-align:left'>{html.escape(role)}</th>"
                        f"<td style='text-align:left'>{html.escape(value)}</td></tr>" for role, value in self.rows)
        tree = ("" if module_tree is None else
                f"<details><summary>module tree</summary><pre>{html.escape(module_tree)}</pre></details>")
        return f"<div><b>{title}</b><table>{cells}</table>{tree}</div>"

    def _repr_html_(self) -> str:
        return self.html()


def summarize(model: nn.Module) -> ModelSummary:
    """The summary of an ``EncoderDecoder`` / ``CascadeEncoderDecoder`` (``model.summary()``)."""
    parts = [("backbone", _describe(model.backbone), _params(model.backbone))]
    if getattr(model, "neck", None) is not None:
        parts.append(("neck", _describe(model.neck), _params(model.neck)))
    decode = _heads(model.decode_head)
    parts.append(("decode_head", " -> ".join(_describe(h) for h in decode), _params(model.decode_head)))
    auxiliary = _heads(getattr(model, "auxiliary_head", None))
    if auxiliary:
        parts.append(("auxiliary_head", ", ".join(_describe(h) for h in auxiliary) + " (training only)",
                      _params(model.auxiliary_head)))
    head = model.output_head
    if head.out_channels == 1:
        output = f"1 channel: sigmoid > threshold {head.threshold} gives labels 0/1"
    else:
        output = f"{head.out_channels} channels: argmax"
    test_cfg = dict(getattr(model, "test_cfg", None) or {})
    inference = test_cfg.get("mode", "whole")
    if inference == "slide" and "crop_size" in test_cfg and "stride" in test_cfg:
        crop, stride = test_cfg["crop_size"], test_cfg["stride"]
        inference += f", crop {crop[0]}x{crop[1]}, stride {stride[0]}x{stride[1]}"
    precision = getattr(model, "precision", "fp32")
    if precision != "fp32":
        inference += f", {precision}"
    classes = (getattr(model, "dataset_meta", None) or {}).get("classes")
    filename = getattr(getattr(model, "cfg", None), "filename", None)
    parameters = list(model.parameters())
    return ModelSummary(
        segmentor=type(model).__name__,
        config=Path(filename).stem if filename else None,
        parts=parts,
        num_classes=int(model.num_classes),
        classes=[str(c) for c in classes] if classes else None,
        output=output,
        inference=inference,
        parameters=sum(p.numel() for p in parameters),
        trainable=sum(p.numel() for p in parameters if p.requires_grad),
    )


def summary_html(model: nn.Module) -> str:
    """Jupyter's view of a segmentor: the summary table, the module tree folded under it."""
    return summarize(model).html(module_tree=repr(model))
