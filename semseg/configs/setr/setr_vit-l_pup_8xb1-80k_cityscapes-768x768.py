# SETR-PUP on Cityscapes, 768x768 crops: no dropout, ImageNet ViT-L/16 weights; auxiliary heads with two
# (3x3 conv, x4) blocks; slide inference (768x768 windows, stride 512); SGD (the schedule's lr 0.01) with x10
# on the heads; 8 GPUs x 1 image.
_base_ = [
    '../_base_/models/setr_pup.py',
    '../_base_/datasets/cityscapes_768x768.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/schedule_80k.py',
]

crop_size = (768, 768)
data_preprocessor = dict(size=crop_size)
norm_cfg = dict(type='SyncBN', requires_grad=True)

model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        drop_rate=0.,
        init_cfg=dict(type='Pretrained', checkpoint='pretrain/vit_large_p16.pth'),
    ),
    auxiliary_head=[
        dict(
            type='SETRUPHead',
            in_channels=1024,
            channels=256,
            in_index=index,
            num_classes=19,
            dropout_ratio=0,
            norm_cfg=norm_cfg,
            num_convs=2,
            up_scale=4,
            kernel_size=3,
            align_corners=False,
            loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4),
        )
        for index in (0, 1, 2)
    ],
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(512, 512)),
)

optimizer = dict(weight_decay=0.0)
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=optimizer,
    paramwise_cfg=dict(custom_keys={'head': dict(lr_mult=10.)}),
)

train_dataloader = dict(batch_size=1)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
