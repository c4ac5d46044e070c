"""Building blocks shared by backbones, necks and heads."""

from semseg.nn.activation import build_activation
from semseg.nn.conv_module import ConvModule, build_conv
from semseg.nn.depthwise_separable import DepthwiseSeparableConvModule
from semseg.nn.norm import add_norms, build_norm, norm_name
from semseg.nn.pyramid_pooling import PyramidPooling
from semseg.nn.resize import resize

__all__ = [
    "ConvModule",
    "add_norms",
    "DepthwiseSeparableConvModule",
    "PyramidPooling",
    "build_activation",
    "build_conv",
    "build_norm",
    "norm_name",
    "resize",
]
