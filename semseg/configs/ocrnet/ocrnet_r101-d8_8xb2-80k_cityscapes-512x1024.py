_base_ = [
    '../_base_/models/ocrnet_r50-d8.py',
    '../_base_/datasets/cityscapes.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/schedule_80k.py',
]

data_preprocessor = dict(size=(512, 1024))

model = dict(
    data_preprocessor=data_preprocessor,
    pretrained='open-mmlab://resnet101_v1c',
    backbone=dict(depth=101),
)

# As MMSegmentation 1.2.2 has it, the poly schedule ends at 40k of the 80k iterations.
# Trained on 8 GPUs with twice the learning rate.
optimizer = dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=0.0005)
optim_wrapper = dict(type='OptimWrapper', optimizer=optimizer)
param_scheduler = [
    dict(type='PolyLR', eta_min=2e-4, power=0.9, begin=0, end=40000, by_epoch=False),
]
