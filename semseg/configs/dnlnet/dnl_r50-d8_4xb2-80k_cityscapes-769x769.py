_base_ = [
    '../_base_/models/dnl_r50-d8.py',
    '../_base_/datasets/cityscapes_769x769.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/schedule_80k.py',
]

data_preprocessor = dict(size=(769, 769))

model = dict(
    data_preprocessor=data_preprocessor,
    decode_head=dict(align_corners=True),
    auxiliary_head=dict(align_corners=True),
    test_cfg=dict(mode='slide', crop_size=(769, 769), stride=(513, 513)),
)

# As MMSegmentation's: meant to turn off weight decay for the non-local theta/phi convs, but `wd_mult` is
# read by neither mmengine nor semseg (the key is decay_mult), so those convs keep their weight decay.
optim_wrapper = dict(paramwise_cfg=dict(custom_keys=dict(theta=dict(wd_mult=0.0), phi=dict(wd_mult=0.0))))
