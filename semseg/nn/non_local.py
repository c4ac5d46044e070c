"""Non-local blocks: every position attends to every other (NLNet, arXiv:1711.07971) and the disentangled
variant of DNLNet (arXiv:2006.06668), with mmcv ``NonLocal2d``'s parameter names.

Notation in shape comments: L = H*W query positions, M key positions (L, or fewer with ``sub_sample``),
C input channels, C' = ``inter_channels``, D the embedding width (C', or C in the ``gaussian`` mode).
"""

from __future__ import annotations

import torch
from torch import nn

from semseg.nn.conv_module import ConvModule

MODES = ("embedded_gaussian", "gaussian", "dot_product", "concatenation")


class NonLocal2d(nn.Module):
    """``x + conv_out(attention(theta(x), phi(x)) @ g(x))`` over all positions of a (N, C, H, W) map.

    Args:
        in_channels: C, channels in and out.
        reduction: ``inter_channels = max(C // reduction, 1)``, the width of ``g``/``theta``/``phi``.
        use_scale: divide the ``embedded_gaussian`` logits by ``sqrt(inter_channels)``.
        conv_cfg: conv type of the 1x1 projections (``None`` or ``Conv2d``).
        norm_cfg: norm after ``conv_out`` (the only normalized projection).
        mode: pairwise function between query i and key j:
            ``embedded_gaussian``: softmax_j(theta_i . phi_j [/ sqrt(C')]);
            ``gaussian``: softmax_j(x_i . x_j) on the raw input (no ``theta``/``phi`` convs);
            ``dot_product``: theta_i . phi_j / M;
            ``concatenation``: relu(w . [theta_i, phi_j]) / M, w the 1x1 conv ``concat_project``.
        sub_sample: 2x2 max pooling after ``g`` and ``phi`` (keys and values only); the projections then
            sit at index 0 of a Sequential (``g.0.conv.weight``), as in mmcv.
        std: std of the normal initialisation of ``g``/``theta``/``phi``.
        zeros_init: start ``conv_out``'s last layer (the norm if any, else the conv) at zero, so that
            the block is the identity at first; otherwise it is drawn from N(0, std).
    """

    def __init__(
        self,
        in_channels: int,
        *,
        reduction: int = 2,
        use_scale: bool = True,
        conv_cfg: dict | None = None,
        norm_cfg: dict | None = None,
        mode: str = "embedded_gaussian",
        sub_sample: bool = False,
        std: float = 0.01,
        zeros_init: bool = True,
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not isinstance(reduction, int) or reduction < 1:
            raise ValueError(f"reduction must be a positive int, got {reduction!r}")
        self.in_channels = in_channels
        self.reduction = reduction
        self.use_scale = use_scale
        self.mode = mode
        self.sub_sample = sub_sample
        self.inter_channels = max(in_channels // reduction, 1)

        def projection() -> ConvModule:
            conv = ConvModule(in_channels, self.inter_channels, 1, conv_cfg=conv_cfg, act_cfg=None)
            nn.init.normal_(conv.conv.weight, std=std)
            nn.init.zeros_(conv.conv.bias)
            return conv

        # 2x2 max pooling of keys and values; mmcv wraps the projection and the pooling in a Sequential.
        pool = nn.MaxPool2d(kernel_size=2) if sub_sample else None
        self.g = nn.Sequential(projection(), pool) if sub_sample else projection()
        if mode != "gaussian":
            self.theta = projection()
            self.phi = nn.Sequential(projection(), pool) if sub_sample else projection()
        elif sub_sample:
            self.phi = pool  # the gaussian mode's keys are the pooled input itself
        if mode == "concatenation":
            self.concat_project = ConvModule(2 * self.inter_channels, 1, 1, bias=False)
        self.conv_out = ConvModule(self.inter_channels, in_channels, 1, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                                   act_cfg=None)
        last = self.conv_out.norm if norm_cfg is not None else self.conv_out.conv
        if zeros_init:
            nn.init.zeros_(last.weight)
        else:
            nn.init.normal_(last.weight, std=std)
        if last.bias is not None:
            nn.init.zeros_(last.bias)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries (N, L, D) and keys (N, D, M) of x (N, C, H, W)."""
        if self.mode == "gaussian":
            keys = self.phi(x) if self.sub_sample else x
            return x.flatten(2).transpose(1, 2), keys.flatten(2)
        return self.theta(x).flatten(2).transpose(1, 2), self.phi(x).flatten(2)

    def scaled_logits(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """``query @ key`` (N, L, M), divided by ``sqrt(D)`` when ``use_scale``."""
        logits = query @ key
        return logits / query.shape[-1] ** 0.5 if self.use_scale else logits

    def pairwise(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """Attention weights (N, L, M) of the queries (N, L, D) over the keys (N, D, M)."""
        num_keys = key.shape[-1]
        if self.mode == "embedded_gaussian":
            return self.scaled_logits(query, key).softmax(dim=-1)
        if self.mode == "gaussian":
            return (query @ key).softmax(dim=-1)
        if self.mode == "dot_product":
            return query @ key / num_keys
        # concatenation: the bias-free 1x1 conv over the pair [theta_i, phi_j] is w_q . theta_i + w_k . phi_j,
        # so the (N, 2D, L, M) pair tensor is never built.
        weight = self.concat_project.conv.weight.flatten()  # (2D,)
        depth = query.shape[-1]
        from_query = query @ weight[:depth]  # (N, L)
        from_key = weight[depth:] @ key  # (N, M)
        return torch.relu(from_query[:, :, None] + from_key[:, None, :]) / num_keys

    def fuse(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Residual output: x (N, C, H, W) + conv_out(context (N, L, C') as a (N, C', H, W) map)."""
        return x + self.conv_out(context.transpose(1, 2).reshape(x.shape[0], -1, *x.shape[2:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, H, W)."""
        value = self.g(x).flatten(2).transpose(1, 2)  # (N, M, C')
        query, key = self.embed(x)
        return self.fuse(x, self.pairwise(query, key) @ value)


class DisentangledNonLocal2d(NonLocal2d):
    """DNLNet's block: a whitened pairwise term plus a unary term, as in MMSegmentation's ``dnl_head.py``.

    Attention of query i on key j = pairwise(q_i - mean(q), k_j - mean(k)) + softmax_j(conv_mask(x)_j):
    the means are over positions; the unary term is the same map for every query. ``temperature``
    divides the ``embedded_gaussian`` logits (after the ``use_scale`` division); the other modes ignore it.

    Args:
        in_channels: C.
        temperature: softmax temperature of the ``embedded_gaussian`` mode.
        **kwargs: :class:`NonLocal2d` arguments; ``sub_sample`` is not supported (the unary term needs a key
            per query position).
    """

    def __init__(self, in_channels: int, *, temperature: float = 0.05, **kwargs):
        if kwargs.get("sub_sample"):
            raise ValueError("DisentangledNonLocal2d does not support sub_sample: its unary term weights the "
                             "values at every input position")
        super().__init__(in_channels, **kwargs)
        self.temperature = temperature
        self.conv_mask = nn.Conv2d(in_channels, 1, kernel_size=1)

    def pairwise(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        if self.mode == "embedded_gaussian":
            return (self.scaled_logits(query, key) / self.temperature).softmax(dim=-1)
        return super().pairwise(query, key)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, H, W)."""
        value = self.g(x).flatten(2).transpose(1, 2)  # (N, L, C')
        query, key = self.embed(x)
        query = query - query.mean(dim=1, keepdim=True)
        key = key - key.mean(dim=2, keepdim=True)
        if self.mode == "gaussian":
            # MMSegmentation whitens the gaussian mode's queries in place, and they are a view of x: the
            # unary mask and the residual then see the whitened input too. Kept for identical outputs.
            x = query.transpose(1, 2).reshape(x.shape)
        unary = self.conv_mask(x).flatten(2).softmax(dim=-1)  # (N, 1, L), the same weights for every query
        return self.fuse(x, self.pairwise(query, key) @ value + unary @ value)
