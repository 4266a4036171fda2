"""Cortical meshes (DESIGN.md §4, §9): fsaverage hemispheres to draw surface results on.

fsaverage is an icosahedral mesh: fsaverage5's 10,242 vertices are the first 10,242 of fsaverage6 and of
fsaverage (fsaverage7), so data on a finer fsaverage can be drawn, decimated, on the coarser mesh by taking its
first vertices. nilearn's wheel ships fsaverage5 (pial, white, inflated, sphere, flat, sulcal depth) offline; a
FreeSurfer ``fsaverage`` subject folder (NSD ships one under ``nsddata/freesurfer/fsaverage``) gives the full
resolution. No mesh is ever downloaded.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from napari_mine.errors import MineInputError

HEMISPHERES = ("lh", "rh")
RESOLUTIONS = {"fsaverage3": 642, "fsaverage4": 2562, "fsaverage5": 10242, "fsaverage6": 40962,
               "fsaverage": 163842}
VIEWS = ("inflated", "flat", "pial", "white", "sphere")
_NILEARN_NAMES = {"inflated": "infl", "flat": "flat", "pial": "pial", "white": "white", "sphere": "sphere"}
_NILEARN_SIDE = {"lh": "left", "rh": "right"}
_FREESURFER_FLAT = "{hemi}.full.flat.patch.3d"


@dataclass(frozen=True)
class Mesh:
    """Vertex coordinates (n, 3) in mm and triangles (m, 3) as vertex indices."""

    vertices: np.ndarray
    faces: np.ndarray

    @property
    def n_vertices(self) -> int:
        return len(self.vertices)


def resolution_of(n_vertices: int, where: str) -> str:
    """The fsaverage resolution with ``n_vertices`` per hemisphere, refused with the sizes that exist."""
    for name, count in RESOLUTIONS.items():
        if count == n_vertices:
            return name
    sizes = ", ".join(f"{name} {count:,}" for name, count in RESOLUTIONS.items())
    raise MineInputError(f"{where} has {n_vertices:,} vertices per hemisphere, which fits no fsaverage mesh ({sizes}); "
                         "give data on fsaverage, or a mesh with as many vertices.")


def nilearn_fsaverage5() -> Path:
    """The folder of fsaverage5 meshes inside nilearn's wheel."""
    import nilearn

    folder = Path(nilearn.__file__).parent / "datasets" / "data" / "fsaverage5"
    if not folder.is_dir():
        raise MineInputError(f"nilearn {nilearn.__version__} ships no fsaverage5 meshes at {folder}; install "
                             "nilearn>=0.11 or give a FreeSurfer fsaverage folder.")
    return folder


@lru_cache(maxsize=4)
def fsaverage_mesh(hemi: str, view: str, freesurfer_dir: str | None = None) -> Mesh:
    """One hemisphere's mesh in one view, from a FreeSurfer ``fsaverage`` folder when given, else nilearn's.

    The flat view is the medial-wall-cut patch flattened to the plane (z = 0); its faces leave the cut out.
    """
    if hemi not in HEMISPHERES or view not in VIEWS:
        raise MineInputError(f"no mesh {hemi}.{view}; hemispheres are {HEMISPHERES}, views {VIEWS}.")
    if freesurfer_dir is not None:
        return _freesurfer_mesh(Path(freesurfer_dir), hemi, view)
    import nibabel as nib

    image = nib.load(nilearn_fsaverage5() / f"{_NILEARN_NAMES[view]}_{_NILEARN_SIDE[hemi]}.gii.gz")
    vertices = np.asarray(image.darrays[0].data, dtype=np.float32)
    if view == "flat":
        vertices = np.column_stack([vertices[:, :2], np.zeros(len(vertices), np.float32)])
    return Mesh(vertices, np.asarray(image.darrays[1].data, dtype=np.int32))


@lru_cache(maxsize=4)
def sulcal_depth(hemi: str, freesurfer_dir: str | None = None) -> np.ndarray:
    """Per-vertex sulcal depth (the shading under surface maps)."""
    import nibabel as nib

    if freesurfer_dir is not None:
        path = Path(freesurfer_dir) / "surf" / f"{hemi}.sulc"
        if path.is_file():
            return np.asarray(nib.freesurfer.read_morph_data(str(path)), dtype=np.float32)
    image = nib.load(nilearn_fsaverage5() / f"sulc_{_NILEARN_SIDE[hemi]}.gii.gz")
    return np.asarray(image.darrays[0].data, dtype=np.float32)


def _freesurfer_mesh(folder: Path, hemi: str, view: str) -> Mesh:
    import nibabel as nib

    surf = folder / "surf"
    if view == "flat":
        sphere = _freesurfer_mesh(folder, hemi, "sphere")
        path = surf / _FREESURFER_FLAT.format(hemi=hemi)
        if not path.is_file():
            warnings.warn(f"{path} is missing: the flat view uses nilearn's fsaverage5 flat map.", stacklevel=2)
            return fsaverage_mesh(hemi, "flat")
        return _flat_patch(path, sphere)
    path = surf / f"{hemi}.{view}"
    if not path.is_file():
        raise MineInputError(f"{path} is missing; give a FreeSurfer fsaverage folder with surf/{hemi}.{view}.")
    vertices, faces = nib.freesurfer.read_geometry(str(path))
    return Mesh(np.asarray(vertices, np.float32), np.asarray(faces, np.int32))


def _flat_patch(path: Path, sphere: Mesh) -> Mesh:
    """A FreeSurfer flat patch (binary ``.patch.3d``): the faces of the sphere whose vertices are all in it."""
    with open(path, "rb") as handle:
        header = np.fromfile(handle, ">i4", 2)
        records = np.fromfile(handle, np.dtype([("vertex", ">i4"), ("xyz", ">f4", 3)]), int(header[1]))
    vertices = np.zeros((sphere.n_vertices, 3), np.float32)
    inside = np.zeros(sphere.n_vertices, bool)
    index = np.abs(records["vertex"]) - 1
    vertices[index, :2] = records["xyz"][:, :2]
    inside[index] = True
    return Mesh(vertices, sphere.faces[inside[sphere.faces].all(axis=1)])


def subdivide(mesh: Mesh, levels: int = 1) -> Mesh:
    """Split every triangle into four at its edge midpoints, ``levels`` times (10,242 → 40,962 → 163,842 vertices).

    The icosahedral refinement that makes fsaverage6/7 from fsaverage5, with the new vertices at midpoints of the
    coarse mesh: a stand-in of fsaverage's size for benchmarks, not its anatomy.
    """
    vertices, faces = mesh.vertices, mesh.faces
    for _ in range(levels):
        edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
        unique, inverse = np.unique(edges, axis=0, return_inverse=True)
        midpoints = (vertices[unique[:, 0]] + vertices[unique[:, 1]]) / 2
        middle = (len(vertices) + inverse.ravel()).reshape(3, -1).T  # middle of edges 01, 12, 20 of each face
        a, b, c = faces.T
        ab, bc, ca = middle.T
        faces = np.concatenate([np.column_stack(t) for t in ((a, ab, ca), (ab, b, bc), (ca, bc, c), (ab, bc, ca))])
        vertices = np.concatenate([vertices, midpoints.astype(vertices.dtype)])
    return Mesh(vertices, faces.astype(np.int32))
