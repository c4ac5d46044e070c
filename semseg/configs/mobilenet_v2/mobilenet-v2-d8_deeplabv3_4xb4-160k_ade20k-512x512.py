# deeplabv3 on MobileNetV2 (ImageNet-pretrained, widen factor 1) instead of ResNet-101: the last four
# layers dilated (output stride 8); the heads read layer7 (320 channels), the auxiliary FCN layer5 (96).
_base_ = '../deeplabv3/deeplabv3_r101-d8_4xb4-160k_ade20k-512x512.py'

model = dict(
    pretrained='mmcls://mobilenet_v2',
    backbone=dict(
        _delete_=True,
        type='MobileNetV2',
        widen_factor=1.,
        strides=(1, 2, 2, 1, 1, 1, 1),
        dilations=(1, 1, 1, 2, 2, 4, 4),
        out_indices=(1, 2, 4, 6),
        norm_cfg=dict(type='SyncBN', requires_grad=True),
    ),
    decode_head=dict(in_channels=320),
    auxiliary_head=dict(in_channels=96),
)
