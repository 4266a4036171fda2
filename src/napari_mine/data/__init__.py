"""Data sources (NSD layout or a generic folder, in the volume or on fsaverage) loaded into one :class:`Dataset`."""

from napari_mine.data.dataset import Dataset, RoiVolume
from napari_mine.data.generic import load_generic
from napari_mine.data.generic_surface import load_generic_surface
from napari_mine.data.images import ImageStore, read_image_file, to_rgb_uint8
from napari_mine.data.nsd import NSD_ROI_LABELS, NSD_ROI_NAMES, load_nsd
from napari_mine.data.nsd_surface import load_nsd_surface
from napari_mine.data.sources import dataset_from_source

__all__ = [
    "Dataset",
    "ImageStore",
    "NSD_ROI_LABELS",
    "NSD_ROI_NAMES",
    "RoiVolume",
    "dataset_from_source",
    "load_generic",
    "load_generic_surface",
    "load_nsd",
    "load_nsd_surface",
    "read_image_file",
    "to_rgb_uint8",
]
