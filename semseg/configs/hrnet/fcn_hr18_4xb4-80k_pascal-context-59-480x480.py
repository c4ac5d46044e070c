_base_ = [
    '../_base_/models/fcn_hr18.py',
    '../_base_/datasets/pascal_context_59.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/schedule_80k.py',
]

data_preprocessor = dict(size=(480, 480))

model = dict(
    data_preprocessor=data_preprocessor,
    decode_head=dict(num_classes=59),
    test_cfg=dict(mode='slide', crop_size=(480, 480), stride=(320, 320)),
)

optimizer = dict(lr=0.004, weight_decay=0.0001)
optim_wrapper = dict(optimizer=optimizer)
