"""Per-target maps of a results folder as files other tools read: NIfTI volumes, MGH or GIfTI surfaces.

A researcher takes MINE's maps to pycortex, nilearn or FreeSurfer. Volume results are written as NIfTI on
the source's grid with its affine (``results.space``); surface results as one file per hemisphere, over every
vertex of the mesh (``space.unmask``: NaN, or label 0, off the mask): FreeSurfer MGH (``lh.NAME.mgh``, shape
(n, 1, 1)) or GIfTI (``lh.NAME.func.gii``, or ``lh.NAME.label.gii`` with its label table for label maps).
Label maps also get a FreeSurfer colour table beside them (``NAME.ctab``: lines ``k name r g b 0``), which
napari-mine's own NIfTI reader picks up. Every file is written aside and renamed into place.
"""

from __future__ import annotations

import colorsys
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_mine.errors import MineInputError

FORMATS = ("nifti", "mgh", "gifti")
VOLUME_FORMATS = ("nifti",)
SURFACE_FORMATS = ("mgh", "gifti")
ACCURACY_MAPS = {"accuracy": "normalized_r", "r": "r", "noise-ceiling": "noise_ceiling"}
MAPS = (*ACCURACY_MAPS, "clusters", "top-concept", "values")
STRUCTURES = {"lh": "CortexLeft", "rh": "CortexRight"}  # GIfTI's AnatomicalStructurePrimary


@dataclass(frozen=True)
class TargetMap:
    """Per-target values to export: floats (NaN off the mask), or integer labels with their names (0 = none)."""

    name: str
    values: np.ndarray  # (n_targets,)
    labels: dict[int, str] | None = None


def target_map(results, name: str, values=None, label: str | None = None) -> TargetMap:
    """The per-target map ``name`` of ``results`` (one of ``MAPS``); ``values``: an array for ``"values"``.

    "accuracy" is the held-out r over the noise ceiling, "r" and "noise-ceiling" its parts; "clusters" the
    within-ROI sub-populations of the profiles step (one label per ROI label and sub-population);
    "top-concept" each profiled target's highest-scoring concept; "values" any per-target array (a
    counterfactual edit's Δ, say), named ``label`` (default "values").
    """
    if name not in MAPS:
        raise MineInputError(f"there is no map {name!r} to export; choose one of {', '.join(MAPS)}.")
    n_targets = results.space.n_targets
    if name in ACCURACY_MAPS:
        results.require("encoder", "run `napari-mine fit` first.")
        key = ACCURACY_MAPS[name]
        if key not in results.accuracy:
            raise MineInputError(f"the encoder of {results.root} has no {key} per target (no noise ceiling in the "
                                 "data); export 'r' instead.")
        return TargetMap(name, results.accuracy[key].astype(np.float32))
    if name == "clusters":
        return _cluster_map(results, n_targets)
    if name == "top-concept":
        return _top_concept_map(results, n_targets)
    if values is None:
        raise MineInputError("the 'values' map needs a per-target array; pass values= (or --values FILE.npy).")
    values = np.asarray(values)
    if values.shape != (n_targets,) or not np.issubdtype(values.dtype, np.number):
        raise MineInputError(f"values of shape {values.shape} ({values.dtype}) are not one number per target; "
                             f"give {n_targets} values, one per target of {results.root.name}.")
    return TargetMap(label or "values", values.astype(np.float32))


def _cluster_map(results, n_targets: int) -> TargetMap:
    """One label per (ROI label, sub-population) the profiles step found, numbered in label-name order."""
    results.require("profiles", "run `napari-mine profile` first.")
    values = np.zeros(n_targets, np.int32)
    labels = {}
    for roi_label, clusters in sorted(results.saved_clusters().items()):
        for cluster in range(1, int(clusters.max(initial=0)) + 1):
            code = len(labels) + 1
            labels[code] = f"{roi_label}-sub{cluster}"
            values[clusters == cluster] = code
    if not labels:
        raise MineInputError(f"{results.root} holds no ROI sub-populations; run `napari-mine profile` with --roi.")
    return TargetMap("clusters", values, labels)


