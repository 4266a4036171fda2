"""Load a study on the cortical surface that is not in the NSD layout: per-vertex responses of both hemispheres.

The surface counterpart of :func:`~napari_mine.data.generic.load_generic` (same images folder and trial table);
the responses are columns over the vertices of an fsaverage mesh, left hemisphere then right.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_mine.data.dataset import ARRAY_MASK, Dataset, reading
from napari_mine.data.generic import _check_images_exist, _table_and_images, _test_images, _trial_table
from napari_mine.data.images import ImageStore
from napari_mine.data.nsd_surface import (
    _drop_columns,
    _warn_dropped,
    _without,
    read_surface_label,
    read_vertex_values,
    sulcal_anatomy,
)
from napari_mine.errors import MineInputError
from napari_mine.spaces import SurfaceLayout
from napari_mine.surfaces import HEMISPHERES, RESOLUTIONS, resolution_of

_PER_HEMISPHERE = (".mgh", ".mgz", ".func.gii")


def load_generic_surface(
    folder=None,
    *,
    responses=None,
    mesh: str | None = None,
    freesurfer_dir=None,
    mask=None,
    table=None,
    images=None,
    rois=None,
    name: str | None = None,
    image_size: int | None = None,
) -> Dataset:
    """Load a folder of images with per-trial responses on the vertices of an fsaverage mesh.

    Expected layout (explicit arguments override the folder's files)::

        folder/
          images/, trials.csv | .tsv          as for load_generic
          responses.npy                        (n_trials, n_lh + n_rh): lh's vertices, then rh's, or
          {lh,rh}.responses.mgh | .mgz         (n, 1, 1, n_trials) per hemisphere, or
          {lh,rh}.responses.func.gii           one data array per trial (or one (n, n_trials) array)
          mask.npy | {lh,rh}.mask.mgh          optional, vertices > 0 kept (default: every vertex)
          rois/{lh,rh}.NAME.mgz                optional labels, names from rois/NAME.ctab or NAME.mgz.ctab

    Vertices NaN in any trial or constant over all trials (the medial wall) are dropped, counted per hemisphere
    in a warning.

    Parameters
    ----------
    folder : str or Path, optional
        The study folder; required unless ``responses`` is given.
    responses : path or (lh path, rh path), optional
    mesh : str, optional
        The fsaverage resolution ("fsaverage5", "fsaverage", …), checked against the vertex count; default:
        the resolution with that many vertices.
    freesurfer_dir : path, optional
        A FreeSurfer fsaverage folder (``surf/lh.white`` …) to draw the data on at full resolution.
    mask : path, (lh path, rh path) or boolean array over all vertices, optional
    table, images, rois, name, image_size
        As for :func:`~napari_mine.data.generic.load_generic`; ``rois`` a folder of label files.

    Returns
    -------
    Dataset
        Responses as stored, one row per trial; ``surface`` the layout; mask, labels, anatomy over all vertices.
    """
    folder = Path(folder) if folder is not None else None
    hemisphere_files = _responses(responses, folder)
    name = name or (folder.name if folder else Path(hemisphere_files[0]).name.split(".")[0])
    values, counts = _read_responses(hemisphere_files)
    layout = _layout(counts, mesh, freesurfer_dir, hemisphere_files[0])
    sites, mask_description = _mask(mask, folder, counts)
    table_path, image_folder = _table_and_images(table, images, folder)
    image_names, is_test = _trial_table(table_path, image_folder, len(values))
    image_files, trial_images = np.unique(image_names, return_inverse=True)
    _check_images_exist(image_folder, image_files)
    label_paths = _label_paths(rois, folder)
    labels = {label: read_surface_label(paths, label, counts, table) for label, (paths, table) in label_paths.items()}

    kept = values[:, sites]
    del values
    dropped = ~np.isfinite(kept).all(axis=0) | (np.nanmax(kept, axis=0, initial=-np.inf) <= np.nanmin(
        kept, axis=0, initial=np.inf))
    dropped_per_hemisphere = _warn_dropped(dropped, sites, counts)
    if dropped.any():
        kept, sites = _drop_columns(kept, dropped), _without(sites, dropped)
    return Dataset(
        name=name,
        images=ImageStore.from_files([image_folder / f for f in image_files], image_size=image_size),
        responses=kept,
        trial_images=trial_images,
        mask=sites,
        affine=np.eye(4),
        rois=labels,
        test_images=_test_images(is_test),
        anatomy=sulcal_anatomy(layout),
        source={
            "format": "generic",
            "space": "fsaverage",
            "name": name,
            "responses": [str(Path(path).resolve()) for path in hemisphere_files],
            "mesh": layout.mesh,
            "freesurfer_dir": layout.freesurfer_dir,
            "mask": mask_description,
            "table": None if table_path is None else str(table_path.resolve()),
            "images": str(image_folder.resolve()),
            "rois": None if not label_paths else str(next(iter(label_paths.values()))[0]["lh"].parent.resolve()),
            "image_size": image_size,
            "dropped_vertices": dropped_per_hemisphere,
        },
        surface=layout,
    )


def _responses(given, folder: Path | None) -> list[Path]:
    """One .npy over both hemispheres, or the lh and rh files."""
    if given is not None:
        paths = [Path(given)] if isinstance(given, (str, Path)) else [Path(p) for p in given]
    elif folder is not None and (folder / "responses.npy").is_file():
        paths = [folder / "responses.npy"]
    else:
        found = [[folder / f"{hemi}.responses{suffix}" for hemi in HEMISPHERES] for suffix in _PER_HEMISPHERE] \
            if folder is not None else []
        paths = next((pair for pair in found if all(p.is_file() for p in pair)), None)
        if paths is None:
            where = f"in {folder}" if folder else "(no folder given)"
            raise MineInputError(f"No surface responses {where}; add responses.npy or lh/rh.responses.mgh (or "
                                 ".func.gii), or pass responses= their paths.")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise MineInputError(f"{missing[0]} does not exist; check the path.")
    if len(paths) not in (1, 2) or (len(paths) == 1) != (paths[0].suffix == ".npy"):
        raise MineInputError("Give the surface responses as one .npy over both hemispheres or as two files, lh and "
                             "rh (MGH or GIfTI).")
    return paths


def _read_responses(paths: list[Path]) -> tuple[np.ndarray, dict[str, int]]:
    """float32 (n_trials, n_lh + n_rh), and the vertices per hemisphere."""
    if len(paths) == 1:
        with reading(paths[0]):
            values = np.load(paths[0], mmap_mode="r")
        if values.ndim != 2 or values.shape[1] % 2:
            raise MineInputError(f"{paths[0]} has shape {values.shape}; give (n_trials, n_lh + n_rh) responses with "
                                 "as many vertices in each hemisphere.")
        n = values.shape[1] // 2
        return np.asarray(values, dtype=np.float32), {"lh": n, "rh": n}
    parts = [_hemisphere_responses(path) for path in paths]
    counts = dict(zip(HEMISPHERES, (part.shape[1] for part in parts)))
    if counts["lh"] != counts["rh"]:
        raise MineInputError(f"{paths[0].name} has {counts['lh']:,} vertices but {paths[1].name} has "
                             f"{counts['rh']:,}: the hemispheres are of different resolutions; give both on the "
                             "same fsaverage.")
    if parts[0].shape[0] != parts[1].shape[0]:
        raise MineInputError(f"{paths[0].name} holds {parts[0].shape[0]} trials but {paths[1].name} "
                             f"{parts[1].shape[0]}; give both hemispheres of the same trials.")
    return np.concatenate(parts, axis=1), counts


def _hemisphere_responses(path: Path) -> np.ndarray:
    """(n_trials, n_vertices) float32 of one hemisphere's MGH or GIfTI file."""
    if path.name.endswith(".gii"):
        import nibabel as nib

        with reading(path):
            arrays = [np.asarray(array.data, np.float32) for array in nib.load(str(path)).darrays]
        values = np.stack(arrays) if len(arrays) > 1 or arrays[0].ndim == 1 else arrays[0].T
        return values.reshape(len(values), -1)
    return np.ascontiguousarray(np.atleast_2d(read_vertex_values(path).T), dtype=np.float32)


def _layout(counts: dict[str, int], mesh: str | None, freesurfer_dir, path: Path) -> SurfaceLayout:
    found = resolution_of(counts["lh"], str(path))
    if mesh is not None and mesh != found:
        if mesh not in RESOLUTIONS:
            raise MineInputError(f"There is no fsaverage mesh {mesh!r}; choose one of {', '.join(RESOLUTIONS)}.")
        raise MineInputError(f"{path} has {counts['lh']:,} vertices per hemisphere ({found}), not the "
                             f"{RESOLUTIONS[mesh]:,} of {mesh}; give mesh={found!r} or data on {mesh}.")
    if freesurfer_dir is not None:
        import nibabel as nib

        white = Path(freesurfer_dir) / "surf" / "lh.white"
        with reading(white):
            n_vertices = len(nib.freesurfer.read_geometry(str(white))[0])
        if n_vertices != counts["lh"]:
            raise MineInputError(f"{white} has {n_vertices:,} vertices but the responses {counts['lh']:,} per "
                                 "hemisphere; give the FreeSurfer folder of the responses' mesh.")
        freesurfer_dir = str(Path(freesurfer_dir).resolve())
    return SurfaceLayout(found, counts, freesurfer_dir)


def _mask(mask, folder: Path | None, counts: dict[str, int]) -> tuple[np.ndarray, str | None]:
    n_sites = sum(counts.values())
    if isinstance(mask, np.ndarray):
        selected, description = mask, ARRAY_MASK
    else:
        if mask is None and folder is not None:
            pair = [folder / f"{hemi}.mask.mgh" for hemi in HEMISPHERES]
            mask = folder / "mask.npy" if (folder / "mask.npy").is_file() else (
                pair if all(p.is_file() for p in pair) else None)
        if mask is None:
            return np.ones(n_sites, dtype=bool), None
        paths = [Path(mask)] if isinstance(mask, (str, Path)) else [Path(p) for p in mask]
        selected = np.load(paths[0]) if len(paths) == 1 else np.concatenate([read_vertex_values(p) for p in paths])
        description = [str(p.resolve()) for p in paths]
    selected = np.asarray(selected)
    if selected.shape != (n_sites,):
        raise MineInputError(f"The mask has shape {selected.shape} but the responses have {n_sites:,} vertices "
                             "(lh then rh); give one value per vertex.")
    selected = selected > 0 if selected.dtype != bool else selected
    if not selected.any():
        raise MineInputError("The mask selects no vertex; give a mask with vertices > 0.")
    return selected, description


def _label_paths(rois, folder: Path | None) -> dict[str, tuple[dict[str, Path], Path | None]]:
    """Label name → its lh/rh files and colour table (or None), from the rois folder."""
    if rois is None:
        rois = folder / "rois" if folder is not None and (folder / "rois").is_dir() else None
    if rois is None:
        return {}
    rois = Path(rois)
    found = {}
    for path in sorted(rois.glob("lh.*.mgz")) + sorted(rois.glob("lh.*.mgh")):
        label = path.name[3:-4]
        partner = path.with_name(f"rh.{label}{path.suffix}")
        if not partner.is_file():
            raise MineInputError(f"{path} has no {partner.name} beside it; give each label for both hemispheres.")
        table = next((t for t in (rois / f"{label}.ctab", rois / f"{label}.mgz.ctab") if t.is_file()), None)
        found.setdefault(label, ({"lh": path, "rh": partner}, table))
    return found
