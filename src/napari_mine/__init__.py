"""napari-mine: Mechanistically Interpretable Neural Encoding (MINE) for voxelwise fMRI models."""

__version__ = "0.1.0"
