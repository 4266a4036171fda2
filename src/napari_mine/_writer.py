"""npe2 writers: a brain volume layer as NIfTI with its grid's affine, a surface layer as GIfTI.

napari calls a single-layer writer as ``writer(path, data, meta)`` (``meta``: the layer's state). A volume's
affine comes from the layer's metadata: the file's own affine for layers napari-mine's NIfTI reader opened,
the results folder's grid for layers read from a results folder (``layer_metadata``); any other layer's
``scale`` and ``translate`` make an axis-aligned affine. Labels layers also get a ``.ctab`` colour table of
their label names beside the file, so that the NIfTI reader opens them as labels again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_mine._reader import META, NIFTI_SUFFIXES, _stem
from napari_mine.errors import MineInputError


def write_nifti_image(path: str, data, meta: dict) -> list[str]:
    """npe2 writer of one image layer: a 3-D float32 NIfTI."""
    from napari_mine.export import write_nifti

    path = _nifti_path(path)
    return [str(write_nifti(_volume(data, meta), layer_affine(meta), path))]


def write_nifti_labels(path: str, data, meta: dict) -> list[str]:
    """npe2 writer of one labels layer: a 3-D int32 NIfTI with the label intent, and its names as ``.ctab``."""
    from napari_mine.export import write_color_table, write_nifti

    path = _nifti_path(path)
    labels = layer_label_names(meta)
    written = [str(write_nifti(_volume(data, meta), layer_affine(meta), path, labels or {}))]
    if labels:
        written.append(str(write_color_table(labels, path.with_name(_stem(path) + ".ctab"))))
    return written


def write_gifti_surface(path: str, data, meta: dict) -> list[str]:
    """npe2 writer of one surface layer: its vertices, triangles and per-vertex values (if any) as GIfTI, with
    the hemisphere of a results folder's surface layer as its AnatomicalStructurePrimary."""
    from napari_mine.export import STRUCTURES, gifti_values, save_atomic

    if not isinstance(data, (tuple, list)) or len(data) not in (2, 3):
        raise MineInputError("a surface layer's data must be (vertices, faces) or (vertices, faces, values); "
                             "save a napari Surface layer.")
    vertices, faces = np.asarray(data[0]), np.asarray(data[1])
    values = np.asarray(data[2], np.float32) if len(data) == 3 else np.zeros((0, len(vertices)), np.float32)
    if values.shape[-1] != len(vertices):
        raise MineInputError(f"the surface layer {meta.get('name', '')!r} has {values.shape[-1]} values for "
                             f"{len(vertices)} vertices; give one value per vertex.")
    path = Path(path)
    if not path.name.endswith(".gii"):
        path = path.with_name(path.name + ".gii")
    hemi = ((meta.get("metadata") or {}).get(META) or {}).get("hemi")
    image = gifti_values(values, structure=STRUCTURES.get(hemi), geometry=(vertices, faces))
    return [str(save_atomic(image, path))]


def layer_affine(meta: dict) -> np.ndarray:
    """The voxel-to-world affine of a volume layer (see the module docstring for where it comes from)."""
    metadata = meta.get("metadata") or {}
    if "affine" in metadata:
        return np.asarray(metadata["affine"], dtype=float)
    store = (metadata.get(META) or {}).get("store")
    if store:
        from napari_mine.results import open_results

        space = open_results(store).space
        if space.kind == "volume":
            return space.affine
    affine = np.eye(4)
    scale = np.asarray(meta.get("scale", np.ones(3)), float)[-3:]
    affine[:3, :3] = np.diag(scale)
    affine[:3, 3] = np.asarray(meta.get("translate", np.zeros(3)), float)[-3:]
    return affine


def layer_label_names(meta: dict) -> dict[int, str]:
    """Label names of a labels layer: its features table (``index``, ``name``), or a results ROI's table."""
    features = meta.get("features")
    if features is not None and len(features) and {"index", "name"} <= set(features):
        return {int(k): str(v) for k, v in zip(features["index"], features["name"]) if int(k) > 0}
    table = ((meta.get("metadata") or {}).get(META) or {}).get("labels") or {}
    return {int(k): str(v) for k, v in table.items() if int(k) > 0}


def _volume(data, meta: dict) -> np.ndarray:
    volume = np.asarray(data)
    if volume.ndim != 3:
        raise MineInputError(f"the layer {meta.get('name', '')!r} has {volume.ndim} dimensions {volume.shape}; "
                             "NIfTI export writes 3-D brain volumes, so save a brain volume layer.")
    return volume


def _nifti_path(path: str) -> Path:
    path = Path(path)
    return path if path.name.lower().endswith(NIFTI_SUFFIXES) else path.with_name(path.name + ".nii.gz")
