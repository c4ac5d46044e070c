# The _base_'s Cityscapes model, tested on the Nighttime Driving test images at 1920x1080.
_base_ = './pspnet_r50-d8_4xb2-80k_cityscapes-512x1024.py'

test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(1920, 1080), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
test_dataloader = dict(
    dataset=dict(
        type='NightDrivingDataset',
        data_root='data/NighttimeDrivingTest/',
        data_prefix=dict(
            img_path='leftImg8bit/test/night',
            seg_map_path='gtCoarse_daytime_trainvaltest/test/night',
        ),
        pipeline=test_pipeline,
    ),
)
