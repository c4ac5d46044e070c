# SETR-Naive on Cityscapes, 768x768 crops: no dropout, ImageNet ViT-L/16 weights; slide inference (768x768
# windows, stride 512); SGD (the schedule's lr 0.01) with x10 on the heads; 8 GPUs x 1 image.
_base_ = [
    '../_base_/models/setr_naive.py',
    '../_base_/datasets/cityscapes_768x768.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/schedule_80k.py',
]

crop_size = (768, 768)
data_preprocessor = dict(size=crop_size)

model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        drop_rate=0.,
        init_cfg=dict(type='Pretrained', checkpoint='pretrain/vit_large_p16.pth'),
    ),
    test_cfg=dict(mode='slide', crop_size=(768, 768), stride=(512, 512)),
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
