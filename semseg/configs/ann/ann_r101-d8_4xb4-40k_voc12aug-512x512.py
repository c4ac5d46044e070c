# As MMSegmentation 1.2.2's: extends the 20k-iteration R-50 config, so it trains 20k iterations.
_base_ = './ann_r50-d8_4xb4-20k_voc12aug-512x512.py'

model = dict(pretrained='open-mmlab://resnet101_v1c', backbone=dict(depth=101))
