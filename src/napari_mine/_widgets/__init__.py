"""napari dock widgets: thin Qt shells over the engine; layers are their shared state."""

from napari_mine._widgets._data import DataModelWidget
from napari_mine._widgets._editor import CounterfactualEditor
from napari_mine._widgets._fit import FitWidget
from napari_mine._widgets._inspector import VoxelInspector
from napari_mine._widgets._roi import RoiExplorer

__all__ = ["CounterfactualEditor", "DataModelWidget", "FitWidget", "RoiExplorer", "VoxelInspector"]
