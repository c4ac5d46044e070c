# U-Net S5-D16 + DeepLabV3 on CHASE_DB1: 128x128 crops, 40k iterations, slide inference (128 crops,
# stride 85).

_base_ = [
    '../_base_/models/deeplabv3_unet_s5-d16.py',
    '../_base_/datasets/chase_db1.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/schedule_40k.py',
]

crop_size = (128, 128)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    test_cfg=dict(crop_size=(128, 128), stride=(85, 85)),
)
