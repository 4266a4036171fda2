"""Volume → fsaverage (issue 10, DESIGN.md §4): NSD's own transforms, sampled with scipy.

NSD ties a subject's 1.8 mm volume to fsaverage in two files per hemisphere: ``func1pt8-to-layerB{1,2,3}.mgz``
gives, for every vertex of the subject's native surface at three cortical depths, the 1-based decimal voxel
coordinates in the functional grid (9999 where invalid), and ``white-to-fsaverage.mgz`` gives, for every
fsaverage vertex, the 1-based native vertex it takes its value from. A map is sampled at each depth
(trilinear for continuous values, nearest voxel for labels), averaged over the depths (the most frequent label
for labels), then carried to fsaverage. nsdcode does the same; it is not a dependency because its release breaks on
current NumPy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_mine.errors import MineInputError
from napari_mine.spaces import SurfaceLayout

DEPTHS = ("layerB1", "layerB2", "layerB3")
INVALID = 9999


@dataclass(frozen=True)
class HemisphereTransform:
    """One hemisphere's depth coordinates (depths, native vertices, 3; 0-based, NaN invalid) and fsaverage map."""

    coordinates: np.ndarray
    native_of_fsaverage: np.ndarray  # 0-based native vertex per fsaverage vertex


@dataclass(frozen=True)
class FsaverageProjection:
    """Carries volume maps of one NSD subject's grid onto fsaverage, both hemispheres."""

    grid: tuple[int, int, int]
    hemispheres: dict[str, HemisphereTransform]
    folder: Path

    @property
    def layout(self) -> SurfaceLayout:
        from napari_mine.surfaces import resolution_of

        counts = {hemi: len(t.native_of_fsaverage) for hemi, t in self.hemispheres.items()}
        return SurfaceLayout(resolution_of(next(iter(counts.values())), str(self.folder)), counts)

    def voxel_of(self, hemi: str, vertex: int) -> tuple[int, int, int] | None:
        """The voxel an fsaverage vertex samples at the middle depth (what a click on a projected map inspects)."""
        transform = self.hemispheres[hemi]
        if not 0 <= vertex < len(transform.native_of_fsaverage):
            return None
        point = transform.coordinates[1, transform.native_of_fsaverage[vertex]]
        return tuple(int(v) for v in np.rint(point)) if np.isfinite(point).all() else None

    def project(self, volume: np.ndarray, labels: bool = False) -> np.ndarray:
        """A volume on the subject's grid → values on every fsaverage vertex (lh then rh), NaN (or 0) off the map."""
        volume = np.asarray(volume)
        if volume.shape[:3] != self.grid:
            raise MineInputError(f"a map of grid {volume.shape[:3]} cannot be projected with the transforms in "
                                 f"{self.folder}, made for the grid {self.grid}; give a map of that subject.")
        return np.concatenate([self._project_hemisphere(volume, t, labels) for t in self.hemispheres.values()])

    @staticmethod
    def _project_hemisphere(volume, transform: HemisphereTransform, labels: bool) -> np.ndarray:
        from scipy.ndimage import map_coordinates

        valid = np.isfinite(transform.coordinates).all(axis=-1)  # (depths, native vertices)
        coordinates = np.where(valid[..., None], transform.coordinates, 0.0)
        if labels:
            samples = np.stack([map_coordinates(volume, depth.T, order=0, mode="nearest") for depth in coordinates])
            native = _most_frequent(np.where(valid, samples, 0).astype(np.int64))
            return native[transform.native_of_fsaverage].astype(np.int32)
        # Trilinear over the finite voxels only: interpolate the values and their finite-ness, then divide, so a
        # vertex beside the map's mask is not pulled towards 0.
        finite = np.isfinite(volume)
        values, weights = (np.stack([map_coordinates(array, depth.T, order=1, mode="nearest") for depth in coordinates])
                           for array in (np.where(finite, volume, 0.0).astype(np.float64), finite.astype(np.float64)))
        inside = valid & (weights > 0.5)
        sums = np.where(inside, values / np.where(inside, weights, 1.0), 0.0).sum(axis=0)
        counts = inside.sum(axis=0)
        native = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        return native[transform.native_of_fsaverage].astype(np.float32)


def _most_frequent(samples: np.ndarray) -> np.ndarray:
    """Per native vertex, the most frequent label over the three depths (the middle depth's on a three-way tie)."""
    first, middle, last = samples
    return np.where(first == last, first, middle)


def nsd_projection(root, subject: int, grid: tuple[int, int, int]) -> FsaverageProjection:
    """The transforms of NSD subject ``subject`` under ``root``, checked against the results' volume grid."""
    import nibabel as nib

    from napari_mine.data.dataset import reading

    folder = Path(root) / "nsddata" / "ppdata" / f"subj{subject:02d}" / "transforms"
    hemispheres = {}
    for hemi in ("lh", "rh"):
        paths = [folder / f"{hemi}.func1pt8-to-{depth}.mgz" for depth in DEPTHS]
        to_fsaverage = folder / f"{hemi}.white-to-fsaverage.mgz"
        missing = [p.name for p in paths + [to_fsaverage] if not p.is_file()]
        if missing:
            raise MineInputError(f"{folder} lacks {', '.join(missing)}; the volume → fsaverage projection needs "
                                 "NSD's transforms of this subject (nsddata/ppdata/subjXX/transforms).")
        depths = []
        for path in paths:
            with reading(path):
                values = np.asarray(nib.load(str(path)).get_fdata(), dtype=np.float64).reshape(-1, 3)
            invalid = (values == INVALID).any(axis=1)
            values = values - 1.0
            values[invalid] = np.nan
            outside = ~invalid & ((values < -0.5) | (values > np.array(grid) - 0.5)).any(axis=1)
            if outside.any():
                raise MineInputError(f"{path} points at voxels outside the grid {grid} ({int(outside.sum())} "
                                     "vertices); it belongs to another subject or grid — use this subject's transforms.")
            depths.append(values)
        with reading(to_fsaverage):
            native = np.rint(np.asarray(nib.load(str(to_fsaverage)).get_fdata()).ravel()).astype(np.int64) - 1
        if native.min() < 0 or native.max() >= len(depths[0]):
            raise MineInputError(f"{to_fsaverage} names native vertices outside the {len(depths[0])} of "
                                 f"{paths[0].name}; give the transforms of one subject.")
        hemispheres[hemi] = HemisphereTransform(np.stack(depths), native)
    return FsaverageProjection(tuple(int(v) for v in grid), hemispheres, folder)
