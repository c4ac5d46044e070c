"""Segmentation datasets in MMSegmentation 1.x's layouts, the synthetic dataset, and dataset wrappers."""

from semseg.data.datasets.base import BaseSegDataset
from semseg.data.datasets.cityscapes import (
    CityscapesDataset,
    DarkZurichDataset,
    NightDrivingDataset,
    convert_cityscapes,
)
from semseg.data.datasets.standard import (
    ADE20KDataset,
    BDD100KDataset,
    ChaseDB1Dataset,
    COCOStuffDataset,
    DRIVEDataset,
    HRFDataset,
    ISPRSDataset,
    LoveDADataset,
    MapillaryDataset_v1,
    MapillaryDataset_v2,
    PascalContextDataset,
    PascalContextDataset59,
    PascalVOCDataset,
    PotsdamDataset,
    STAREDataset,
    iSAIDDataset,
)
from semseg.data.datasets.synthetic import (
    SyntheticDataset,
    generate_sample,
    synthetic_metainfo,
    write_synthetic_dataset,
)
from semseg.data.datasets.wrappers import ConcatDataset, RepeatDataset

__all__ = [
    "ADE20KDataset", "BDD100KDataset", "BaseSegDataset", "COCOStuffDataset", "ChaseDB1Dataset",
    "CityscapesDataset", "ConcatDataset", "DRIVEDataset", "DarkZurichDataset", "HRFDataset", "ISPRSDataset",
    "LoveDADataset", "MapillaryDataset_v1", "MapillaryDataset_v2", "NightDrivingDataset",
    "PascalContextDataset", "PascalContextDataset59", "PascalVOCDataset", "PotsdamDataset", "RepeatDataset",
    "STAREDataset", "SyntheticDataset", "convert_cityscapes", "generate_sample", "iSAIDDataset",
    "synthetic_metainfo", "write_synthetic_dataset",
]
