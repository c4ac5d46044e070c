"""What the backbones share: argument checks, the default weight init, frozen stages and ``norm_eval``."""

from __future__ import annotations

from torch import nn


def check_pretrained(pretrained: str | None, init_cfg: dict | list[dict] | None) -> None:
    """Raise unless at most one of ``pretrained`` / ``init_cfg`` is set and ``pretrained`` is a path or None."""
    if pretrained is not None and init_cfg is not None:
        raise ValueError("set either pretrained or init_cfg, not both")
    if pretrained is not None and not isinstance(pretrained, str):
        raise TypeError(f"pretrained must be a str or None, got {type(pretrained).__name__}")


def init_conv_norm(module: nn.Module, conv_types: tuple[type[nn.Module], ...] = (nn.Conv2d,)) -> None:
    """Kaiming-normal weights (fan_out, ReLU) and zero biases for every ``conv_types`` submodule; BatchNorm and
    GroupNorm at weight 1, bias 0 (MMSegmentation's default backbone init)."""
    for m in module.modules():
        if isinstance(m, conv_types):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class FreezableBackbone(nn.Module):
    """A backbone whose frozen stages stay in eval mode without gradients, and whose BatchNorms all stay in
    eval mode during training when ``norm_eval`` is set.

    Subclasses set ``self.norm_eval`` and override ``_frozen_modules`` (by default nothing is frozen).
    """

    norm_eval: bool = False

    def _frozen_modules(self) -> list[nn.Module]:
        """The modules put in eval mode with ``requires_grad`` off."""
        return []

    def _freeze_stages(self) -> None:
        for m in self._frozen_modules():
            m.eval()
            for param in m.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> FreezableBackbone:
        """Set train/eval mode, keeping frozen stages (and, with ``norm_eval``, every BatchNorm) in eval."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self
