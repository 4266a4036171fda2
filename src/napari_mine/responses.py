"""Responses read one block of targets at a time, from memory or from a chunked store on disk.

A surface study does not fit in memory: 10,000 images × 327,684 fsaverage vertices is 13 GB of float32.
The encoder needs all images of a target but never two targets together, so responses are stored as image
rows × target columns, chunked by target blocks, and the fit reads one block of columns at a time
(`ResponseColumns.block`). An in-memory array is the same kind of source, so small and large studies run
the same code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np

from napari_mine.errors import MineInputError

DEFAULT_TARGET_BLOCK = 4096  # 10,000 images × 4,096 targets float32 = 164 MB read at a time


class _LastBlock:
    """The most recent raw block, shared by the row selections of one source: a fit and its evaluation
    ask for the same columns (train rows, then test rows) and the chunk is read and decompressed once."""

    def __init__(self):
        self.key: tuple[int, int] | None = None
        self.values: np.ndarray | None = None


class ResponseColumns:
    """Responses of images (rows) × targets (columns), read in blocks of target columns.

    ``array`` is anything with a ``shape`` that slices as ``array[:, start:stop]`` (numpy, zarr, h5py);
    ``combine`` is an optional sparse (rows × array rows) matrix applied to each block: averaging trials
    into images, or choosing the train or test images.
    """

    def __init__(self, array, combine=None, *, _last: _LastBlock | None = None):
        if len(getattr(array, "shape", ())) != 2:
            raise MineInputError(f"responses must be a 2-D array (rows = images or trials, columns = targets), got "
                                 f"shape {getattr(array, 'shape', None)}; reshape them.")
        self.array = array
        self.combine = combine
        self._last = _last or _LastBlock()

    @property
    def shape(self) -> tuple[int, int]:
        rows = self.array.shape[0] if self.combine is None else self.combine.shape[0]
        return int(rows), int(self.array.shape[1])

    def block(self, targets: slice) -> np.ndarray:
        """The responses of ``targets`` (a slice of columns), (rows, block) in the array's dtype."""
        key = (targets.start or 0, min(targets.stop, self.array.shape[1]))
        if self._last.key != key:
            self._last.key, self._last.values = None, None  # drop the previous block before reading the next
            self._last.values = np.asarray(self.array[:, key[0]:key[1]])
            self._last.key = key
        raw = self._last.values
        if self.combine is None:
            return raw
        return np.asarray(self.combine @ raw, dtype=raw.dtype)

    def take_rows(self, rows) -> "ResponseColumns":
        """The same responses restricted to ``rows`` (indices or a boolean selection), sharing the block read."""
        from scipy import sparse

        rows = np.asarray(rows)
        rows = np.flatnonzero(rows) if rows.dtype == bool else rows.astype(np.int64)
        if self.combine is not None:
            return ResponseColumns(self.array, self.combine[rows], _last=self._last)
        dtype = _combine_dtype(self.array.dtype)
        choose = sparse.csr_matrix((np.ones(len(rows), dtype), (np.arange(len(rows)), rows)),
                                   shape=(len(rows), self.array.shape[0]))
        return ResponseColumns(self.array, choose, _last=self._last)


def _combine_dtype(dtype) -> np.dtype:
    """Float responses keep their precision; integer ones (NSD's int16 betas) combine in float32."""
    return np.dtype(dtype) if np.issubdtype(dtype, np.floating) else np.dtype(np.float32)


def image_response_columns(dataset) -> tuple[np.ndarray, ResponseColumns, np.ndarray]:
    """`Dataset.image_responses` as a block source: repeats averaged per image, block by block when the
    dataset's responses are on disk (a zarr or h5py array), so they are never all in memory.

    Returns the sorted image ids, the (ids × targets) source and the repeats per image.
    """
    from scipy import sparse

    if isinstance(dataset.responses, np.ndarray):
        image_ids, means, n_repeats = dataset.image_responses()
        return image_ids, ResponseColumns(means), n_repeats
    image_ids, row_of_trial, n_repeats = np.unique(dataset.trial_images, return_inverse=True, return_counts=True)
    dtype = _combine_dtype(dataset.responses.dtype)
    averaging = sparse.csr_matrix(((1.0 / n_repeats[row_of_trial]).astype(dtype),
                                   (row_of_trial, np.arange(len(row_of_trial)))),
                                  shape=(len(image_ids), len(row_of_trial)))
    return image_ids, ResponseColumns(dataset.responses, averaging), n_repeats


def write_responses(path: str | os.PathLike, blocks: Iterable[np.ndarray], shape: tuple[int, int], *,
                    block: int = DEFAULT_TARGET_BLOCK, dtype=np.float32, compressed: bool = True):
    """Write responses (rows × targets) to a zarr array chunked by target blocks, from column blocks.

    ``blocks`` yields consecutive (rows, ≤ block) column blocks; memory stays at one block. The array is
    written under a temporary name and renamed into place, so a half-written store is never opened.
    ``compressed=False`` skips zarr's default zstd, which saves little on noisy float32 and costs a
    decompression per read. Returns the zarr array, opened read-only.
    """
    import shutil

    import zarr

    path = Path(path)
    n_rows, n_targets = (int(n) for n in shape)
    temporary = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    array = zarr.create_array(str(temporary), shape=(n_rows, n_targets), chunks=(n_rows, int(block)), dtype=dtype,
                              **({} if compressed else {"compressors": None}))
    start = 0
    for values in blocks:
        values = np.asarray(values, dtype=dtype)
        if values.ndim != 2 or values.shape[0] != n_rows or start + values.shape[1] > n_targets:
            shutil.rmtree(temporary, ignore_errors=True)
            raise MineInputError(f"a responses block of shape {values.shape} does not fit the store's {n_rows} rows "
                                 f"after {start} of {n_targets} targets; give consecutive (rows, targets) blocks.")
        array[:, start:start + values.shape[1]] = values
        start += values.shape[1]
    if start != n_targets:
        shutil.rmtree(temporary, ignore_errors=True)
        raise MineInputError(f"the response blocks covered {start} of {n_targets} targets; give all of them.")
    if path.exists():
        shutil.rmtree(path)
    os.replace(temporary, path)
    return open_responses(path)


def open_responses(path: str | os.PathLike):
    """Open a responses store written by `write_responses` (read-only, nothing read yet)."""
    import zarr

    try:
        return zarr.open_array(str(path), mode="r")
    except (FileNotFoundError, ValueError, KeyError) as error:
        raise MineInputError(f"{path} is not a responses store ({error}); write one with "
                             "napari_mine.responses.write_responses.") from None
