# The 4xb4 model trained in mixed precision: float16 autocast with a loss scale of 512 (mmengine's
# AmpOptimWrapper keeps a float scale fixed). On CPUs AmpOptimWrapper autocasts to bfloat16 without a scaler
# unless optim_wrapper.dtype='float16' is set (see semseg.engine.optim.AmpOptimWrapper).
_base_ = './bisenetv2_fcn_4xb4-160k_cityscapes-1024x1024.py'

optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    optimizer=dict(type='SGD', lr=0.05, momentum=0.9, weight_decay=0.0005),
    loss_scale=512.0,
)
