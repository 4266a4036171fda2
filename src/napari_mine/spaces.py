"""Target spaces (DESIGN.md §9): what a target index means and where it lies.

A target is an index into a space. Everything downstream of the encoder (attribution, descriptions,
profiles, clusters, validation) sees target indices and per-target arrays only; a space knows where its
targets lie, which ROI labels they carry and how per-target values become something to draw. A volume space
is a mask on a grid with an affine; a surface space (the vertices of one or two hemispheres) is another
class with the same methods.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from napari_mine.errors import MineInputError


class VolumeSpace:
    """Voxels of a mask on a grid with an affine: targets are the mask's voxels in ``np.flatnonzero`` order."""

    kind = "volume"

    def __init__(self, mask: np.ndarray, affine: np.ndarray, rois: Mapping[str, tuple[np.ndarray, dict[int, str]]]):
        self.mask = np.asarray(mask, dtype=bool)
        self.affine = np.asarray(affine, dtype=float)
        self.rois = dict(rois)
        self.columns = np.full(self.mask.shape, -1, dtype=np.int64)
        self.columns[self.mask] = np.arange(int(self.mask.sum()))
        self._flat = np.flatnonzero(self.mask)  # target -> flat grid index (a click's lookup, O(1))
        self._labels: dict[str, np.ndarray] = {}

    @property
    def n_targets(self) -> int:
        return len(self._flat)

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

    def to_volume(self, values, fill=np.nan) -> np.ndarray:
        """Per-target values (V,) as a volume on the grid, ``fill`` outside the mask."""
        values = np.asarray(values)
        volume = np.full(self.mask.shape, fill, dtype=np.result_type(values.dtype, np.asarray(fill).dtype))
        volume[self.mask] = values
        return volume

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
        """One ROI label name per target across the ROI volumes (see ``data.dataset.joined_label_names``)."""
        from napari_mine.data.dataset import joined_label_names

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
