_base_ = [
    '../_base_/models/ocrnet_hr18.py',
    '../_base_/datasets/cityscapes.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/schedule_40k.py',
]

data_preprocessor = dict(size=(512, 1024))

model = dict(data_preprocessor=data_preprocessor)
