"""Load one NSD subject's betas on fsaverage (DESIGN.md §4): both hemispheres, per-image means, repeats counted.

NSD ships fsaverage betas as ``{lh,rh}.betas_sessionNN.mgh``, (163842, 1, 1, 750) float32 each (~0.5 GB). A
subject's 30,000 trials over 327,684 vertices would be 39 GB, so the loader never holds them: it reads a session
a bounded block of trials at a time, keeps the mask's vertices, z-scores the session and adds each trial into its
image's running sum. The result is one row per image (the mean of its repeats) with ``Dataset.n_repeats``, which is
all the encoder and the noise ceiling need; peak memory is about the per-image-mean array plus one session.

Units: NSD's fsaverage betas are float32 already in percent signal change (subj01 session 1: sd 1.75, range
±70), unlike the int16 ×300 volume betas; the loader decides from the file (integer files, or float files whose
median |β| is over 30, are divided by 300) and records the scale in the source record.

Vertices that are NaN in any trial or constant over a session (the medial wall, where NSD's fsaverage betas hold
no data) are dropped, with a warning that counts them per hemisphere. ROI labels are fsaverage label files
(``nsddata/freesurfer/fsaverage/label/{lh,rh}.NAME.mgz`` + ``NAME.mgz.ctab``); an ROI NSD draws only in the
subject's volume (floc-*, prf-*) is carried onto fsaverage through the subject's transforms when they are there.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_mine.data.dataset import ARRAY_MASK, Dataset, RoiVolume, read_label_table, read_roi, reading
from napari_mine.data.nsd import (
    DEFAULT_GLM,
    NSD_BETA_SCALE,
    NSD_ROI_LABELS,
    NSD_ROI_NAMES,
    NsdTree,
    _float_dtype,
    _full_session_length,
    _select_sessions,
    _subject_images,
    _test_images,
    read_expdesign,
    trial_stimulus_ids,
)
from napari_mine.errors import MineInputError
from napari_mine.spaces import SurfaceLayout
from napari_mine.surfaces import HEMISPHERES, resolution_of

SPACE = "fsaverage"
LABEL_FOLDER = "label"  # under nsddata/freesurfer/fsaverage
LOOKS_SCALED = 30.0  # median |beta| above this (% signal change is ~1-2) means the floats hold NSD's ×300 values
_CHUNK_BYTES = 64 * 2**20  # one read of a hemisphere's trials
_SURFACE_BETAS = re.compile(r"^(lh|rh)\.betas_session(\d+)\.(mgh|mgz)$")


def load_nsd_surface(
    root,
    subject: int = 1,
    *,
    mask="nsdgeneral",
    sessions=None,
    dtype=np.float32,
    zscore: bool = True,
    rois=NSD_ROI_NAMES,
    glm: str = DEFAULT_GLM,
) -> Dataset:
    """Load an NSD subject's fsaverage betas inside a mask as per-image means, with images, ROIs and ncsnr.

    Parameters
    ----------
    root : str or Path
        The NSD root, or any folder holding the files (found at NSD's paths first, then by name).
    subject : int
        Subject number, 1-8.
    mask : str, None or boolean array
        Vertices to keep: an fsaverage label name (``"nsdgeneral"``; vertices > 0), None for every vertex, or a
        boolean array over both hemispheres' vertices (lh then rh). NaN or constant vertices are always dropped.
    sessions : sequence of int, optional
        1-based session numbers; default every session with both hemispheres' files.
    dtype : numpy float dtype
        dtype of the responses.
    zscore : bool
        Z-score each vertex within each session before averaging repeats (as :func:`load_nsd`).
    rois : sequence of str
        Label names to read (those found: fsaverage label files, else the subject's volume ROI through its
        transforms).
    glm : str
        Betas folder to prefer when several GLM versions are present.

    Returns
    -------
    Dataset
        ``responses`` (n_images, n_vertices): the mean over each image's trials, ``n_repeats`` how many;
        ``surface`` the fsaverage layout; ``mask``, ROI arrays and ``anatomy`` (sulcal depth) over all vertices.
    """
    dtype = _float_dtype(dtype)
    tree = NsdTree(root, subject)
    design = read_expdesign(tree.require("nsddata/experiments/nsd/nsd_expdesign.mat"))
    stimuli_path = tree.require("nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5")
    folder = tree.betas_folder(glm, space=SPACE, pattern=_SURFACE_BETAS, what="{lh,rh}.betas_sessionNN.mgh")
    found = surface_sessions(folder, sessions)
    full_session = _full_session_length(found)
    betas = _select_sessions(found, sessions)
    counts = hemisphere_counts(betas)
    layout = SurfaceLayout(resolution_of(counts["lh"], betas[0].paths["lh"].name), counts, _freesurfer_dir(tree, counts))
    roi_arrays = _read_rois(tree, rois, counts)
    sites, mask_description = _resolve_mask(mask, tree, counts, roi_arrays)
    stimulus_of_trial = trial_stimulus_ids(design, subject, [(s.number, s.n_trials) for s in betas], full_session)
    images, trial_images = _subject_images(stimuli_path, stimulus_of_trial)
    ncsnr = _read_ncsnr(folder, counts)

    means, n_repeats, dropped, scale = per_image_means(betas, sites, trial_images, len(images), dtype, zscore)
    dropped_per_hemisphere = _warn_dropped(dropped, sites, counts)
    if dropped.any():
        means, sites = _drop_columns(means, dropped), _without(sites, dropped)
    return Dataset(
        name=f"NSD {tree.subject_folder} on {layout.mesh}",
        images=images,
        responses=means,
        trial_images=np.arange(len(images)),
        mask=sites,
        affine=np.eye(4),
        rois=roi_arrays,
        ncsnr=None if ncsnr is None else ncsnr[sites],
        test_images=_test_images(design, images),
        anatomy=sulcal_anatomy(layout),
        source={
            "format": "nsd",
            "space": SPACE,
            "root": str(Path(root).resolve()),
            "subject": subject,
            "sessions": [s.number for s in betas],
            "betas": [str(path) for s in betas for path in s.paths.values()],
            "mask": mask_description,
            "rois": list(rois),
            "glm": glm,
            "dtype": dtype.name,
            "zscore": zscore,
            "scale": scale,
            "units": "z-score within session" if zscore else "% signal change",
            "rows": "per-image means",
            "dropped_vertices": dropped_per_hemisphere,
        },
        surface=layout,
        n_repeats=n_repeats,
    )


# ---------------------------------------------------------------------------------------------------------
# Beta files


@dataclass
class SurfaceBetas:
    """One session's two hemisphere files, described from their headers."""

    number: int
    paths: dict[str, Path]  # {"lh": ..., "rh": ...}
    n_trials: int
    counts: dict[str, int]  # vertices per hemisphere
    stored_dtype: np.dtype


def surface_sessions(folder: Path, sessions=None) -> dict[int, SurfaceBetas]:
    """Session number → its lh and rh beta files in ``folder``, each checked (4-D, same trials in both).

    A session with one hemisphere's file only is refused when it is one of ``sessions`` (default: all).
    """
    paths: dict[int, dict[str, Path]] = {}
    for path in sorted(folder.iterdir()):
        match = _SURFACE_BETAS.match(path.name)
        if match:
            paths.setdefault(int(match.group(2)), {}).setdefault(match.group(1), path)
    wanted = paths if sessions is None else {int(number) for number in sessions}
    for number, pair in paths.items():
        if len(pair) < 2 and number in wanted:
            missing = next(hemi for hemi in HEMISPHERES if hemi not in pair)
            raise MineInputError(f"Session {number} in {folder} has no {missing}.betas_session{number:02d}.mgh; "
                                 "give both hemispheres of every session (or choose sessions= the complete ones).")
    return {number: _open_session(number, pair) for number, pair in sorted(paths.items()) if len(pair) == 2}


def _open_session(number: int, paths: dict[str, Path]) -> SurfaceBetas:
    shapes, dtypes = {}, {}
    for hemi, path in paths.items():
        header = mgh_header(path)
        shape = header.get_data_shape()
        if len(shape) != 4 or shape[1:3] != (1, 1):
            raise MineInputError(f"{path} has shape {shape}; NSD's fsaverage betas are (vertices, 1, 1, trials).")
        shapes[hemi], dtypes[hemi] = shape, header.get_data_dtype()
    if shapes["lh"][3] != shapes["rh"][3]:
        raise MineInputError(f"Session {number} holds {shapes['lh'][3]} trials in lh but {shapes['rh'][3]} in rh; "
                             "give the two hemispheres of the same session.")
    return SurfaceBetas(number, paths, int(shapes["lh"][3]), {h: int(s[0]) for h, s in shapes.items()}, dtypes["lh"])


def hemisphere_counts(betas) -> dict[str, int]:
    """Vertices per hemisphere, the same in both hemispheres and every session, on an fsaverage mesh."""
    first = betas[0]
    if first.counts["lh"] != first.counts["rh"]:
        raise MineInputError(
            f"{first.paths['lh'].name} has {first.counts['lh']:,} vertices but {first.paths['rh'].name} has "
            f"{first.counts['rh']:,}: the hemispheres are of different resolutions; give both on the same fsaverage.")
    resolution_of(first.counts["lh"], str(first.paths["lh"]))
    for session in betas[1:]:
        if session.counts != first.counts:
            raise MineInputError(f"Session {session.number} has {session.counts} vertices but session {first.number} "
                                 f"has {first.counts}; give every session on the same fsaverage.")
    return dict(first.counts)


def mgh_header(path: Path):
    """An MGH/MGZ file's header (nibabel's own loader leaves the file open)."""
    from nibabel.freesurfer.mghformat import MGHHeader

    with reading(path), _open_binary(path) as handle:
        return MGHHeader.from_fileobj(handle)


def _open_binary(path: Path):
    import gzip

    return gzip.open(path, "rb") if path.suffix == ".mgz" else open(path, "rb")


def read_vertex_values(path: Path) -> np.ndarray:
    """A whole per-vertex file (label, ncsnr): (n,) values, or (n, k) with several per vertex."""
    shape = mgh_header(path).get_data_shape()
    values = next(_frames(path, 0, int(np.prod(shape[1:])), shape[0]))[1].T
    return values[:, 0] if values.shape[1] == 1 else values


def hemisphere_chunks(path: Path, n_vertices: int, n_trials: int):
    """Yield ``(first_trial, block (k, n_vertices))`` of one hemisphere's session file, a bounded read at a time."""
    step = max(1, _CHUNK_BYTES // (n_vertices * mgh_header(path).get_data_dtype().itemsize))
    return _frames(path, step, n_trials, n_vertices)


def _frames(path: Path, step: int, n_frames: int, n_vertices: int):
    """``(first, values (k, n_vertices))`` blocks of ``step`` frames (0: all at once) of an MGH file.

    MGH stores each frame's vertices contiguously (Fortran order), so a block of frames is one read at an offset.
    """
    header = mgh_header(path)
    dtype = header.get_data_dtype()
    step = step or n_frames
    with reading(path), _open_binary(path) as handle:
        handle.seek(header.get_data_offset())
        for start in range(0, n_frames, step):
            k = min(step, n_frames - start)
            data = handle.read(k * n_vertices * dtype.itemsize)
            if len(data) != k * n_vertices * dtype.itemsize:
                raise MineInputError(f"{path} ends before frame {start + k} of {n_frames}; the file is truncated, "
                                     "re-create or re-download it.")
            yield start, np.frombuffer(data, dtype).reshape(k, n_vertices)


# ---------------------------------------------------------------------------------------------------------
# Per-image means


def per_image_means(betas, sites: np.ndarray, trial_images: np.ndarray, n_images: int, dtype, zscore: bool):
    """Sum every session's masked, scaled (and z-scored) trials into its image's row, then divide by the repeats.

    Returns the means ``(n_images, n_sites_kept)``, the repeats per image, the mask columns that were NaN or
    constant in some session, and the scale the betas were divided by.
    """
    columns = {hemi: np.flatnonzero(part) for hemi, part in _split(sites, betas[0].counts).items()}
    widths = np.cumsum([0] + [len(c) for c in columns.values()])
    means = np.zeros((n_images, int(widths[-1])), dtype=dtype)
    n_repeats = np.bincount(trial_images, minlength=n_images)
    bad = np.zeros(means.shape[1], dtype=bool)
    scale, first_trial = None, 0
    for session in betas:
        block = np.empty((session.n_trials, means.shape[1]), dtype=dtype)
        for (hemi, keep), start_column, stop_column in zip(columns.items(), widths[:-1], widths[1:]):
            for start, chunk in hemisphere_chunks(session.paths[hemi], session.counts[hemi], session.n_trials):
                block[start : start + len(chunk), start_column:stop_column] = chunk[:, keep]
        if scale is None:
            scale = beta_scale(session.stored_dtype, block[:64], session.paths["lh"])  # a sample of trials
        if scale != 1.0:
            block /= dtype.type(scale)
        bad |= _clean_session(block, zscore)
        _add_rows(means, trial_images[first_trial : first_trial + session.n_trials], block)
        first_trial += session.n_trials
        del block
    means /= np.maximum(n_repeats, 1).astype(dtype)[:, None]
    return means, n_repeats, bad, float(scale)


def _clean_session(block: np.ndarray, zscore: bool) -> np.ndarray:
    """Columns NaN anywhere or constant over the session; NaN set to 0 and (``zscore``) each column z-scored.

    Works on bounded groups of columns, so that no temporary reaches the session block's size.
    """
    bad = np.zeros(block.shape[1], dtype=bool)
    step = max(1, _CHUNK_BYTES // (8 * max(len(block), 1)))
    for start in range(0, block.shape[1], step):
        part = block[:, start : start + step]
        finite = np.isfinite(part)
        bad[start : start + step] = ~finite.all(axis=0)
        np.copyto(part, 0, where=~finite)
        bad[start : start + step] |= part.max(axis=0, initial=-np.inf) <= part.min(axis=0, initial=np.inf)
        if zscore:
            mean = part.mean(axis=0, dtype=np.float64)
            std = part.std(axis=0, dtype=np.float64)
            std[~(std > 0)] = 1.0
            part -= mean.astype(part.dtype)
            part /= std.astype(part.dtype)
    return bad


def _add_rows(sums: np.ndarray, rows: np.ndarray, block: np.ndarray) -> None:
    """``sums[rows[t]] += block[t]`` for every trial, an image repeated within the session counted each time."""
    occurrence = np.zeros(len(rows), dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    run_start = np.flatnonzero(np.r_[True, sorted_rows[1:] != sorted_rows[:-1]])
    occurrence[order] = np.arange(len(rows)) - np.repeat(run_start, np.diff(np.r_[run_start, len(rows)]))
    step = max(1, _CHUNK_BYTES // (4 * max(block.shape[1], 1)))  # bounds the gathered rows' temporaries
    for k in range(int(occurrence.max()) + 1 if len(rows) else 0):
        trials = np.flatnonzero(occurrence == k)  # no image twice among these
        for start in range(0, len(trials), step):
            some = trials[start : start + step]
            sums[rows[some]] += block[some]


def beta_scale(stored_dtype, sample: np.ndarray, path: Path) -> float:
    """What the stored betas are divided by to give % signal change: 300 for NSD's int16, else from the values."""
    if np.dtype(stored_dtype).kind in "iu":
        return NSD_BETA_SCALE
    values = np.abs(sample[np.isfinite(sample) & (sample != 0)])
    if values.size and float(np.median(values)) > LOOKS_SCALED:
        warnings.warn(f"{path.name} holds float betas with a median |beta| of {np.median(values):.0f}: read as NSD's "
                      f"% signal change x {NSD_BETA_SCALE:.0f} and divided by {NSD_BETA_SCALE:.0f}.", stacklevel=3)
        return NSD_BETA_SCALE
    return 1.0


def _warn_dropped(dropped: np.ndarray, sites: np.ndarray, counts: dict[str, int]) -> dict[str, int]:
    """Name how many mask vertices of each hemisphere were NaN or constant (and so left out)."""
    per_hemisphere = {}
    hemi_of_column = np.repeat(list(counts), [int(part.sum()) for part in _split(sites, counts).values()])
    for hemi in counts:
        per_hemisphere[hemi] = int(dropped[hemi_of_column == hemi].sum())
    if dropped.all():
        raise MineInputError("Every vertex of the mask is NaN or constant in the betas; check that the mask and the "
                             "betas are of the same subject and resolution.")
    if dropped.any():
        counted = ", ".join(f"{hemi} {n:,} of {int((hemi_of_column == hemi).sum()):,}"
                            for hemi, n in per_hemisphere.items())
        warnings.warn(f"Vertices NaN or constant in the betas (the medial wall, or no data) were left out of the "
                      f"mask: {counted}.", stacklevel=3)
    return per_hemisphere


def _drop_columns(values: np.ndarray, dropped: np.ndarray) -> np.ndarray:
    """``values[:, ~dropped]`` compacted in place, row by row (no second copy of the per-image means)."""
    keep = np.flatnonzero(~dropped)
    flat = values.reshape(-1)
    width = len(keep)
    for row in range(len(values)):
        flat[row * width : (row + 1) * width] = values[row, keep]  # row's new place never overtakes an unread row
    return flat[: len(values) * width].reshape(len(values), width)


def _without(sites: np.ndarray, dropped: np.ndarray) -> np.ndarray:
    kept = np.zeros_like(sites)
    kept[np.flatnonzero(sites)[~dropped]] = True
    return kept


def _split(values: np.ndarray, counts: dict[str, int]) -> dict[str, np.ndarray]:
    """Values over all sites → each hemisphere's part (lh first)."""
    bounds = np.cumsum([0] + list(counts.values()))
    return {hemi: values[start:stop] for hemi, start, stop in zip(counts, bounds[:-1], bounds[1:])}


# ---------------------------------------------------------------------------------------------------------
# Labels, mask, ncsnr, anatomy


def read_surface_label(paths: dict[str, Path], name: str, counts: dict[str, int], table: Path | None) -> RoiVolume:
    """A label over both hemispheres from ``{lh,rh}.NAME.mgz``; without a colour table, labels by number (warned)."""
    parts = []
    for hemi, path in paths.items():
        values = read_vertex_values(path)
        if values.ndim != 1 or len(values) != counts[hemi]:
            raise MineInputError(
                f"{path} has {values.shape[0]:,} vertices but the responses have {counts[hemi]:,} per hemisphere "
                f"({resolution_of(counts[hemi], 'the responses')}); give labels of the responses' fsaverage "
                "resolution.")
        parts.append(np.rint(np.nan_to_num(values, nan=0.0)).astype(np.int32))
    volume = np.concatenate(parts)
    if table is None:
        warnings.warn(f"No {name}.mgz.ctab beside {paths['lh'].name}: its labels are named by number.", stacklevel=3)
        present = [int(k) for k in np.unique(volume) if k > 0]
        labels = {k: f"{name}-{k}" for k in present}
    else:
        labels = read_label_table(table)
    return RoiVolume(name, volume, labels)


def _label_files(tree: NsdTree, name: str) -> tuple[dict[str, Path] | None, Path | None]:
    paths = {hemi: tree.find_fsaverage(f"{LABEL_FOLDER}/{hemi}.{name}.mgz") for hemi in HEMISPHERES}
    if any(path is None for path in paths.values()):
        return None, None
    return paths, tree.find_fsaverage(f"{LABEL_FOLDER}/{name}.mgz.ctab")


def _read_rois(tree: NsdTree, names, counts: dict[str, int]) -> dict[str, RoiVolume]:
    rois, projection = {}, None
    for name in names:
        paths, table = _label_files(tree, name)
        if paths is not None:
            rois[name] = read_surface_label(paths, name, counts, table)
            continue
        volume_path = tree.find_volume(name)
        if volume_path is None or not (tree.root / f"nsddata/ppdata/{tree.subject_folder}/transforms").is_dir():
            continue
        if projection is None:
            projection = _projection(tree, volume_path, counts)
        table = tree.find(f"nsddata/freesurfer/{tree.subject_folder}/label/{name}.mgz.ctab")
        volume = read_roi(volume_path, name, None, read_label_table(table) if table else NSD_ROI_LABELS.get(name))
        rois[name] = RoiVolume(name, projection.project(volume.volume, labels=True), volume.labels)
    return rois


def _projection(tree: NsdTree, volume_path: Path, counts: dict[str, int]):
    """The subject's volume → fsaverage transforms, on the grid of its ROI volumes and the betas' resolution."""
    from napari_mine.data.dataset import open_nifti
    from napari_mine.projection import nsd_projection

    subject = int(tree.subject_folder[4:])
    projection = nsd_projection(tree.root, subject, tuple(open_nifti(volume_path).shape[:3]))
    if projection.layout.hemispheres != counts:
        raise MineInputError(f"The transforms in {projection.folder} map onto {projection.layout.mesh} but the betas "
                             f"are on {resolution_of(counts['lh'], 'the betas')}; give transforms and betas of one "
                             "fsaverage resolution.")
    return projection


def _resolve_mask(mask, tree: NsdTree, counts: dict[str, int], rois: dict) -> tuple[np.ndarray, str | None]:
    """A boolean over all vertices (lh then rh), and how it was given (for the manifest)."""
    n_sites = sum(counts.values())
    if mask is None:
        return np.ones(n_sites, dtype=bool), None
    if isinstance(mask, (str, Path)):
        name = str(mask)
        if name not in rois:
            paths, table = _label_files(tree, name)
            if paths is None:
                raise MineInputError(f"No fsaverage label {name!r}: no lh.{name}.mgz and rh.{name}.mgz under "
                                     f"{tree.root}; pass a label name, None (every vertex) or a boolean array.")
            rois = {name: read_surface_label(paths, name, counts, table)}
        selected = rois[name].volume > 0
    else:
        selected, name = np.asarray(mask, dtype=bool), ARRAY_MASK
        if selected.shape != (n_sites,):
            raise MineInputError(f"The mask array has shape {selected.shape} but the betas have {n_sites:,} vertices "
                                 "(lh then rh); give one boolean per vertex.")
    if not selected.any():
        raise MineInputError(f"The mask {name} selects no vertex; choose a label with vertices > 0.")
    return selected, name


def _read_ncsnr(folder: Path, counts: dict[str, int]) -> np.ndarray | None:
    paths = {hemi: folder / f"{hemi}.ncsnr.mgh" for hemi in HEMISPHERES}
    if not all(path.is_file() for path in paths.values()):
        return None
    parts = []
    for hemi, path in paths.items():
        values = read_vertex_values(path)
        if values.ndim != 1 or len(values) != counts[hemi]:
            raise MineInputError(f"{path} has {values.shape[0]:,} vertices but the betas have {counts[hemi]:,}; give "
                                 "the ncsnr of the same betas.")
        parts.append(values.astype(np.float32))
    return np.concatenate(parts)


def _freesurfer_dir(tree: NsdTree, counts: dict[str, int]) -> str | None:
    """NSD's FreeSurfer fsaverage folder when its meshes have the betas' vertices (else nilearn's draw them)."""
    import nibabel as nib

    folder = tree.root / "nsddata/freesurfer/fsaverage"
    white = folder / "surf" / "lh.white"
    if not white.is_file():
        return None
    with reading(white):
        n_vertices = len(nib.freesurfer.read_geometry(str(white))[0])
    return str(folder.resolve()) if n_vertices == counts["lh"] else None


def sulcal_anatomy(layout: SurfaceLayout) -> np.ndarray:
    """Sulcal depth over every vertex (the background under surface maps): a coarser mesh's depth fills the first
    vertices of each hemisphere (fsaverage's icosahedral order), NaN after them."""
    from napari_mine.surfaces import sulcal_depth

    parts = []
    for hemi, n in layout.hemispheres.items():
        depth = sulcal_depth(hemi, layout.freesurfer_dir)[:n]
        parts.append(np.concatenate([depth, np.full(n - len(depth), np.nan, np.float32)]))
    return np.concatenate(parts).astype(np.float32)
