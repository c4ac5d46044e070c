# U-Net S5-D16 + PSPNet on DRIVE: 64x64 crops, 40k iterations, slide inference (64 crops,
# stride 42).

_base_ = [
    '../_base_/models/pspnet_unet_s5-d16.py',
    '../_base_/datasets/drive.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/schedule_40k.py',
]

crop_size = (64, 64)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    test_cfg=dict(crop_size=(64, 64), stride=(42, 42)),
)
