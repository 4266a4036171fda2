"""The one dataset type every loader returns, and the volume-reading helpers the loaders share.

Every later step (features, encoder, attribution, viewer) sees only :class:`Dataset`, whatever the source:
NSD layout, generic folder or the synthetic world. Responses are kept per trial (repeats are data: the
noise ceiling and the encoder's test split need them) and only inside the mask.
"""

from __future__ import annotations

import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_mine.data.images import ImageStore
from napari_mine.errors import MineInputError
from napari_mine.spaces import SurfaceLayout, joined_label_names

NAN_POLICIES = ("raise", "zero", "drop-voxels")
ARRAY_MASK = "mask array"  # how a source record names a mask given as an array (which it cannot hold)
_CHUNK_BYTES = 64 * 2**20  # one read of full volumes; bounds the loaders' memory beyond the masked array


@dataclass(eq=False)
class RoiVolume:
    """A labelled ROI volume: ``volume[x, y, z] == k`` means label ``labels[k]``; 0 or negative is no label."""

    name: str
    volume: np.ndarray
    labels: dict[int, str]

    def names_at(self, mask: np.ndarray) -> np.ndarray:
        """Label name of each voxel of ``mask`` (in mask order), ``""`` where unlabelled."""
        values, inverse = np.unique(self.volume[mask], return_inverse=True)
        names = np.array([self.labels.get(int(value), "") if value > 0 else "" for value in values], dtype=str)
        return names[inverse]


