# LR-ASPP on MobileNetV3-large trained from scratch, Cityscapes 512x1024 crops, 320k iterations.
# The schedule file is the 160k one; the old-style `runner` below (kept as MMSegmentation has it) says 320k.
_base_ = [
    '../_base_/models/lraspp_m-v3-d8.py',
    '../_base_/datasets/cityscapes.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/schedule_160k.py',
]

crop_size = (512, 1024)
data_preprocessor = dict(size=crop_size)
model = dict(data_preprocessor=data_preprocessor)

train_dataloader = dict(batch_size=4, num_workers=4)
val_dataloader = dict(batch_size=1, num_workers=4)
test_dataloader = val_dataloader

runner = dict(type='IterBasedRunner', max_iters=320000)
