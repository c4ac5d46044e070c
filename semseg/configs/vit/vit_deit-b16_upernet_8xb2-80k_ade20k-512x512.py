# DeiT-B/16, stochastic depth 0.1, UPerNet straight on the four stride-16 maps (no neck), 80k iterations.
_base_ = './vit_vit-b16_mln_upernet_8xb2-80k_ade20k-512x512.py'

model = dict(
    pretrained='pretrain/deit_base_patch16_224-b5f2ef4d.pth',
    backbone=dict(drop_path_rate=0.1),
    neck=None,
)
