# Meant as the 4xb4 model with OHEM pixel sampling (thresh 0.7, at least 10k pixels) in every head. As in
# MMSegmentation 1.2.2, the heads below are assigned to `models`, not `model`, so they change nothing: the
# model built (and the published checkpoint) is the plain one. Kept as is so the config resolves to the
# same dict; set model.decode_head.sampler (and each auxiliary head's) to really train with OHEM.
_base_ = [
    '../_base_/models/bisenetv2.py',
    '../_base_/datasets/cityscapes_1024x1024.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/schedule_160k.py',
]

crop_size = (1024, 1024)
data_preprocessor = dict(size=crop_size)
norm_cfg = dict(type='SyncBN', requires_grad=True)
models = dict(
    data_preprocessor=data_preprocessor,
    decode_head=dict(sampler=dict(type='OHEMPixelSampler', thresh=0.7, min_kept=10000)),
    auxiliary_head=[
        dict(
            type='FCNHead',
            in_channels=in_channels,
            channels=channels,
            num_convs=2,
            num_classes=19,
            in_index=index,
            norm_cfg=norm_cfg,
            concat_input=False,
            align_corners=False,
            sampler=dict(type='OHEMPixelSampler', thresh=0.7, min_kept=10000),
            loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        )
        for index, in_channels, channels in ((1, 16, 16), (2, 32, 64), (3, 64, 256), (4, 128, 1024))
    ],
)

param_scheduler = [
    dict(type='LinearLR', by_epoch=False, start_factor=0.1, begin=0, end=1000),
    dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=1000, end=160000, by_epoch=False),
]
optimizer = dict(type='SGD', lr=0.05, momentum=0.9, weight_decay=0.0005)
optim_wrapper = dict(type='OptimWrapper', optimizer=optimizer)

train_dataloader = dict(batch_size=4, num_workers=4)
val_dataloader = dict(batch_size=1, num_workers=4)
test_dataloader = val_dataloader
