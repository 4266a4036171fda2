"""Target spaces (DESIGN.md §9): what a target index means and where it lies.

A target is an index into a space. Everything downstream of the encoder (attribution, descriptions,
profiles, clusters, validation) sees target indices and per-target arrays only; a space knows where its
targets lie, which ROI labels they carry and how per-target values become something to draw. Both spaces are
a boolean ``mask`` over their sites with ROI label arrays of the same shape (targets are the mask's sites in
``np.flatnonzero`` order): a volume space's sites are the voxels of a grid with an affine, a surface space's
are the vertices of the left then the right hemisphere of an fsaverage mesh.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from napari_mine.errors import MineInputError


class _LabelledSites:
    """A mask over sites (voxels or vertices) with ROI label arrays over the same sites."""

    kind = ""

    def __init__(self, mask: np.ndarray, rois: Mapping[str, tuple[np.ndarray, dict[int, str]]]):
        self.mask = np.asarray(mask, dtype=bool)
        self.rois = dict(rois)
        self.columns = np.full(self.mask.shape, -1, dtype=np.int64)
        self.columns[self.mask] = np.arange(int(self.mask.sum()))
        self._flat = np.flatnonzero(self.mask)  # target -> flat site index (a click's lookup, O(1))
        self._labels: dict[str, np.ndarray] = {}

    @property
    def n_targets(self) -> int:
        return len(self._flat)

    def unmask(self, values, fill=np.nan) -> np.ndarray:
        """Per-target values (..., V) over all sites (a volume, or every vertex), ``fill`` outside the mask."""
        values = np.asarray(values)
        out = np.full(values.shape[:-1] + self.mask.shape, fill, dtype=np.result_type(values.dtype,
                                                                                       np.asarray(fill).dtype))
        out[..., self.mask] = values
        return out

    def roi_values(self, roi: str) -> np.ndarray:
        """The label value of every target in ROI volume ``roi`` (≤ 0 unlabelled)."""
        if roi not in self.rois:
            raise MineInputError(f"these results have no ROI volume {roi!r}; choose one of {sorted(self.rois)}.")
        if roi not in self._labels:
            self._labels[roi] = np.asarray(self.rois[roi][0])[self.mask]
        return self._labels[roi]

    def roi_names_of(self, target: int) -> tuple[str, ...]:
        """The labels of every ROI volume at a target, e.g. ("FFA-1", "nsdgeneral")."""
        names = []
        for roi, (_, labels) in self.rois.items():
            value = int(self.roi_values(roi)[target])
            if value > 0:
                names.append(labels.get(value, f"{roi}-{value}"))
        return tuple(names)

    def label_names(self, rois=None) -> np.ndarray:
        """The ROI label name of every target in one of ``rois`` (default: all), "" elsewhere."""
        names = np.full(self.n_targets, "", dtype=object)
        for roi in self.rois if rois is None else rois:
            if roi in self.rois:
                values = self.roi_values(roi)
                for value, name in self.rois[roi][1].items():
                    names[values == value] = name
        return names

    def roi_of_targets(self) -> np.ndarray:
        """One ROI label name per target across the ROI volumes (see :func:`joined_label_names`)."""
        return joined_label_names([self.label_names([roi]) for roi in self.rois], self.n_targets)

    def roi_file_of(self, names) -> np.ndarray:
        """The ROI volume (e.g. "floc-faces") each label name belongs to ("" for none)."""
        file_of = {name: roi for roi, (_, labels) in self.rois.items() for name in labels.values()}
        return np.array([file_of.get(name, "") for name in names], dtype=object)

    def present_labels(self) -> dict[str, dict[int, str]]:
        """Each ROI volume's labels that have targets, {roi: {value: name}} (volumes without any left out)."""
        found = {}
        for roi, (_, labels) in self.rois.items():
            present = set(np.unique(self.roi_values(roi)).tolist())
            kept = {k: v for k, v in sorted(labels.items()) if k in present}
            if kept:
                found[roi] = kept
        return found

    def label_value(self, roi: str, label: int | str) -> int:
        """The value of label ``label`` (a value or a name) in ROI volume ``roi``."""
        labels = self.rois[roi][1] if roi in self.rois else {}
        by_name = {name: value for value, name in labels.items()}
        value = by_name.get(label, label)
        if value not in labels:
            raise MineInputError(f"ROI {roi!r} has no label {label!r}; choose one of {sorted(labels.values())}.")
        return int(value)


class VolumeSpace(_LabelledSites):
    """Voxels of a mask on a grid with an affine: targets are the mask's voxels in ``np.flatnonzero`` order."""

    kind = "volume"

    def __init__(self, mask: np.ndarray, affine: np.ndarray, rois: Mapping[str, tuple[np.ndarray, dict[int, str]]]):
        super().__init__(mask, rois)
        self.affine = np.asarray(affine, dtype=float)

    def target_at(self, ijk) -> int | None:
        """The target at integer grid indices, or None outside the grid or the mask."""
        ijk = np.asarray(ijk, dtype=np.int64)
        if ijk.shape != (self.mask.ndim,) or np.any(ijk < 0) or np.any(ijk >= self.mask.shape):
            return None
        column = int(self.columns[tuple(ijk)])
        return column if column >= 0 else None

    def ijk_of(self, target: int) -> tuple[int, ...]:
        return tuple(int(v) for v in np.unravel_index(self._flat[target], self.mask.shape))

    def world_of(self, target: int) -> tuple[float, ...]:
        return tuple(float(v) for v in (self.affine @ np.append(self.ijk_of(target), 1.0))[:3])


