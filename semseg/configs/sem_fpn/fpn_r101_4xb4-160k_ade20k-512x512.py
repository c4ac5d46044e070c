_base_ = './fpn_r50_4xb4-160k_ade20k-512x512.py'

# MMSegmentation 1.2.2's file assigns `model` twice, first with the ResNet-101 settings
# (pretrained='open-mmlab://resnet101_v1c', backbone=dict(depth=101)), then with only the data preprocessor:
# the second replaces the first, so this config, as its own, resolves to a ResNet-50.
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(data_preprocessor=data_preprocessor)
