"""PSANet's point-wise spatial attention mask: per-position masks laid out as dense attention maps.

PSANet (Zhao et al., ECCV 2018, sec. 3.3) predicts at each position (h, w) of an H x W map a mask of
hm x wm values centred on (h, w): mask cell (i, j) (channel ``i * wm + j``) refers to the map position
(p, q) = (h + i - (hm - 1) // 2, w + j - (wm - 1) // 2); cells outside the map are dropped. ``psa_mask``
spreads them into an (N, H*W, H, W) map:

    collect:    out[n, p * W + q, h, w] = in[n, i * wm + j, h, w]   (position (h, w) gathers from (p, q))
    distribute: out[n, h * W + w, p, q] = in[n, i * wm + j, h, w]   (position (h, w) sends to (p, q))

The mask cell depends on the row pair (h, p) and the column pair (w, q) separately, so the move is two
gathers with small (H, H) and (W, W) index tables; autograd through the gathers gives the backward pass.
mmcv implements the same operator as a compiled op (``mmcv.ops.PSAMask``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PSA_TYPES = ("collect", "distribute")


def _pair(mask_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(mask_size, int):
        return mask_size, mask_size
    h_mask, w_mask = mask_size
    return int(h_mask), int(w_mask)


def _cell_table(size: int, mask: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Index tables for one axis: ``centre`` (size, 1) and ``cell`` (size, size).

    ``cell[c, t]`` is the mask cell at centre ``c`` that lands on map position ``t``, or ``mask`` (a zero
    slot appended to the mask axis) where the offset falls outside the mask.
    """
    centre = torch.arange(size, device=device)[:, None]
    cell = torch.arange(size, device=device)[None, :] - centre + (mask - 1) // 2
    cell = torch.where((cell >= 0) & (cell < mask), cell, mask)
    return centre, cell


def psa_mask(x: torch.Tensor, psa_type: str, mask_size: int | tuple[int, int]) -> torch.Tensor:
    """Spread per-position masks into dense attention maps (see the module docstring).

    Args:
        x: (N, hm * wm, H, W) masks, channel ``i * wm + j`` is mask cell (i, j).
        psa_type: ``'collect'`` or ``'distribute'``.
        mask_size: (hm, wm), or one int for a square mask; may exceed the map.

    Returns:
        (N, H * W, H, W); zero where a mask does not reach.
    """
    if psa_type not in PSA_TYPES:
        raise ValueError(f"psa_type must be one of {PSA_TYPES}, got {psa_type!r}")
    h_mask, w_mask = _pair(mask_size)
    if x.dim() != 4 or x.shape[1] != h_mask * w_mask:
        raise ValueError(f"psa_mask expects (N, {h_mask}*{w_mask}, H, W) for mask_size {(h_mask, w_mask)}, "
                         f"got {tuple(x.shape)}")
    n, _, h, w = x.shape
    masks = x.view(n, h_mask, w_mask, h, w).permute(0, 3, 1, 4, 2)  # (N, h, i, w, j)
    masks = F.pad(masks, (0, 1, 0, 0, 0, 1))  # a zero slot at i = hm and at j = wm
    rows, row_cells = _cell_table(h, h_mask, x.device)
    cols, col_cells = _cell_table(w, w_mask, x.device)
    spread = masks[:, rows, row_cells]  # (N, h, p, w, j + 1)
    spread = spread[:, :, :, cols, col_cells]  # (N, h, p, w, q)
    order = (0, 2, 4, 1, 3) if psa_type == "collect" else (0, 1, 3, 2, 4)
    return spread.permute(*order).reshape(n, h * w, h, w)


class PSAMask(nn.Module):
    """:func:`psa_mask` as a module (no parameters): (N, hm * wm, H, W) -> (N, H * W, H, W)."""

    def __init__(self, psa_type: str, mask_size: int | tuple[int, int]):
        super().__init__()
        if psa_type not in PSA_TYPES:
            raise ValueError(f"psa_type must be one of {PSA_TYPES}, got {psa_type!r}")
        self.psa_type = psa_type
        self.mask_size = _pair(mask_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return psa_mask(x, self.psa_type, self.mask_size)

    def extra_repr(self) -> str:
        return f"psa_type={self.psa_type!r}, mask_size={self.mask_size}"
