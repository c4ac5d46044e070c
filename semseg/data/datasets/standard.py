"""The datasets MMSegmentation's configs name, each a ``BaseSegDataset`` with its classes, palette, file
suffixes and label convention. The layouts below are those of MMSegmentation's converters and configs
(``data_root`` + ``data_prefix``); Cityscapes and its night-time test sets live in ``cityscapes.py``.
"""

from __future__ import annotations

from semseg.data.datasets import metainfo as meta
from semseg.data.datasets.base import BaseSegDataset


class ADE20KDataset(BaseSegDataset):
    """ADE20K scene parsing: ``images/{training,validation}/*.jpg``, ``annotations/.../*.png``.

    Label 0 ("other objects") is ignored: ``reduce_zero_label`` turns 1..150 into 0..149.
    """

    METAINFO = {"classes": meta.ADE20K_CLASSES, "palette": meta.ADE20K_PALETTE}
    REDUCE_ZERO_LABEL = True


class PascalVOCDataset(BaseSegDataset):
    """PASCAL VOC 2012: ``JPEGImages/*.jpg``, ``SegmentationClass/*.png`` (or the augmented
    ``SegmentationClassAug`` through ``data_prefix``), stems from ``ImageSets/Segmentation/<split>.txt``.

    Needs ``ann_file``. Label 0 is background (a class), 255 the object borders.
    """

    METAINFO = {"classes": meta.PASCAL_VOC_CLASSES, "palette": meta.PASCAL_VOC_PALETTE}
    NEEDS_ANN_FILE = True


class PascalContextDataset(BaseSegDataset):
    """PASCAL Context, 60 classes with background: ``JPEGImages``, ``SegmentationClassContext``, stems
    from ``ImageSets/SegmentationContext/<split>.txt``."""

    METAINFO = {"classes": meta.PASCAL_CONTEXT_CLASSES, "palette": meta.PASCAL_CONTEXT_PALETTE}


class PascalContextDataset59(BaseSegDataset):
    """PASCAL Context, 59 classes: the same files, label 0 (background) ignored by ``reduce_zero_label``."""

    METAINFO = {"classes": meta.PASCAL_CONTEXT_59_CLASSES, "palette": meta.PASCAL_CONTEXT_59_PALETTE}
    REDUCE_ZERO_LABEL = True


class COCOStuffDataset(BaseSegDataset):
    """COCO-Stuff, 171 classes: ``images/<split>/*.jpg`` with ``annotations/<split>/*_labelTrainIds.png``.

    The 164k layout uses the ``train2017``/``val2017`` splits, the 10k layout ``train2014``/``test2014``
    (whose configs also set ``reduce_zero_label=True``); both are plain ``data_prefix`` choices.
    """

    METAINFO = {"classes": meta.COCO_STUFF_CLASSES, "palette": meta.COCO_STUFF_PALETTE}
    SEG_MAP_SUFFIX = "_labelTrainIds.png"


class LoveDADataset(BaseSegDataset):
    """LoveDA: ``img_dir/{train,val,test}/*.png``, ``ann_dir/.../*.png``; label 0 (no data) ignored."""

    METAINFO = {"classes": meta.LOVEDA_CLASSES, "palette": meta.LOVEDA_PALETTE}
    IMG_SUFFIX = ".png"
    REDUCE_ZERO_LABEL = True


class PotsdamDataset(BaseSegDataset):
    """ISPRS Potsdam patches: ``img_dir/{train,val}/*.png``, ``ann_dir/.../*.png``; label 0 (boundary)
    ignored."""

    METAINFO = {"classes": meta.ISPRS_CLASSES, "palette": meta.ISPRS_PALETTE}
    IMG_SUFFIX = ".png"
    REDUCE_ZERO_LABEL = True


class ISPRSDataset(PotsdamDataset):
    """ISPRS Vaihingen patches: the Potsdam layout and classes."""


class iSAIDDataset(BaseSegDataset):
    """iSAID patches: ``img_dir/{train,val}/*.png`` with ``ann_dir/.../*_instance_color_RGB.png``
    (single-channel class ids after conversion); label 0 is background."""

    METAINFO = {"classes": meta.ISAID_CLASSES, "palette": meta.ISAID_PALETTE}
    IMG_SUFFIX = ".png"
    SEG_MAP_SUFFIX = "_instance_color_RGB.png"


class DRIVEDataset(BaseSegDataset):
    """DRIVE retinal vessels: ``images/{training,validation}/*.png``, ``annotations/.../*_manual1.png``
    (0 background, 1 vessel)."""

    METAINFO = {"classes": meta.RETINAL_VESSELS_CLASSES, "palette": meta.RETINAL_VESSELS_PALETTE}
    IMG_SUFFIX = ".png"
    SEG_MAP_SUFFIX = "_manual1.png"


class STAREDataset(DRIVEDataset):
    """STARE retinal vessels: the DRIVE layout with ``*.ah.png`` label maps."""

    SEG_MAP_SUFFIX = ".ah.png"


class ChaseDB1Dataset(DRIVEDataset):
    """CHASE DB1 retinal vessels: the DRIVE layout with ``*_1stHO.png`` label maps."""

    SEG_MAP_SUFFIX = "_1stHO.png"


class HRFDataset(DRIVEDataset):
    """HRF retinal vessels: the DRIVE layout with ``*.png`` label maps."""

    SEG_MAP_SUFFIX = ".png"


class MapillaryDataset_v1(BaseSegDataset):
    """Mapillary Vistas v1.2, 66 classes: ``<split>/images/*.jpg``, ``<split>/v1.2/labels/*.png``."""

    METAINFO = {"classes": meta.MAPILLARY_V1_CLASSES, "palette": meta.MAPILLARY_V1_PALETTE}


class MapillaryDataset_v2(BaseSegDataset):
    """Mapillary Vistas v2.0, 124 classes: ``<split>/images/*.jpg``, ``<split>/v2.0/labels/*.png``."""

    METAINFO = {"classes": meta.MAPILLARY_V2_CLASSES, "palette": meta.MAPILLARY_V2_PALETTE}


class BDD100KDataset(BaseSegDataset):
    """BDD100K semantic segmentation with Cityscapes' 19 classes: ``images/10k/<split>/*.jpg``,
    ``labels/sem_seg/masks/<split>/*.png``."""

    METAINFO = {"classes": meta.BDD100K_CLASSES, "palette": meta.BDD100K_PALETTE}
