# The _base_'s Cityscapes model, tested on Dark Zurich's night validation images at 1920x1080.
_base_ = './pspnet_r101b-d8_4xb2-80k_cityscapes-512x1024.py'

test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(1920, 1080), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
test_dataloader = dict(
    dataset=dict(
        type='DarkZurichDataset',
        data_root='data/dark_zurich/',
        data_prefix=dict(img_path='rgb_anon/val/night/GOPR0356', seg_map_path='gt/val/night/GOPR0356'),
        pipeline=test_pipeline,
    ),
)