def _top_concept_map(results, n_targets: int) -> TargetMap:
    """Each profiled target's top concept as a label (1 + the concept's index), 0 where none was profiled."""
    results.require("profiles", "run `napari-mine profile` first.")
    group = results.group("profiles")
    concepts = list(group.attrs["concepts"])
    values = np.zeros(n_targets, np.int32)
    values[np.asarray(group["voxels"][...])] = np.argmax(np.asarray(group["scores"][...]), axis=1) + 1
    return TargetMap("top-concept", values, {index + 1: concept for index, concept in enumerate(concepts)})


# ---- writing ---------------------------------------------------------------------------------------------


def export_maps(results, names, fmt: str, out: str | os.PathLike, values=None, label: str | None = None,
                on_fsaverage: bool = False) -> list[Path]:
    """Write the maps ``names`` of ``results`` as ``fmt`` files into the folder ``out``; returns the paths.

    ``on_fsaverage`` carries the maps of volume results of an NSD subject onto fsaverage through the subject's
    transforms (:meth:`Results.on_fsaverage`) and writes them as surface files.
    """
    if fmt not in FORMATS:
        raise MineInputError(f"there is no export format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    space = results.space
    if on_fsaverage:
        return _export_on_fsaverage(results, names, fmt, Path(out), values, label)
    if space.kind == "volume" and fmt not in VOLUME_FORMATS:
        raise MineInputError(f"{results.root.name} holds volume results (voxels on a grid), which {fmt} cannot "
                             "place; export them with --format nifti.")
    if space.kind == "surface" and fmt not in SURFACE_FORMATS:
        raise MineInputError(f"{results.root.name} holds surface results (vertices), which NIfTI cannot place; "
                             "export them with --format mgh or --format gifti.")
    maps = [target_map(results, name, values, label) for name in names]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for item in maps:
        sites = space.unmask(item.values, np.nan if item.labels is None else 0)
        if fmt == "nifti":
            paths.append(write_nifti(sites, space.affine, out / f"{item.name}.nii.gz", item.labels))
        else:
            paths += write_surface(space.per_hemisphere(sites), out, item.name, fmt, item.labels)
        if item.labels is not None:
            paths.append(write_color_table(item.labels, out / f"{item.name}.ctab"))
    return paths


def _export_on_fsaverage(results, names, fmt: str, out: Path, values, label) -> list[Path]:
    if fmt not in SURFACE_FORMATS:
        raise MineInputError(f"maps carried onto fsaverage are vertex maps, which {fmt} cannot hold; export them "
                             "with --format mgh or --format gifti.")
    layout = results.fsaverage_projection().layout
    maps = [target_map(results, name, values, label) for name in names]
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for item in maps:
        sites = results.on_fsaverage(item.values, labels=item.labels is not None)
        per_hemisphere, start = {}, 0
        for hemi, count in layout.hemispheres.items():
            per_hemisphere[hemi], start = sites[start:start + count], start + count
        paths += write_surface(per_hemisphere, out, f"{item.name}.fsaverage", fmt, item.labels)
        if item.labels is not None:
            paths.append(write_color_table(item.labels, out / f"{item.name}.ctab"))
    return paths


def write_nifti(volume: np.ndarray, affine: np.ndarray, path: Path, labels: dict[int, str] | None = None) -> Path:
    """A 3-D volume with its affine: float32, or int32 with the NIfTI label intent for label maps."""
    import nibabel as nib

    data = np.asarray(volume, np.int32 if labels is not None else np.float32)
    image = nib.Nifti1Image(data, np.asarray(affine, float))
    image.header.set_data_dtype(data.dtype)
    if labels is not None:
        image.header.set_intent("label")
    return save_atomic(image, path)


def write_surface(per_hemisphere: dict[str, np.ndarray], out: Path, name: str, fmt: str,
                  labels: dict[int, str] | None = None) -> list[Path]:
    """One MGH or GIfTI file per hemisphere (``lh.NAME.mgh``, ``lh.NAME.func.gii`` / ``.label.gii``)."""
    import nibabel as nib

    paths = []
    for hemi, values in per_hemisphere.items():
        data = np.asarray(values, np.int32 if labels is not None else np.float32)
        if fmt == "mgh":
            image = nib.freesurfer.mghformat.MGHImage(data.reshape(-1, 1, 1), np.eye(4))
            paths.append(save_atomic(image, out / f"{hemi}.{name}.mgh"))
        else:
            kind = "label" if labels is not None else "func"
            image = gifti_values(data, labels, STRUCTURES.get(hemi))
            paths.append(save_atomic(image, out / f"{hemi}.{name}.{kind}.gii"))
    return paths


def gifti_values(values: np.ndarray, labels: dict[int, str] | None = None, structure: str | None = None,
                 geometry: tuple[np.ndarray, np.ndarray] | None = None):
    """A GIfTI image of per-vertex values (a label array with its table when ``labels``), after the mesh's
    points and triangles when ``geometry`` is given."""
    from nibabel.gifti import GiftiDataArray, GiftiImage, GiftiLabel, GiftiLabelTable, GiftiMetaData

    meta = GiftiMetaData({"AnatomicalStructurePrimary": structure}) if structure else GiftiMetaData()
    arrays = []
    if geometry is not None:
        vertices, faces = geometry
        arrays += [GiftiDataArray(np.asarray(vertices, np.float32), intent="NIFTI_INTENT_POINTSET",
                                  datatype="NIFTI_TYPE_FLOAT32"),
                   GiftiDataArray(np.asarray(faces, np.int32), intent="NIFTI_INTENT_TRIANGLE",
                                  datatype="NIFTI_TYPE_INT32")]
    table = None
    if labels is not None:
        table = GiftiLabelTable()
        for key, label_name in {0: "none", **labels}.items():
            label = GiftiLabel(key, *(channel / 255 for channel in _color(key)), 0.0 if key == 0 else 1.0)
            label.label = label_name
            table.labels.append(label)
    for row in np.atleast_2d(values):
        if labels is not None:
            arrays.append(GiftiDataArray(np.asarray(row, np.int32), intent="NIFTI_INTENT_LABEL",
                                         datatype="NIFTI_TYPE_INT32"))
        else:
            arrays.append(GiftiDataArray(np.asarray(row, np.float32), intent="NIFTI_INTENT_NONE",
                                         datatype="NIFTI_TYPE_FLOAT32"))
    return GiftiImage(meta=meta, darrays=arrays, labeltable=table)


def write_color_table(labels: dict[int, str], path: Path) -> Path:
    """A FreeSurfer colour table (``k name r g b 0``; spaces in names become underscores)."""
    lines = [f"{key} {name.replace(' ', '_')} {' '.join(map(str, _color(key)))} 0"
             for key, name in sorted({0: "none", **labels}.items())]
    return _replace_atomic(path, lambda temporary: Path(temporary).write_text("\n".join(lines) + "\n"))


def _color(key: int) -> tuple[int, int, int]:
    """A distinct colour per label (golden-ratio hue steps), black for 0."""
    if key == 0:
        return 0, 0, 0
    red, green, blue = colorsys.hsv_to_rgb((key * 0.618033988749895) % 1.0, 0.65, 0.95)
    return round(red * 255), round(green * 255), round(blue * 255)


def save_atomic(image, path: str | os.PathLike) -> Path:
    """``nibabel.save`` beside ``path`` under a temporary name with the same suffix, then renamed into place."""
    import nibabel as nib

    return _replace_atomic(Path(path), lambda temporary: nib.save(image, temporary))


def _replace_atomic(path: Path, write) -> Path:
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith((".nii.gz", ".func.gii", ".label.gii")) else path.suffix
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path
