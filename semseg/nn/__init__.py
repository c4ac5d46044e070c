"""Building blocks shared by backbones, necks and heads."""

from semseg.nn.activation import build_activation
from semseg.nn.context_block import ContextBlock
from semseg.nn.conv_module import ConvModule, build_conv
from semseg.nn.criss_cross import CrissCrossAttention
from semseg.nn.depthwise_separable import DepthwiseSeparableConvModule
from semseg.nn.encoding import Encoding
from semseg.nn.inverted_residual import InvertedResidual, InvertedResidualV3, pad_same
from semseg.nn.layer_norm_2d import LayerNorm2d, build_layer_norm_2d
from semseg.nn.make_divisible import make_divisible
from semseg.nn.non_local import DisentangledNonLocal2d, NonLocal2d
from semseg.nn.norm import add_norms, build_norm, norm_name
from semseg.nn.point_sample import point_sample
from semseg.nn.psa_mask import PSAMask, psa_mask
from semseg.nn.pyramid_pooling import PyramidPooling
from semseg.nn.resize import resize
from semseg.nn.scale import Scale
from semseg.nn.se_layer import SELayer
from semseg.nn.self_attention import SelfAttentionBlock, build_project
from semseg.nn.transformer import (
    FFN,
    DropPath,
    MultiheadAttention,
    PatchEmbed,
    ScaledDotProductAttention,
    adaptive_pad,
    drop_path,
)
from semseg.nn.upsample import Upsample

__all__ = [
    "ContextBlock",
    "ConvModule",
    "CrissCrossAttention",
    "DepthwiseSeparableConvModule",
    "DisentangledNonLocal2d",
    "DropPath",
    "Encoding",
    "FFN",
    "InvertedResidual",
    "InvertedResidualV3",
    "LayerNorm2d",
    "MultiheadAttention",
    "NonLocal2d",
    "PSAMask",
    "PatchEmbed",
    "PyramidPooling",
    "SELayer",
    "Scale",
    "ScaledDotProductAttention",
    "SelfAttentionBlock",
    "Upsample",
    "adaptive_pad",
    "add_norms",
    "build_activation",
    "build_conv",
    "build_layer_norm_2d",
    "build_norm",
    "build_project",
    "drop_path",
    "make_divisible",
    "norm_name",
    "pad_same",
    "point_sample",
    "psa_mask",
    "resize",
]
