_base_ = './ocrnet_hr18_4xb4-80k_ade20k-512x512.py'

# HRNetV2-W18-Small: half the residual blocks, fewer modules in stages 3 and 4.
model = dict(
    pretrained='open-mmlab://msra/hrnetv2_w18_small',
    backbone=dict(
        extra=dict(
            stage1=dict(num_blocks=(2, )),
            stage2=dict(num_blocks=(2, 2)),
            stage3=dict(num_modules=3, num_blocks=(2, 2, 2)),
            stage4=dict(num_modules=2, num_blocks=(2, 2, 2, 2)),
        ),
    ),
)
