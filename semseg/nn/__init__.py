"""Building blocks shared by backbones, necks and heads."""

from semseg.nn.activation import build_activation
from semseg.nn.context_block import ContextBlock
from semseg.nn.conv_module import ConvModule, build_conv
from semseg.nn.criss_cross import CrissCrossAttention
from semseg.nn.depthwise_separable import DepthwiseSeparableConvModule
from semseg.nn.inverted_residual import InvertedResidual, InvertedResidualV3, pad_same
from semseg.nn.make_divisible import make_divisible
from semseg.nn.non_local import DisentangledNonLocal2d, NonLocal2d
from semseg.nn.norm import add_norms, build_norm, norm_name
from semseg.nn.psa_mask import PSAMask, psa_mask
from semseg.nn.pyramid_pooling import PyramidPooling
from semseg.nn.resize import resize
from semseg.nn.scale import Scale
from semseg.nn.se_layer import SELayer
from semseg.nn.self_attention import SelfAttentionBlock, build_project

__all__ = [
    "ContextBlock",
    "ConvModule",
    "CrissCrossAttention",
    "DepthwiseSeparableConvModule",
    "DisentangledNonLocal2d",
    "InvertedResidual",
    "InvertedResidualV3",
    "NonLocal2d",
    "PSAMask",
    "PyramidPooling",
    "SELayer",
    "Scale",
    "SelfAttentionBlock",
    "add_norms",
    "build_activation",
    "build_conv",
    "build_norm",
    "build_project",
    "make_divisible",
    "norm_name",
    "pad_same",
    "psa_mask",
    "resize",
]
