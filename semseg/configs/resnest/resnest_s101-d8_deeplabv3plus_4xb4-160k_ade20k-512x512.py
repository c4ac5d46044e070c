# ResNeSt-101 (split attention: radix 2, gate reduction 4, strided blocks average-pooled; 128-channel
# deep stem) in place of the base config's ResNet-101 V1c.
_base_ = '../deeplabv3plus/deeplabv3plus_r101-d8_4xb4-160k_ade20k-512x512.py'

model = dict(
    pretrained='open-mmlab://resnest101',
    backbone=dict(type='ResNeSt', stem_channels=128, radix=2, reduction_factor=4, avg_down_stride=True),
)
