"""napari dock widgets: thin Qt shells over the engine; layers are their shared state."""

from napari_mine._widgets._data import DataModelWidget
from napari_mine._widgets._fit import FitWidget
from napari_mine._widgets._inspector import VoxelInspector
from napari_mine._widgets._roi import RoiExplorer

__all__ = ["DataModelWidget", "FitWidget", "RoiExplorer", "VoxelInspector"]
