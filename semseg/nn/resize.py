"""``resize``: F.interpolate with MMSegmentation's align_corners warning."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F


def resize(
    input: torch.Tensor,
    size: tuple[int, int] | torch.Size | None = None,
    scale_factor: float | None = None,
    mode: str = "nearest",
    align_corners: bool | None = None,
    warning: bool = True,
) -> torch.Tensor:
    """Resize an (N, C, H, W) tensor.

    With ``align_corners=True``, upsampling is exact only when ``out - 1`` is a multiple of ``in - 1``
    (e.g. 33 -> 65); when that fails on both sides, a warning says the grid is misaligned, as in
    MMSegmentation, since such models were trained with odd-sized inputs (769 x 769).
    """
    if (warning and size is not None and align_corners and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling()):
        in_h, in_w = input.shape[2:]
        out_h, out_w = (int(s) for s in size)
        upsampling = out_h > in_h or out_w > in_w
        all_above_one = min(in_h, in_w, out_h, out_w) > 1
        misaligned = (out_h - 1) % (in_h - 1) and (out_w - 1) % (in_w - 1) if all_above_one else False
        if upsampling and misaligned:
            warnings.warn(
                f"align_corners=True upsamples {in_h}x{in_w} to {out_h}x{out_w}; the output is aligned "
                f"only when out - 1 is a multiple of in - 1 (e.g. {in_h}x{in_w} -> "
                f"{2 * in_h - 1}x{2 * in_w - 1})",
                stacklevel=2,
            )
    if size is not None:
        # a traced size (a tensor under torch.jit.trace, a SymInt under torch.export) stays symbolic, so an
        # exported graph follows its input's size
        size = tuple(s if isinstance(s, (torch.Tensor, torch.SymInt)) else int(s) for s in size)
    if mode in ("nearest", "area", "nearest-exact"):
        align_corners = None
    return F.interpolate(input, size, scale_factor, mode, align_corners)
