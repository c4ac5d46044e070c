# Binary segmentation as MMSegmentation 1.x writes it: one output channel (out_channels=1) trained with a
# sigmoid loss (use_sigmoid=True); a pixel is foreground where the sigmoid of its logit exceeds `threshold`.
# num_classes stays 2, so the metrics (IoU, Acc) count background and foreground.
# Data: the built-in synthetic images (5 kinds of textured shapes) with every shape labelled foreground.
_base_ = ['./fcn_r18-d8_1xb8-600_synthetic-96x96.py']

model = dict(
    decode_head=dict(
        num_classes=2,
        out_channels=1,
        threshold=0.5,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0),
    ),
    auxiliary_head=dict(
        num_classes=2,
        out_channels=1,
        threshold=0.5,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=0.4),
    ),
)
train_dataloader = dict(dataset=dict(binary=True))
val_dataloader = dict(dataset=dict(binary=True))
test_dataloader = val_dataloader