@dataclass(eq=False)
class Dataset:
    """Stimuli, per-trial responses inside a mask, and what is needed to read them as a brain.

    ``responses[t]`` is the response to image ``images[trial_images[t]]``; columns are the sites of
    ``mask`` in ``np.flatnonzero(mask)`` order. The sites are the voxels of a grid, or with ``surface`` the
    vertices of both hemispheres (``mask`` and the ROI arrays are then 1-D over all vertices, ``anatomy`` the
    sulcal depth; ``ncsnr`` is per target in both). With ``n_repeats`` the rows are already per-image means of that many trials (one row per
    image: how fsaverage betas are loaded, since a subject's trials would not fit in memory). ``test_images`` are
    image positions reserved for testing (NSD's shared images), or None. ``source`` records where the data came
    from and how it was read (JSON-serialisable, for the results manifest).
    """

    name: str
    images: ImageStore
    responses: np.ndarray
    trial_images: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    rois: dict[str, RoiVolume] = field(default_factory=dict)
    ncsnr: np.ndarray | None = None
    test_images: np.ndarray | None = None
    anatomy: np.ndarray | None = None
    source: dict = field(default_factory=dict)
    surface: SurfaceLayout | None = None
    n_repeats: np.ndarray | None = None

    def __post_init__(self):
        self.trial_images = np.asarray(self.trial_images, dtype=np.int64)
        if self.n_repeats is not None:
            self.n_repeats = np.asarray(self.n_repeats, dtype=np.int64)
            if len(self.n_repeats) != len(self.trial_images) or len(np.unique(self.trial_images)) != len(
                    self.trial_images):
                raise MineInputError("per-image mean responses need one row per distinct image and one repeat count "
                                     "per row; fix the loader's rows.")
        n_trials, n_voxels = self.responses.shape
        if n_voxels != int(self.mask.sum()) or len(self.trial_images) != n_trials:
            raise MineInputError(
                f"Responses of shape {self.responses.shape} do not match {len(self.trial_images)} trial images "
                f"and a mask of {int(self.mask.sum())} voxels; give one row per trial and one column per voxel."
            )
        if n_trials and (self.trial_images.min() < 0 or self.trial_images.max() >= len(self.images)):
            raise MineInputError(
                f"Trial images must index the {len(self.images)} images (0 to {len(self.images) - 1}); "
                "fix the trial table."
            )

    @property
    def n_voxels(self) -> int:
        """Number of voxels in the mask (columns of ``responses``)."""
        return self.responses.shape[1]

    @property
    def voxel_coords(self) -> np.ndarray:
        """``(n_voxels, 3)`` ijk indices of the masked voxels, in response-column order."""
        return np.argwhere(self.mask)

    def image_responses(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Average the repeats of each image.

        Returns
        -------
        image_ids : int array (n_ids,)
            Sorted positions in ``images`` of the images that have at least one trial.
        mean_responses : array (n_ids, n_voxels)
            Mean over the image's trials, in the responses' dtype.
        n_repeats : int array (n_ids,)
            How many trials each mean averages (the noise ceiling needs it).
        """
        from scipy import sparse

        if self.n_repeats is not None:  # already one row per image (no copy when the rows are in id order)
            if np.all(np.diff(self.trial_images) > 0):
                return self.trial_images, self.responses, self.n_repeats
            order = np.argsort(self.trial_images)
            return self.trial_images[order], self.responses[order], self.n_repeats[order]
        image_ids, row_of_trial, n_repeats = np.unique(self.trial_images, return_inverse=True, return_counts=True)
        weights = (1.0 / n_repeats[row_of_trial]).astype(self.responses.dtype)
        averaging = sparse.csr_matrix(
            (weights, (row_of_trial, np.arange(len(row_of_trial)))), shape=(len(image_ids), len(row_of_trial))
        )
        return image_ids, np.asarray(averaging @ self.responses, dtype=self.responses.dtype), n_repeats

    def split(self, test_fraction: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Train and test image ids: the dataset's test images where it has any, else a seeded random fraction.

        Parameters
        ----------
        test_fraction : float
            Fraction of the shown images held out when the dataset names no test images.
        seed : int
            Seed of that random choice.

        Returns
        -------
        train_ids, test_ids : sorted int arrays of image positions, disjoint, covering every shown image.
        """
        shown = np.unique(self.trial_images)
        if self.test_images is not None and np.isin(self.test_images, shown).any():
            is_test = np.isin(shown, self.test_images)
        else:
            if not 0.0 < test_fraction < 1.0:
                raise MineInputError(f"test_fraction must be between 0 and 1, not {test_fraction}; pass e.g. 0.1.")
            n_test = max(1, round(test_fraction * len(shown)))
            is_test = np.zeros(len(shown), dtype=bool)
            is_test[np.random.default_rng(seed).choice(len(shown), size=n_test, replace=False)] = True
        return shown[~is_test], shown[is_test]

    def roi_of_voxels(self, roi: str | None = None) -> np.ndarray:
        """ROI label name of every voxel (``""`` where none).

        Parameters
        ----------
        roi : str, optional
            One ROI volume's name (e.g. ``"floc-faces"``). By default every volume is read, leaving out those
            that give every voxel the same name (such as the mask's own ``nsdgeneral``) unless no other is
            left; a voxel in several (e.g. ``V1v`` and ``FFA-1``) gets the names joined by ``"+"``.

        Returns
        -------
        str array (n_voxels,)
        """
        if roi is not None and roi not in self.rois:
            raise MineInputError(f"There is no ROI volume named {roi!r}; choose one of {sorted(self.rois)}.")
        volumes = [self.rois[roi]] if roi is not None else list(self.rois.values())
        return joined_label_names([volume.names_at(self.mask) for volume in volumes], self.n_voxels)

    def unmask(self, values) -> np.ndarray:
        """Put per-voxel values back on the grid, NaN outside the mask.

        Parameters
        ----------
        values : array (..., n_voxels)

        Returns
        -------
        float array (..., X, Y, Z): leading axes kept in front (napari stacks them as sliders).
        """
        values = np.asarray(values)
        if values.shape[-1:] != (self.n_voxels,):
            raise MineInputError(f"Values of shape {values.shape} do not end in the {self.n_voxels} mask voxels.")
        dtype = np.result_type(values.dtype, np.float32)
        volume = np.full(values.shape[:-1] + self.mask.shape, np.nan, dtype=dtype)
        volume[..., self.mask] = values
        return volume


# ---------------------------------------------------------------------------------------------------------
# Volume reading shared by the loaders


@dataclass(frozen=True)
class Grid:
    """The voxel grid every volume of a dataset must share, and the file it was taken from (for messages)."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    origin: str

    def check(self, shape, affine, path) -> None:
        """Refuse a volume on another grid: naming both shapes, or the file whose affine differs."""
        if tuple(shape[:3]) != self.shape:
            raise MineInputError(
                f"{path} has the grid {tuple(shape[:3])} but {self.origin} has {self.shape}; "
                "give volumes on the same grid (resample the file into the responses' space)."
            )
        if affine is not None and not np.allclose(affine, self.affine, atol=1e-3):
            raise MineInputError(
                f"The affine of {path} differs from that of {self.origin}; give volumes in the same space."
            )


@contextmanager
def reading(path):
    """Turn a failure to read ``path`` (corrupt, truncated, not the format) into one clear MineInputError."""
    from nibabel.filebasedimages import ImageFileError

    try:
        yield
    except MineInputError:
        raise
    except (OSError, EOFError, zlib.error, ImageFileError, KeyError, ValueError) as error:
        raise MineInputError(
            f"Could not read {path} ({error}); the file is corrupt or not in the expected format, "
            "re-create or re-download it."
        ) from None


def open_nifti(path, keep_open: bool = False):
    """Open a NIfTI image, header only (data stays on disk until sliced).

    ``keep_open`` keeps one file handle for all slices, so that reading a ``.nii.gz`` trial block after
    trial block decompresses it once instead of once per block.
    """
    import nibabel as nib

    with reading(path):
        return nib.load(str(path), keep_file_open=keep_open)


def read_volume(path, grid: Grid | None) -> np.ndarray:
    """Read a whole 3-D volume (mask, ROI, ncsnr, anatomy), checked against ``grid`` when given."""
    image = open_nifti(path)
    if grid is not None:
        grid.check(image.shape, image.affine, path)
    with reading(path):
        volume = np.asanyarray(image.dataobj)
    return volume[..., 0] if volume.ndim == 4 and volume.shape[3] == 1 else volume


def trials_per_chunk(volume_shape, itemsize: int) -> int:
    """How many full trial volumes fit in one bounded read."""
    return max(1, _CHUNK_BYTES // (int(np.prod(volume_shape)) * itemsize))


def nifti_trial_chunks(image, path):
    """Yield ``(first_trial, block (X, Y, Z, k))`` of a 4-D NIfTI, a bounded block of trials at a time."""
    n_trials = image.shape[3]
    step = trials_per_chunk(image.shape[:3], image.get_data_dtype().itemsize)
    for start in range(0, n_trials, step):
        with reading(path):
            block = image.dataobj[..., start : start + step]
        yield start, block


def read_label_table(path) -> dict[int, str]:
    """Read a FreeSurfer-style label table (``.ctab``): lines ``k name [r g b a]``; keeps labels k > 0."""
    labels = {}
    for line in Path(path).read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].lstrip("-").isdigit() and int(parts[0]) > 0:
            labels[int(parts[0])] = parts[1]
    return labels


def read_roi(path, name: str, grid: Grid, labels: dict[int, str] | None) -> RoiVolume:
    """Read an ROI volume; without a label table, label k is called ``name`` (one label) or ``name-k``."""
    volume = np.rint(read_volume(path, grid)).astype(np.int32)
    if not labels:
        present = [int(k) for k in np.unique(volume) if k > 0]
        labels = {k: name if len(present) == 1 else f"{name}-{k}" for k in present}
    return RoiVolume(name, volume, labels)


def check_nan_policy(nan_policy: str) -> None:
    if nan_policy not in NAN_POLICIES:
        raise MineInputError(f"nan_policy must be one of {NAN_POLICIES}, not {nan_policy!r}.")


def nan_voxels(block: np.ndarray, where: str, nan_policy: str) -> np.ndarray:
    """Voxels (columns) of ``block`` holding NaN; refuses them, naming how many and where, under "raise"."""
    is_nan = np.isnan(block)
    count = int(is_nan.sum())
    voxels = is_nan.any(axis=0)
    if count and nan_policy == "raise":
        raise MineInputError(
            f"{where} has {count} NaN values in {int(voxels.sum())} voxels inside the mask; pass "
            "nan_policy='zero' to replace them by 0 or nan_policy='drop-voxels' to leave those voxels out."
        )
    return voxels


def drop_voxels(dropped: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The mask without the ``dropped`` voxels (a boolean over the mask's voxels, in column order)."""
    if dropped.all():
        raise MineInputError("Every voxel of the mask has NaN responses; check that the mask matches the responses.")
    kept = np.zeros(mask.shape, dtype=bool)
    kept.flat[np.flatnonzero(mask)[~dropped]] = True
    return kept
