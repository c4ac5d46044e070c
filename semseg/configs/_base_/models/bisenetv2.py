# BiSeNetV2: a detail branch (1/8) and a semantic branch (stem, gather-and-expansion layers, context
# embedding; 1/4 to 1/32) fused by bilateral guided aggregation. An FCN head reads the aggregation; four
# auxiliary FCN heads (the paper's booster) read the semantic stages 1/4, 1/8, 1/16 and 1/32.

norm_cfg = dict(type='SyncBN', requires_grad=True)

data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
)

model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        type='BiSeNetV2',
        detail_channels=(64, 64, 128),
        semantic_channels=(16, 32, 64, 128),
        semantic_expansion_ratio=6,
        bga_channels=128,
        out_indices=(0, 1, 2, 3, 4),
        init_cfg=None,
        align_corners=False,
    ),
    decode_head=dict(
        type='FCNHead',
        in_channels=128,
        in_index=0,
        channels=1024,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=19,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
    ),
    # (backbone output, its channels, head channels) per semantic stage
    auxiliary_head=[
        dict(
            type='FCNHead',
            in_channels=in_channels,
            channels=channels,
            num_convs=2,
            num_classes=19,
            in_index=index,
            norm_cfg=norm_cfg,
            concat_input=False,
            align_corners=False,
            loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        )
        for index, in_channels, channels in ((1, 16, 16), (2, 32, 64), (3, 64, 256), (4, 128, 1024))
    ],
    train_cfg=dict(),
    test_cfg=dict(mode='whole'),
)
