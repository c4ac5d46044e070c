"""PSAHead: point-wise spatial attention (PSANet, Zhao et al., ECCV 2018).

Each position predicts a mask over its neighbourhood that says how much it gathers from ('collect') or
sends to ('distribute') every other position; ``psa_mask`` turns the masks into an (H*W, H*W) attention
map, which mixes the reduced features. 'bi-direction' runs both branches and concatenates them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from semseg.models.heads.decode_head import BaseDecodeHead
from semseg.nn import resize
from semseg.nn.psa_mask import PSAMask

PSA_HEAD_TYPES = ("collect", "distribute", "bi-direction")


class PSAHead(BaseDecodeHead):
    """Reduce, (shrink,) attend through PSA masks, project back, fuse with the input.

    Args:
        mask_size: (hm, wm) of the predicted masks; usually the (shrunk) feature size, so that every
            position reaches the whole map.
        psa_type: 'collect', 'distribute' or 'bi-direction' (both, keys ``reduce_p`` / ``attention_p``).
        compact: the attention conv predicts the (H*W, H*W) map directly (``hm * wm`` must equal the
            shrunk H * W) instead of masks spread by ``psa_mask``.
        shrink_factor: the reduced features are downsampled by this factor before attention.
        normalization_factor: the attended features are divided by it; ``None`` means ``hm * wm``.
        psa_softmax: softmax over the sources of each attention map.
        **kwargs: :class:`BaseDecodeHead` arguments.

    Input: the backbone's list of features; the selected one is (N, in_channels, h, w).
    Output of ``forward``: (N, out_channels, h, w).
    """

    def __init__(
        self,
        mask_size: tuple[int, int],
        psa_type: str = "bi-direction",
        compact: bool = False,
        shrink_factor: int = 2,
        normalization_factor: float | None = 1.0,
        psa_softmax: bool = True,
        **kwargs,
    ):
        if psa_type not in PSA_HEAD_TYPES:
            raise ValueError(f"psa_type must be one of {PSA_HEAD_TYPES}, got {psa_type!r}")
        if not isinstance(shrink_factor, int) or shrink_factor < 1:
            raise ValueError(f"shrink_factor must be a positive int, got {shrink_factor!r}")
        super().__init__(**kwargs)
        h_mask, w_mask = mask_size
        self.mask_size = (h_mask, w_mask)
        self.psa_type = psa_type
        self.compact = compact
        self.shrink_factor = shrink_factor
        self.normalization_factor = h_mask * w_mask if normalization_factor is None else normalization_factor
        self.psa_softmax = psa_softmax

        def attention() -> nn.Sequential:
            return nn.Sequential(self.conv_block(self.channels, self.channels, 1),
                                 nn.Conv2d(self.channels, h_mask * w_mask, 1, bias=False))

        bidirectional = psa_type == "bi-direction"
        self.reduce = self.conv_block(self.in_channels, self.channels, 1)
        self.attention = attention()
        if bidirectional:
            self.reduce_p = self.conv_block(self.in_channels, self.channels, 1)
            self.attention_p = attention()
            self.psamask_collect = PSAMask("collect", self.mask_size)
            self.psamask_distribute = PSAMask("distribute", self.mask_size)
        else:
            self.psamask = PSAMask(psa_type, self.mask_size)
        # padding=1 on a 1x1 conv grows the map by 2; the resize below undoes it (as in MMSegmentation).
        self.proj = self.conv_block(self.channels * (2 if bidirectional else 1), self.in_channels, 1, padding=1)
        self.bottleneck = self.conv_block(self.in_channels * 2, self.channels, 3, padding=1)

    def _branches(self) -> list[tuple[nn.Module, nn.Module, nn.Module, bool]]:
        """(reduce, attention, mask, transpose the compact map) per branch.

        Which compact maps are transposed follows MMSegmentation (collect alone, or the distribute
        branch of bi-direction), since its trained compact weights expect it.
        """
        if self.psa_type == "bi-direction":
            return [(self.reduce, self.attention, self.psamask_collect, False),
                    (self.reduce_p, self.attention_p, self.psamask_distribute, True)]
        return [(self.reduce, self.attention, self.psamask, self.psa_type == "collect")]

    def _shrunk_size(self, h: int, w: int) -> tuple[int, int, bool]:
        """Attention map size and the align_corners used to reach it (and to come back from it)."""
        f = self.shrink_factor
        if f == 1:
            return h, w, self.align_corners
        if h % f and w % f:
            return (h - 1) // f + 1, (w - 1) // f + 1, True
        return h // f, w // f, False

    def _attend(self, feat: torch.Tensor, attention: nn.Module, mask: nn.Module, transpose: bool) -> torch.Tensor:
        """Features (N, C, h, w) mixed by their attention map: out[:, :, t] = sum_s feat[:, :, s] * A[s, t]."""
        n, c, h, w = feat.shape
        y = attention(feat)  # (N, hm * wm, h, w), or (N, h * w, h, w) when compact
        if self.compact:
            if y.shape[1] != h * w:
                raise ValueError(f"compact=True needs mask_size h_mask * w_mask == h * w of the attention map, "
                                 f"got mask_size {self.mask_size} for a {h}x{w} map")
            y = y.reshape(n, h * w, h * w)
            if transpose:
                y = y.transpose(1, 2)
        else:
            y = mask(y).reshape(n, h * w, h * w)
        if self.psa_softmax:
            y = F.softmax(y, dim=1)
        return torch.bmm(feat.reshape(n, c, h * w), y).view(n, c, h, w) / self.normalization_factor

    def forward_features(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Selected input (N, in_channels, h, w) -> (N, channels, h, w)."""
        x = self.transform_inputs(inputs)
        h, w, align_corners = self._shrunk_size(*x.shape[2:])
        outs = []
        for reduce, attention, mask, transpose in self._branches():
            feat = reduce(x)
            if self.shrink_factor != 1:
                feat = resize(feat, size=(h, w), mode="bilinear", align_corners=align_corners)
            outs.append(self._attend(feat, attention, mask, transpose))
        out = self.proj(torch.cat(outs, dim=1))
        out = resize(out, size=x.shape[2:], mode="bilinear", align_corners=align_corners)
        return self.bottleneck(torch.cat([x, out], dim=1))
