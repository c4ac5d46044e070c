"""Backbones: plain nn.Modules returning a list of NCHW features (see semseg.build.BACKBONES)."""
