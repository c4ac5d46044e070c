_base_ = './deeplabv3plus_r50-d8_4xb4-80k_potsdam-512x512.py'

model = dict(
    pretrained='open-mmlab://resnet18_v1c',
    backbone=dict(depth=18),
    decode_head=dict(in_channels=512, channels=128, c1_in_channels=64, c1_channels=12),
    auxiliary_head=dict(in_channels=256, channels=64),
)
