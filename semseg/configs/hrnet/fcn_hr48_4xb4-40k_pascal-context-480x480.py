_base_ = './fcn_hr18_4xb4-40k_pascal-context-480x480.py'

# HRNetV2-W48: branch widths 48, 96, 192, 384.
model = dict(
    pretrained='open-mmlab://msra/hrnetv2_w48',
    backbone=dict(
        extra=dict(
            stage2=dict(num_channels=(48, 96)),
            stage3=dict(num_channels=(48, 96, 192)),
            stage4=dict(num_channels=(48, 96, 192, 384)),
        ),
    ),
    decode_head=dict(in_channels=[48, 96, 192, 384], channels=48 + 96 + 192 + 384),
)