@dataclass(frozen=True)
class SurfaceLayout:
    """Which fsaverage mesh a surface dataset lives on: its resolution, vertices per hemisphere, mesh folder."""

    mesh: str  # an fsaverage resolution, e.g. "fsaverage5" or "fsaverage"
    hemispheres: Mapping[str, int]  # {"lh": n, "rh": n}, the order of the sites
    freesurfer_dir: str | None = None  # a FreeSurfer fsaverage folder (else nilearn's fsaverage5 draws it)

    def to_dict(self) -> dict:
        return {"kind": "surface", "mesh": self.mesh, "hemispheres": dict(self.hemispheres),
                "freesurfer_dir": self.freesurfer_dir}

    @classmethod
    def parse(cls, record: Mapping) -> "SurfaceLayout":
        return cls(str(record["mesh"]), {str(k): int(v) for k, v in record["hemispheres"].items()},
                   record.get("freesurfer_dir"))

    @property
    def n_vertices(self) -> int:
        return sum(self.hemispheres.values())


class SurfaceSpace(_LabelledSites):
    """Vertices of the left then the right hemisphere of an fsaverage mesh, the medial wall and empty vertices out.

    A site is a vertex index over both hemispheres (``lh`` 0..n_lh-1, then ``rh``); targets are the sites of the
    mask. Drawing uses the layout's meshes; when only a coarser fsaverage mesh is at hand (nilearn's fsaverage5
    for data on fsaverage7), the first vertices of each hemisphere are drawn — fsaverage's icosahedral order
    makes them the same points.
    """

    kind = "surface"

    def __init__(self, mask: np.ndarray, rois: Mapping[str, tuple[np.ndarray, dict[int, str]]], layout: SurfaceLayout):
        super().__init__(mask, rois)
        if self.mask.shape != (layout.n_vertices,):
            raise MineInputError(f"a surface mask of shape {self.mask.shape} does not cover the "
                                 f"{layout.n_vertices} vertices of {layout.mesh}; recompute the features.")
        self.layout = layout
        self.affine = np.eye(4)  # a surface has no grid; maps written as volumes are not placed

    @property
    def hemispheres(self) -> dict[str, int]:
        return dict(self.layout.hemispheres)

    def offset(self, hemi: str) -> int:
        """The first site of hemisphere ``hemi``."""
        names = list(self.layout.hemispheres)
        return sum(self.layout.hemispheres[name] for name in names[: names.index(hemi)])

    def target_at(self, site) -> int | None:
        """The target at a site (a vertex over both hemispheres), or None off the mask."""
        site = int(np.asarray(site).ravel()[0]) if np.ndim(site) else int(site)
        if not 0 <= site < self.mask.size:
            return None
        column = int(self.columns[site])
        return column if column >= 0 else None

    def target_at_vertex(self, hemi: str, vertex: int) -> int | None:
        """The target at a vertex of one hemisphere (what a click on that hemisphere's mesh finds)."""
        if not 0 <= vertex < self.layout.hemispheres[hemi]:
            return None
        return self.target_at(self.offset(hemi) + vertex)

    def hemisphere_of(self, target: int) -> tuple[str, int]:
        """(hemisphere, vertex in it) of a target."""
        site = int(self._flat[target])
        for hemi, count in self.layout.hemispheres.items():
            if site < count:
                return hemi, site
            site -= count
        raise MineInputError(f"target {target} lies outside the {self.mask.size} vertices of this surface.")

    def ijk_of(self, target: int) -> tuple[int, ...]:
        """(hemisphere index 0 = lh / 1 = rh, vertex): a target's place in the surface's index."""
        hemi, vertex = self.hemisphere_of(target)
        return list(self.layout.hemispheres).index(hemi), vertex

    def world_of(self, target: int) -> tuple[float, ...]:
        """The vertex's position (mm) on the white surface when the layout's mesh has it, else on fsaverage5's."""
        hemi, vertex = self.hemisphere_of(target)
        mesh = self.mesh(hemi, "white")
        return tuple(float(v) for v in mesh.vertices[min(vertex, mesh.n_vertices - 1)])

    def mesh(self, hemi: str, view: str):
        """The mesh that draws hemisphere ``hemi`` in ``view`` (maybe coarser than the data: see the class)."""
        from napari_mine.surfaces import fsaverage_mesh

        return fsaverage_mesh(hemi, view, self.layout.freesurfer_dir)

    def per_hemisphere(self, values: np.ndarray) -> dict[str, np.ndarray]:
        """Values over all sites (the last axis), split into each hemisphere's vertices."""
        values = np.asarray(values)
        return {hemi: values[..., self.offset(hemi): self.offset(hemi) + count]
                for hemi, count in self.layout.hemispheres.items()}


def joined_label_names(per_volume, n_targets: int) -> np.ndarray:
    """One label name per target from several ROI volumes' names (each (n_targets,), "" unlabelled).

    Volumes that give every target the same name (such as the mask's own ``nsdgeneral``) are left out
    unless no other is left; a target in several gets the names joined by ``"+"`` (e.g. ``V1v+FFA-1``).
    """
    per_volume = [np.asarray(names).astype(object) for names in per_volume]
    per_volume = [names for names in per_volume if len(set(names)) > 1] or per_volume
    joined = np.full(n_targets, "", dtype=object)
    for names in per_volume:
        joined = np.where(joined == "", names, np.where(names == "", joined, joined + "+" + names))
    return joined.astype(str)
