"""npe2 readers: NIfTI volumes and MINE results stores, as napari layer tuples.

Both readers give every layer its voxel grid's placement in world millimetres (``scale`` and ``translate``
from the affine), so that layers from different files line up and a click resolves to the right voxel
through ``layer.world_to_data``. Layers read from a results store carry
``metadata["napari_mine"] = {"store": path, "role": ...}``: the dock widgets find the store through the
layers (the shared state of the viewer), never through each other.

World axes of a results store: ``(image, x, y, z)``. Brain volumes are 3-D and fill the last three axes;
the stimulus stack is ``(image, 1, H, W, rgb)``: its first axis is the "stimulus" slider, its singleton
axis is stretched over the brain's whole x range (so it stays visible at every brain slice), and the image
plane sits beside the brain's (y, z) slice.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from napari_mine.errors import MineInputError

META = "napari_mine"
NIFTI_SUFFIXES = (".nii", ".nii.gz")
LABEL_TABLE_SUFFIXES = (".ctab", ".mgz.ctab", ".nii.ctab", ".nii.gz.ctab", "_labels.txt")
OBLIQUE_TOLERANCE = 1e-3
ACCURACY_COLORMAP = "inferno"
ANATOMY_OPACITY = 0.5  # a dimmed anatomy, so that the accuracy map and ROI outlines stand out on it
STIMULUS_GAP = 0.08  # gap between the brain slice and the stimulus, as a fraction of the brain's width


# ---- placement ---------------------------------------------------------------------------------------
def affine_placement(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """``scale``, ``translate`` and whether the affine is oblique, for a 4×4 voxel-to-world affine.

    An axis-aligned affine is represented exactly (its signed diagonal as scale, so flipped axes stay
    flipped). An oblique one (rotation or shear, or axes swapped) cannot be a napari scale: the voxel
    sizes (column norms) and the translation are used and the caller warns.
    """
    affine = np.asarray(affine, dtype=float)
    linear = affine[:3, :3]
    sizes = np.linalg.norm(linear, axis=0)
    off_diagonal = linear - np.diag(np.diag(linear))
    oblique = bool(np.abs(off_diagonal).max() > OBLIQUE_TOLERANCE * sizes.max())
    scale = sizes if oblique else np.diag(linear).copy()
    return scale, affine[:3, 3].copy(), oblique


# ---- NIfTI --------------------------------------------------------------------------------------------
def get_nifti_reader(path):
    """npe2 reader hook: a reader for one ``.nii``/``.nii.gz`` path, else None."""
    if isinstance(path, list):
        if not path or not all(_is_nifti(p) for p in path):
            return None
        return _read_nifti_paths
    return _read_nifti_paths if _is_nifti(path) else None


def _is_nifti(path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _read_nifti_paths(path) -> list[tuple]:
    paths = path if isinstance(path, list) else [path]
    return [layer for p in paths for layer in read_nifti(p)]


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def find_label_table(path: str | Path) -> Path | None:
    """The label table beside a volume (``<stem>.ctab``, ``<stem>.mgz.ctab``, ``<stem>_labels.txt``, …) or None.

    Tables hold lines ``k name [r g b a]`` (FreeSurfer's colour-table format, as NSD ships them).
    """
    path = Path(path)
    stem = _stem(path)
    for suffix in LABEL_TABLE_SUFFIXES:
        candidate = path.with_name(stem + suffix)
        if candidate.is_file():
            return candidate
    return None


def read_nifti(path: str | Path) -> list[tuple]:
    """Read one NIfTI file as one layer tuple.

    3-D volumes become an Image layer, or a Labels layer when the volume holds integers and a label table
    lies beside it. A 4-D volume becomes one Image layer whose first axis is the volume index (read one
    volume at a time, lazily). Higher dimensions are refused.
    """
    from napari.utils.notifications import show_warning

    from napari_mine.data.dataset import open_nifti, read_label_table, reading

    path = Path(path)
    image = open_nifti(path, keep_open=True)  # a 4-D series is then read volume by volume from one handle
    shape = image.shape
    scale, translate, oblique = affine_placement(image.affine)
    if oblique:
        show_warning(
            f"{path.name} has an oblique affine; it is shown with its voxel sizes {np.round(scale, 3).tolist()} "
            "and without its rotation, so its world coordinates are approximate."
        )
    name = _stem(path)
    metadata = {"affine": np.asarray(image.affine).tolist(), "path": str(path)}
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) == 3:
        with reading(path):
            volume = np.asanyarray(image.dataobj)
        volume = volume.reshape(shape)
        table = find_label_table(path)
        labels = read_label_table(table) if table is not None else {}
        if labels and _is_integral(volume):
            data = np.where(volume > 0, np.rint(volume), 0).astype(np.int32)
            kwargs = {"name": name, "scale": scale, "translate": translate, "metadata": metadata,
                      "features": _label_features(labels)}
            return [(data, kwargs, "labels")]
        kwargs = {"name": name, "scale": scale, "translate": translate, "metadata": metadata}
        return [(volume, kwargs, "image")]
    if len(shape) == 4:
        data = _lazy_volumes(image, path)
        step = float(image.header.get_zooms()[3]) if len(image.header.get_zooms()) > 3 else 1.0
        kwargs = {
            "name": name,
            "scale": np.concatenate([[step if step > 0 else 1.0], scale]),
            "translate": np.concatenate([[0.0], translate]),
            "metadata": metadata,
            "axis_labels": ("volume", "x", "y", "z"),
        }
        return [(data, kwargs, "image")]
    raise MineInputError(
        f"{path.name} has {len(shape)} dimensions {shape}; napari-mine reads 3-D volumes and 4-D series only, "
        "split it into 3-D or 4-D files first."
    )


def _is_integral(volume: np.ndarray) -> bool:
    if np.issubdtype(volume.dtype, np.integer):
        return True
    finite = volume[np.isfinite(volume)]
    return bool(finite.size) and bool(np.all(finite == np.rint(finite)))


def _label_features(labels: dict[int, str]) -> dict:
    """A features table napari shows in the status bar when hovering a label (row = label value)."""
    index = [0] + sorted(labels)
    return {"index": index, "name": ["none"] + [labels[k] for k in sorted(labels)]}


def _lazy_volumes(image, path: Path):
    """A dask array ``(n_volumes, X, Y, Z)`` reading one volume of a 4-D NIfTI per chunk."""
    import dask.array as da

    from napari_mine.data.dataset import reading

    n_volumes = image.shape[3]
    with reading(path):
        first = np.asarray(image.dataobj[..., 0])

    def read_block(block_info=None):
        index = block_info[None]["chunk-location"][0]
        with reading(path):
            return np.asarray(image.dataobj[..., index], dtype=first.dtype)[None]

    chunks = ((1,) * n_volumes,) + tuple((size,) for size in image.shape[:3])
    return da.map_blocks(read_block, chunks=chunks, dtype=first.dtype, meta=np.empty((0, 0, 0, 0), first.dtype))


# ---- results store ------------------------------------------------------------------------------------
def get_store_reader(path):
    """npe2 reader hook: a reader for a MINE results folder (one holding a napari-mine manifest.json) or a study
    of several subjects (a folder holding study.json)."""
    from napari_mine.study import STUDY_MANIFEST

    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    path = Path(path)
    if path.name in ("manifest.json", STUDY_MANIFEST):
        path = path.parent
    if (path / STUDY_MANIFEST).is_file():
        return _read_study_path
    if not (path / "manifest.json").is_file():
        return None
    return _read_store_path


def _read_store_path(path) -> list[tuple]:
    path = Path(path[0] if isinstance(path, list) else path)
    return read_store(path.parent if path.name == "manifest.json" else path)


def _read_study_path(path) -> list[tuple]:
    from napari_mine.study import STUDY_MANIFEST

    path = Path(path[0] if isinstance(path, list) else path)
    return read_study(path.parent if path.name == STUDY_MANIFEST else path)


def read_study(path: str | Path, *, stimuli: bool = True) -> list[tuple]:
    """Layer tuples of every subject of a study, subject after subject: each subject's :func:`read_store` layers,
    named ``subj01 · …``, their metadata naming the subject's store, the study and the subject.

    Each subject keeps its own stimulus stack: a subject's rows are its own images, and a grid cell per subject
    (the docks turn napari's grid mode on for a study) then shows that subject's brain and stimuli together.
    """
    from napari_mine.study import Study

    study = Study.open(path)
    root = str(study.root.resolve())
    layers = []
    for subject in study.subjects:
        folder = study.manifest.subjects[subject]
        for data, kwargs, kind in read_store(study.subject_root(subject), stimuli=stimuli):
            metadata = {**kwargs["metadata"], META: {**kwargs["metadata"][META], "study": root, "subject": subject}}
            layers.append((data, {**kwargs, "name": f"{folder} · {kwargs['name']}", "metadata": metadata}, kind))
    return layers


def layer_metadata(store_root, role: str, **extra) -> dict:
    """The metadata by which widgets recognise a layer of a results store and its role in it."""
    return {META: {"store": str(Path(store_root).resolve()), "role": role, **extra}}


def read_store(path: str | Path, *, stimuli: bool = True) -> list[tuple]:
    """Layer tuples of a results store: anatomy, accuracy map, ROI outlines and the stimulus stack.

    The accuracy map (noise-ceiling-normalised r of the held-out images) is drawn over the anatomy and
    only inside the mask; ROI volumes are Labels drawn as outlines; the stimuli are read lazily, one image
    per chunk, through the dataset named in the manifest.
    """
    from napari.utils.notifications import show_warning

    from napari_mine.results import open_results

    results = open_results(path)
    results.require("brain", "run `napari-mine features` on a dataset first.")
    space = results.space
    if space.kind == "surface":
        return surface_layers(results, stimuli=stimuli)
    scale, translate, oblique = affine_placement(space.affine)
    if oblique:
        show_warning(f"{results.root.name}: the brain grid is oblique; it is shown with its voxel sizes only.")
    place = {"scale": scale, "translate": translate}
    layers = []
    anatomy = results.anatomy()
    if anatomy is not None:
        low, high = np.percentile(anatomy[np.isfinite(anatomy)], [1, 99.5]) if anatomy.size else (0, 1)
        layers.append((anatomy, {"name": "anatomy", **place, "colormap": "gray", "opacity": ANATOMY_OPACITY,
                                 "contrast_limits": (float(low), float(max(high, low + 1e-6))),
                                 "metadata": layer_metadata(results.root, "anatomy")}, "image"))
    if results.has("encoder"):
        volume = space.unmask(results.accuracy["normalized_r"]).astype(np.float32)
        layers.append((volume, {
            "name": "accuracy (r / noise ceiling)", **place, "colormap": ACCURACY_COLORMAP,
            "contrast_limits": (0.0, 1.0), "blending": "translucent", "opacity": 0.8,
            "metadata": layer_metadata(results.root, "accuracy"),
        }, "image"))
    else:
        layers.append((space.mask.astype(np.uint8), {
            "name": "brain mask", **place, "colormap": "cyan", "contrast_limits": (0, 1), "blending": "additive",
            "opacity": 0.4, "metadata": layer_metadata(results.root, "mask"),
        }, "image"))
    for name, (volume, labels) in space.rois.items():
        data = np.where(volume > 0, volume, 0).astype(np.int32)
        layers.append((data, {
            "name": f"ROI {name}", **place, "opacity": 0.5,
            "visible": name.startswith("floc-"),
            "features": _label_features(labels),
            "metadata": layer_metadata(results.root, "roi", roi=name, labels={str(k): v for k, v in labels.items()}),
        }, "labels"))
    if stimuli:
        try:
            images = results.images
        except MineInputError as error:
            show_warning(f"The stimuli of {results.root.name} are not shown: {error}")
        else:
            layers.append(stimulus_layer(images, results.root, space.mask.shape, scale, translate))
    return layers


def stimuli_beside_brain(space, images, store_root) -> tuple:
    """The stimulus layer of a store's space: beside the volume's grid, or beside the cortex in every view."""
    if space.kind == "surface":  # a thin slab at the flat map's plane: an image plane in 3-D, drawn in 2-D
        low, high = cortex_bounds(space.layout)
        low[0], high[0] = -STIMULUS_SLAB_MM / 2, STIMULUS_SLAB_MM / 2
        return stimulus_layer(images, store_root, (1, 1, 1), high - low, (low + high) / 2)
    scale, translate, _ = affine_placement(space.affine)
    return stimulus_layer(images, store_root, space.mask.shape, scale, translate)


class StimulusStack:
    """The stimulus images as a lazy ``(image, 1, H, W, 3)`` uint8 array: indexing reads only the images it
    names (one for a slider position). A plain array-like rather than a dask array: dask's graph and scheduler
    cost several times the ~1 ms that reading one image takes, on every slider step."""

    def __init__(self, images, image_shape):
        self.images = images
        self.shape = (len(images), 1, *image_shape, 3)
        self.dtype = np.dtype(np.uint8)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"StimulusStack({self.images!r}, shape={self.shape})"

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            at = next(i for i, k in enumerate(key) if k is Ellipsis)
            key = key[:at] + (slice(None),) * (self.ndim - len(key) + 1) + key[at + 1:]
        first, rest = (key[0], key[1:]) if key else (slice(None), ())
        if isinstance(first, (int, np.integer)):
            row = int(first) + (self.shape[0] if first < 0 else 0)
            if not 0 <= row < self.shape[0]:
                raise IndexError(f"image {first} out of range for {self.shape[0]} images")
            return self._read(row)[None][(0,) + rest]
        rows = np.arange(self.shape[0])[first]
        stack = np.stack([self._read(int(r)) for r in rows]) if rows.size else np.empty((0,) + self.shape[1:], np.uint8)
        return stack[(slice(None),) + rest]

    def _read(self, row: int) -> np.ndarray:
        return np.asarray(self.images[row], dtype=np.uint8)[None]

    def __array__(self, dtype=None, copy=None):
        array = self[:]
        return array if dtype is None else array.astype(dtype)


def stimulus_layer(images, store_root, brain_shape, scale, translate) -> tuple:
    """The stimulus stack as a lazy ``(image, 1, H, W, 3)`` Image layer placed beside the brain slice."""
    first = images[0]
    height, width = first.shape[:2]
    n_images = len(images)
    data = StimulusStack(images, (height, width))
    stim_scale, stim_translate = stimulus_placement(brain_shape, scale, translate, (height, width))
    return (data, {
        "name": "stimuli", "rgb": True, "scale": stim_scale, "translate": stim_translate,
        "axis_labels": ("image", "x", "y", "z"),
        "metadata": layer_metadata(store_root, "stimuli", n_images=n_images, image_shape=[height, width]),
    }, "image")


def stimulus_placement(brain_shape, scale, translate, image_shape) -> tuple[np.ndarray, np.ndarray]:
    """``scale`` and ``translate`` of a ``(image, 1, H, W)`` stack shown beside the brain's (y, z) slice.

    The image is as tall as the brain's y extent and starts a small gap after the brain's z extent. Its
    singleton axis spans the brain's x range, so it is drawn at every x slice.
    """
    scale = np.asarray(scale, dtype=float)
    translate = np.asarray(translate, dtype=float)
    first_edge = translate - 0.5 * scale
    last_edge = translate + (np.asarray(brain_shape) - 0.5) * scale
    low, high = np.minimum(first_edge, last_edge), np.maximum(first_edge, last_edge)
    extent = high - low
    pixel = extent[1] / image_shape[0]
    x_centre = 0.5 * (low[0] + high[0])
    stim_scale = np.array([1.0, extent[0], pixel, pixel])
    stim_translate = np.array([0.0, x_centre, low[1] + 0.5 * pixel, high[2] + STIMULUS_GAP * extent[2] + 0.5 * pixel])
    return stim_scale, stim_translate


# ---- cortical surfaces --------------------------------------------------------------------------------
# A surface store is drawn as Surface layers per hemisphere that share one mesh per view: the sulcal depth as a
# grey background over every face, and each map (accuracy, ROI labels, clusters, Δ) over the faces whose corners
# it covers, so the background shows through elsewhere. Layer coordinates are display coordinates: the 3-D views
# put (superior, anterior, right) on the layer axes (0, -1, 2) (napari's default 3-D camera then looks down on
# both hemispheres, anterior up), the flat view the map's (x, y) on axes (2, -1) at axis 0 = 0 (napari's 2-D
# view), and the inflated and flat hemispheres are set side by side.
SURFACE_VIEWS = ("flat", "inflated", "pial")
DEFAULT_SURFACE_VIEW = "flat"  # napari opens in 2-D, where the flat map is what shows the whole cortex
HEMISPHERE_GAP_MM = 12.0
SIDE_BY_SIDE = ("flat", "inflated")  # views whose hemispheres overlap in their own coordinates
SULCAL_COLORMAP = "gray_r"  # sulci (positive depth) dark, gyri light
STIMULUS_SLAB_MM = 1.0  # the stimulus stack's depth beside the cortex


def surface_meta(layout, hemi: str, view: str, shown: np.ndarray) -> dict:
    """What a surface layer's napari-mine metadata adds: its hemisphere, view, layout and drawn vertices."""
    return {"hemi": hemi, "view": view, "surface": layout.to_dict(), "shown": np.asarray(shown, dtype=bool)}


@lru_cache(maxsize=16)
def display_mesh(hemi: str, view: str, mesh: str, n_vertices: int, freesurfer_dir: str | None = None):
    """The mesh hemisphere ``hemi`` is drawn with in ``view``, in display coordinates (see above).

    ``mesh`` and ``n_vertices`` are the data's fsaverage resolution and vertices per hemisphere; a finer mesh
    than the data cannot carry its values, so nilearn's fsaverage5 draws it then (its vertices come first).
    """
    from napari_mine.surfaces import HEMISPHERES, Mesh, fsaverage_mesh

    source = fsaverage_mesh(hemi, view, freesurfer_dir)
    if source.n_vertices > n_vertices and freesurfer_dir is not None:
        source = fsaverage_mesh(hemi, view)
    if source.n_vertices > n_vertices:
        raise MineInputError(f"{mesh} data have {n_vertices:,} vertices per hemisphere, fewer than the "
                             f"{source.n_vertices:,} of the coarsest mesh at hand; give data on fsaverage5 or finer.")
    vertices = _display_axes(source.vertices, view)
    if view in SIDE_BY_SIDE and hemi in HEMISPHERES:
        other = _display_axes(fsaverage_mesh("rh" if hemi == "lh" else "lh", view, freesurfer_dir).vertices, view)
        left, right = (vertices, other) if hemi == "lh" else (other, vertices)
        shift = -HEMISPHERE_GAP_MM / 2 - left[:, 2].max() if hemi == "lh" else HEMISPHERE_GAP_MM / 2 - right[:, 2].min()
        vertices = vertices + np.array([0.0, 0.0, shift], dtype=np.float32)
    vertices.flags.writeable = False
    return Mesh(vertices, source.faces)


def _display_axes(vertices: np.ndarray, view: str) -> np.ndarray:
    """RAS millimetres (x, y, z) as layer axes: (z, -y, x) in 3-D; the flat map's (x, y) as (0, -y, x)."""
    x, y, z = vertices.T
    depth = np.zeros_like(x) if view == "flat" else z
    return np.column_stack([depth, -y, x]).astype(np.float32)


def surface_layer_data(mesh, values: np.ndarray, shown: np.ndarray) -> tuple:
    """``(vertices, faces, values)`` of a Surface layer: the faces whose three corners are ``shown``."""
    shown = np.asarray(shown, dtype=bool)[: mesh.n_vertices]
    faces = mesh.faces[shown[mesh.faces].all(axis=1)]
    values = np.where(shown, np.nan_to_num(np.asarray(values, dtype=np.float32)[..., : mesh.n_vertices]), 0)
    return mesh.vertices, faces, values.astype(np.float32)


def hemisphere_values(space, values: np.ndarray, fill=np.nan) -> dict[str, np.ndarray]:
    """Per-target values as {hemisphere: values over its vertices} (``fill`` off the mask)."""
    return space.per_hemisphere(space.unmask(values, fill))


def label_colormap_for(n_labels: int):
    """A colormap drawing integer vertex values 0..n_labels with the label colours of napari's Labels layers
    (the volume's ROI colours), over contrast limits (-0.5, n_labels + 0.5)."""
    from napari.utils.colormaps import Colormap, label_colormap

    colors = label_colormap().map(np.arange(n_labels + 1))
    return Colormap(colors, controls=np.linspace(0.0, 1.0, n_labels + 2), interpolation="zero",
                    name=f"mine-labels-{n_labels}", display_name="ROI labels")


def surface_layers(results, *, stimuli: bool = True, view: str = DEFAULT_SURFACE_VIEW) -> list[tuple]:
    """Layer tuples of a surface store per hemisphere: sulcal depth, accuracy (or the mask), ROI labels; then the
    stimulus stack beside the cortex."""
    from napari.utils.notifications import show_warning

    from napari_mine.surfaces import sulcal_depth

    space = results.space
    layout = space.layout
    meshes = {hemi: display_mesh(hemi, view, layout.mesh, count, layout.freesurfer_dir)
              for hemi, count in layout.hemispheres.items()}
    anatomy = results.anatomy()
    if anatomy is not None and anatomy.shape == space.mask.shape:
        depth = space.per_hemisphere(anatomy)
    else:
        depth = {hemi: sulcal_depth(hemi, layout.freesurfer_dir) for hemi in layout.hemispheres}
    masks = space.per_hemisphere(space.mask)
    layers = []

    def add(hemi, role, name, values, shown, style, **extra):
        data = surface_layer_data(meshes[hemi], values, shown)
        if len(data[1]):
            meta = layer_metadata(results.root, role, **surface_meta(layout, hemi, view, shown[: len(data[0])]),
                                  **extra)
            layers.append((data, {"name": f"{hemi} {name}", "shading": "smooth", "metadata": meta, **style}, "surface"))

    for hemi, values in depth.items():
        values = np.asarray(values, dtype=np.float32)
        limit = 1.5 * float(np.nanpercentile(np.abs(values), 98)) or 1.0
        add(hemi, "anatomy", "sulcal depth", values, np.ones(len(values), bool),
            {"colormap": SULCAL_COLORMAP, "contrast_limits": (-limit, limit)})
    if results.has("encoder"):
        accuracy = hemisphere_values(space, results.accuracy["normalized_r"])
        for hemi in layout.hemispheres:
            add(hemi, "accuracy", "accuracy (r / noise ceiling)", accuracy[hemi], masks[hemi],
                {"colormap": ACCURACY_COLORMAP, "contrast_limits": (0.0, 1.0), "opacity": 0.9})
    else:
        for hemi in layout.hemispheres:
            add(hemi, "mask", "brain mask", masks[hemi].astype(np.float32), masks[hemi],
                {"colormap": "cyan", "contrast_limits": (0.0, 1.0), "opacity": 0.4})
    for name, (volume, labels) in space.rois.items():
        values = space.per_hemisphere(np.where(np.asarray(volume) > 0, volume, 0))
        n_labels = max(max(labels, default=0), int(np.max(volume, initial=0)))
        for hemi in layout.hemispheres:
            add(hemi, "roi", f"ROI {name}", values[hemi], values[hemi] > 0,
                {"colormap": label_colormap_for(n_labels), "contrast_limits": (-0.5, n_labels + 0.5),
                 "opacity": 0.5, "visible": name.startswith("floc-")},
                roi=name, labels={str(k): v for k, v in labels.items()})
    if stimuli:
        try:
            images = results.images
        except MineInputError as error:
            show_warning(f"The stimuli of {results.root.name} are not shown: {error}")
        else:
            layers.append(stimuli_beside_brain(space, images, results.root))
    return layers


def cortex_bounds(layout) -> tuple[np.ndarray, np.ndarray]:
    """The display coordinates' low and high corners over both hemispheres and every view (the stimuli are set
    beside them, clear of the cortex in any view)."""
    corners = [fn(display_mesh(hemi, view, layout.mesh, count, layout.freesurfer_dir).vertices, axis=0)
               for hemi, count in layout.hemispheres.items() for view in SURFACE_VIEWS for fn in (np.min, np.max)]
    return np.min(corners, axis=0), np.max(corners, axis=0)


def projected_layers(results, *, view: str = "inflated") -> list[tuple]:
    """Volume results of an NSD subject carried onto fsaverage (:meth:`Results.on_fsaverage`): per hemisphere
    the sulcal depth, the accuracy and, when profiled, the ROI sub-populations and each voxel's top concept (a
    label per concept), as Surface layers (role
    "projected": a view of the volume's maps, not targets to click)."""
    from napari_mine.surfaces import sulcal_depth

    layout = results.fsaverage_projection().layout
    accuracy = results.on_fsaverage(results.accuracy["normalized_r"])
    maps = [("accuracy on fsaverage", accuracy, np.isfinite(accuracy),
             {"colormap": ACCURACY_COLORMAP, "contrast_limits": (0.0, 1.0), "opacity": 0.9})]
    if results.has("profiles"):
        from napari_mine.export import target_map

        for name, title in (("clusters", "ROI sub-populations"), ("top-concept", "top concept")):
            item = target_map(results, name)
            labels = results.on_fsaverage(item.values, labels=True)
            maps.append((f"{title} on fsaverage", labels.astype(np.float32), labels > 0,
                         {"colormap": label_colormap_for(len(item.labels)),
                          "contrast_limits": (-0.5, len(item.labels) + 0.5), "opacity": 0.8, "visible": False}))
    layers, start = [], 0
    for hemi, count in layout.hemispheres.items():
        mesh = display_mesh(hemi, view, layout.mesh, count, layout.freesurfer_dir)
        depth = sulcal_depth(hemi, layout.freesurfer_dir)[:count]
        limit = 1.5 * float(np.nanpercentile(np.abs(depth), 98)) or 1.0
        hemi_maps = [("sulcal depth", depth, np.ones(count, bool), {"colormap": SULCAL_COLORMAP,
                                                                    "contrast_limits": (-limit, limit)})]
        hemi_maps += [(name, sites[start:start + count], shown[start:start + count], style)
                      for name, sites, shown, style in maps]
        for name, values, shown, style in hemi_maps:
            data = surface_layer_data(mesh, values, shown)
            meta = layer_metadata(results.root, "projected", **surface_meta(layout, hemi, view, shown[: len(data[0])]))
            layers.append((data, {"name": f"{hemi} {name}", "shading": "smooth", "metadata": meta, **style}, "surface"))
        start += count
    return layers
