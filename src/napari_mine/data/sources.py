"""Reopening a dataset from its ``source`` record: the registry of loaders by record format.

Kept apart from :mod:`napari_mine.data.dataset` so the dataset type does not import the loaders built on it.
"""

from __future__ import annotations

from typing import Callable

from napari_mine.data.dataset import ARRAY_MASK, Dataset
from napari_mine.data.generic import load_generic
from napari_mine.data.generic_surface import load_generic_surface
from napari_mine.data.nsd import load_nsd
from napari_mine.data.nsd_surface import load_nsd_surface
from napari_mine.errors import MineInputError


def _reopen_nsd(source: dict) -> Dataset:
    if source.get("space") == "fsaverage":
        return load_nsd_surface(
            source["root"], source["subject"], mask=source["mask"], sessions=source["sessions"],
            dtype=source["dtype"], zscore=source["zscore"], rois=source["rois"], glm=source["glm"],
        )
    return load_nsd(
        source["root"], source["subject"], mask=source["mask"], sessions=source["sessions"],
        dtype=source["dtype"], zscore=source["zscore"], nan_policy=source["nan_policy"],
        rois=source["rois"], glm=source["glm"],
    )


def _reopen_generic(source: dict) -> Dataset:
    if source.get("space") == "fsaverage":
        return load_generic_surface(
            responses=source["responses"], mesh=source["mesh"], freesurfer_dir=source["freesurfer_dir"],
            mask=source["mask"], table=source["table"], images=source["images"], rois=source["rois"],
            name=source["name"], image_size=source["image_size"],
        )
    return load_generic(
        responses=source["responses"], mask=source["mask"], table=source["table"], images=source["images"],
        rois=source["rois"], anatomy=source["anatomy"], name=source["name"],
        nan_policy=source["nan_policy"], image_size=source["image_size"],
    )


# The synthetic world is written in the NSD layout and reopens through "nsd" (its fsaverage betas too: the
# record's "space" says which).
LOADERS: dict[str, Callable[[dict], Dataset]] = {"nsd": _reopen_nsd, "generic": _reopen_generic}


def dataset_from_source(source: dict) -> Dataset:
    """Load a dataset again from its ``source`` record (as a results manifest keeps it).

    Parameters
    ----------
    source : dict
        ``Dataset.source`` of a dataset loaded by :func:`load_nsd`, :func:`load_nsd_surface`, :func:`load_generic`
        or :func:`load_generic_surface` (the record's ``"space"`` tells the surface loaders apart).

    Returns
    -------
    Dataset
        The same data, read again from the same files with the same options.
    """
    if source.get("mask") == ARRAY_MASK:
        raise MineInputError(
            "This dataset was loaded with a mask array, which its record cannot hold; load it again with the "
            "loader and the same mask."
        )
    loader = LOADERS.get(source.get("format"))
    if loader is None:
        raise MineInputError(f"The dataset record has format {source.get('format')!r}; expected 'nsd' or 'generic'.")
    return loader(source)
