"""Load a study that is not in the NSD layout: a folder of images, a responses array and a trial table."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from napari_mine.data.dataset import (
    ARRAY_MASK,
    Dataset,
    Grid,
    check_nan_policy,
    drop_voxels,
    nan_voxels,
    nifti_trial_chunks,
    open_nifti,
    read_label_table,
    read_roi,
    read_volume,
    reading,
)
from napari_mine.data.images import IMAGE_SUFFIXES, ImageStore
from napari_mine.errors import MineInputError

_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_ARRAY_SUFFIXES = (".npy", ".h5", ".hdf5")


def load_generic(
    folder=None,
    *,
    responses=None,
    mask=None,
    table=None,
    images=None,
    rois=None,
    anatomy=None,
    name: str | None = None,
    nan_policy: str = "raise",
    image_size: int | None = None,
) -> Dataset:
    """Load a folder of images with per-trial responses.

    Expected layout (every path can also be given explicitly, which overrides the folder's)::

        folder/
          images/                 the stimulus image files (any format Pillow reads; converted to RGB uint8)
          responses.nii.gz        4-D (X, Y, Z, n_trials) NIfTI, or
          responses.npy | .h5     (n_trials, n_voxels) array (HDF5: dataset "responses" or the only one),
                                  columns = the mask's voxels in C order over x, y, z
          mask.nii.gz             voxels > 0 are kept; required with .npy / .h5, optional with a 4-D NIfTI
                                  (default there: voxels finite and not constant over trials)
          trials.csv | .tsv       one row per response row: column ``image`` (file name under images/) and
                                  optional ``split`` (train / test); without a table, response rows map to
                                  the image files in sorted name order
          rois/<name>.nii.gz      optional labelled ROI volumes; labels from <name>.ctab beside them
          anatomy.nii.gz          optional background volume (default: the mean response)

    Parameters
    ----------
    folder : str or Path, optional
        The study folder; required unless ``responses`` is given.
    responses, mask, table, images, anatomy : str or Path, optional
        Explicit paths (``images`` a folder); ``mask`` may also be a boolean (X, Y, Z) array.
    rois : folder or sequence of paths, optional
    name : str, optional
        Dataset name; default the folder's (or the responses file's) name.
    nan_policy : {"raise", "zero", "drop-voxels"}
        NaN responses inside the mask are refused by default; "zero" sets them to 0, "drop-voxels" removes
        voxels holding any NaN.
    image_size : int, optional
        Resize and centre-crop every image to this square size (needed when the images differ in size).

    Returns
    -------
    Dataset
        Responses as stored (no scaling or z-scoring), one row per trial; images in sorted file-name order.
    """
    check_nan_policy(nan_policy)
    folder = Path(folder) if folder is not None else None
    responses_path = _path(responses, folder, [f"responses{s}" for s in _NIFTI_SUFFIXES + _ARRAY_SUFFIXES], "responses")
    name = name or (folder.name if folder else responses_path.name.split(".")[0])
    mask_path = None if isinstance(mask, np.ndarray) else _optional(mask, folder, ["mask.nii.gz", "mask.nii"])
    grid, mask_volume = _grid_and_mask(responses_path, mask_path, mask)
    n_trials = _count_trials(responses_path)
    table_path, image_folder = _table_and_images(table, images, folder)
    image_names, is_test = _trial_table(table_path, image_folder, n_trials)
    image_files, trial_images = np.unique(image_names, return_inverse=True)
    _check_images_exist(image_folder, image_files)
    roi_paths = _roi_paths(rois, folder)
    roi_volumes = dict(_read_rois(roi_paths, grid))
    anatomy_path = _optional(anatomy, folder, ["anatomy.nii.gz", "anatomy.nii"])
    anatomy_volume = read_volume(anatomy_path, grid).astype(np.float32) if anatomy_path else None

    values = _read_responses(responses_path, mask_volume, n_trials)
    dropped = nan_voxels(values, responses_path.name, nan_policy)
    if nan_policy == "drop-voxels" and dropped.any():
        mask_volume, values = drop_voxels(dropped, mask_volume), values[:, ~dropped]
    elif nan_policy == "zero":
        np.nan_to_num(values, copy=False, nan=0.0)
    if anatomy_volume is None:
        anatomy_volume = np.full(mask_volume.shape, np.nan, dtype=np.float32)
        anatomy_volume[mask_volume] = values.mean(axis=0)
    return Dataset(
        name=name,
        images=ImageStore.from_files([image_folder / f for f in image_files], image_size=image_size),
        responses=values,
        trial_images=trial_images,
        mask=mask_volume,
        affine=grid.affine,
        rois=roi_volumes,
        test_images=_test_images(is_test),
        anatomy=anatomy_volume,
        source={
            "format": "generic",
            "name": name,
            "responses": str(responses_path.resolve()),
            "mask": str(mask_path.resolve()) if mask_path else (ARRAY_MASK if mask is not None else None),
            "table": None if table_path is None else str(table_path.resolve()),
            "images": str(image_folder.resolve()),
            "rois": [str(path.resolve()) for path in roi_paths],
            "anatomy": None if anatomy_path is None else str(anatomy_path.resolve()),
            "nan_policy": nan_policy,
            "image_size": image_size,
            "dropped_voxels": int(dropped.sum()) if nan_policy == "drop-voxels" else 0,
        },
    )


# ---------------------------------------------------------------------------------------------------------
# Paths


def _optional(given, folder: Path | None, defaults) -> Path | None:
    """The given path (which must exist), else the first default present in the folder, else None."""
    if given is not None:
        path = Path(given)
        if not path.exists():
            raise MineInputError(f"{path} does not exist; check the path.")
        return path
    if folder is None:
        return None
    return next((folder / d for d in defaults if (folder / d).exists()), None)


def _path(given, folder: Path | None, defaults, what: str) -> Path:
    path = _optional(given, folder, defaults)
    if path is None:
        where = f"in {folder}" if folder else "(no folder given)"
        raise MineInputError(f"No {what} file {where}; add one of {', '.join(defaults)} or pass {what}= its path.")
    return path


def _table_and_images(table, images, folder: Path | None) -> tuple[Path | None, Path]:
    """The trial table (if any) and the images folder (default: folder/images, else the table's folder)."""
    table_path = _optional(table, folder, ["trials.csv", "trials.tsv"])
    image_folder = _optional(images, folder, ["images"])
    if image_folder is None:
        image_folder = table_path.parent if table_path else folder
    if image_folder is None or not image_folder.is_dir():
        raise MineInputError(f"No images folder found (looked for {image_folder}); pass images= the stimuli folder.")
    return table_path, image_folder


def _is_nifti(path: Path) -> bool:
    return path.name.endswith(_NIFTI_SUFFIXES)


# ---------------------------------------------------------------------------------------------------------
# Grid, mask, responses


def _grid_and_mask(responses_path: Path, mask_path: Path | None, mask) -> tuple[Grid, np.ndarray]:
    """The voxel grid (from the 4-D responses or the mask) and the boolean mask volume."""
    if _is_nifti(responses_path):
        image = open_nifti(responses_path)
        if len(image.shape) != 4:
            raise MineInputError(f"{responses_path} is {len(image.shape)}-D; give 4-D (X, Y, Z, trials) responses.")
        grid = Grid(tuple(image.shape[:3]), image.affine, str(responses_path))
        if mask_path is None and mask is None:
            return grid, _default_mask(responses_path)
    elif mask_path is not None:
        mask_image = open_nifti(mask_path)
        grid = Grid(tuple(mask_image.shape[:3]), mask_image.affine, str(mask_path))
    elif isinstance(mask, np.ndarray):
        grid = Grid(tuple(mask.shape), np.eye(4), "the mask array")
    else:
        raise MineInputError(
            f"{responses_path.name} holds (trials, voxels) without a grid; add mask.nii.gz or pass mask= a mask volume."
        )
    volume = read_volume(mask_path, grid) if mask_path is not None else np.asarray(mask)
    if volume.shape != grid.shape:
        raise MineInputError(f"The mask array has shape {volume.shape} but the responses' grid is {grid.shape}.")
    selected = volume > 0 if volume.dtype != bool else volume
    if not selected.any():
        raise MineInputError(f"The mask {mask_path or 'array'} selects no voxel; give a mask with voxels > 0.")
    return grid, selected


def _default_mask(path: Path) -> np.ndarray:
    """Voxels finite in every trial and not constant over trials (one pass over the 4-D file)."""
    image = open_nifti(path, keep_open=True)
    low = np.full(image.shape[:3], np.inf)
    high = np.full(image.shape[:3], -np.inf)
    finite = np.ones(image.shape[:3], dtype=bool)
    for _, block in nifti_trial_chunks(image, path):
        finite &= np.isfinite(block).all(axis=3)
        low, high = np.fmin(low, block.min(axis=3)), np.fmax(high, block.max(axis=3))
    selected = finite & (high > low)
    if not selected.any():
        raise MineInputError(f"No voxel of {path} varies over trials; check the file or pass mask= a mask volume.")
    return selected


def _count_trials(path: Path) -> int:
    if _is_nifti(path):
        return open_nifti(path).shape[3]
    if path.suffix not in _ARRAY_SUFFIXES:
        raise MineInputError(f"{path} is not a NIfTI, .npy or .h5 file; save the responses in one of those formats.")
    return _array_shape(path)[0]


def _array_shape(path: Path) -> tuple[int, ...]:
    with reading(path):
        if path.suffix == ".npy":
            return np.load(path, mmap_mode="r").shape
        import h5py

        with h5py.File(path, "r") as handle:
            return handle[_h5_dataset_name(handle, path)].shape


def _h5_dataset_name(handle, path: Path) -> str:
    import h5py

    names = [key for key, value in handle.items() if isinstance(value, h5py.Dataset)]
    if "responses" in names:
        return "responses"
    if len(names) == 1:
        return names[0]
    raise MineInputError(f"{path} holds datasets {names}; name the responses dataset 'responses'.")


def _read_responses(path: Path, mask: np.ndarray, n_trials: int) -> np.ndarray:
    """float32 ``(n_trials, n_voxels)`` inside the mask, read a bounded block of trials at a time."""
    n_voxels = int(mask.sum())
    values = np.empty((n_trials, n_voxels), dtype=np.float32)
    if _is_nifti(path):
        for start, block in nifti_trial_chunks(open_nifti(path, keep_open=True), path):
            values[start : start + block.shape[3]] = block[mask].T
        return values
    shape = _array_shape(path)
    if len(shape) != 2 or shape[1] != n_voxels:
        raise MineInputError(
            f"{path} has shape {shape} but the mask has {n_voxels} voxels; give (n_trials, {n_voxels}) responses."
        )
    with reading(path):
        if path.suffix == ".npy":
            values[:] = np.load(path, mmap_mode="r")
        else:
            import h5py

            with h5py.File(path, "r") as handle:
                handle[_h5_dataset_name(handle, path)].read_direct(values)
    return values


# ---------------------------------------------------------------------------------------------------------
# Trials and images


def open_generic_images(source: dict) -> ImageStore:
    """The stimuli of a generic dataset (volume or surface) from its source record, in the loaders' order,
    without reading its responses: all that the viewer's stimulus layer and thumbnails need."""
    table_path, image_folder = _table_and_images(source.get("table"), source["images"], None)
    names, _ = _trial_table(table_path, image_folder, None)
    return ImageStore.from_files([image_folder / f for f in np.unique(names)], image_size=source.get("image_size"))


def _trial_table(table_path: Path | None, image_folder: Path, n_trials: int | None) -> tuple[np.ndarray, dict | None]:
    """Image file name of each trial, and (when a split column exists) each image's test flag; ``n_trials``
    None checks no count."""
    if table_path is None:
        names = sorted(p.name for p in image_folder.iterdir() if p.name.lower().endswith(IMAGE_SUFFIXES))
        if n_trials is not None and len(names) != n_trials:
            raise MineInputError(
                f"{image_folder} has {len(names)} images for {n_trials} response rows and there is no trials.csv; "
                "add a table with an 'image' column mapping each row to its image."
            )
        return np.array(names), None
    rows = _read_table(table_path)
    if n_trials is not None and len(rows) != n_trials:
        raise MineInputError(
            f"{table_path} has {len(rows)} rows but there are {n_trials} response rows; give one row per trial."
        )
    names = np.array([row["image"].strip() for row in rows])
    if "split" not in rows[0]:
        return names, None
    return names, _test_flags(names, [row["split"].strip().lower() for row in rows], table_path)


def _read_table(path: Path) -> list[dict]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        if reader.fieldnames is None or "image" not in [f.strip() for f in reader.fieldnames]:
            raise MineInputError(f"{path} has no 'image' column; name the column of image file names 'image'.")
        return [{key.strip(): value or "" for key, value in row.items() if key} for row in reader]


def _test_flags(names: np.ndarray, splits: list[str], path: Path) -> dict:
    unknown = sorted(set(splits) - {"train", "test"})
    if unknown:
        raise MineInputError(f"{path} has split values {unknown}; use 'train' or 'test'.")
    flags = {}
    for image, split in zip(names, splits):
        if flags.setdefault(image, split == "test") != (split == "test"):
            raise MineInputError(f"{path} puts {image} in both train and test; give each image one split.")
    return flags


def _test_images(is_test: dict | None) -> np.ndarray | None:
    """Positions (in sorted file-name order, as the image store) of the images marked test."""
    if is_test is None:
        return None
    flags = np.array([is_test[name] for name in sorted(is_test)])
    positions = np.flatnonzero(flags)
    return positions if positions.size else None


def _check_images_exist(image_folder: Path, image_files) -> None:
    missing = [name for name in image_files if not (image_folder / name).is_file()]
    if missing:
        raise MineInputError(
            f"{len(missing)} images named in the table are not in {image_folder}, e.g. {missing[0]}; "
            "fix the names or the folder."
        )


def _roi_paths(rois, folder: Path | None) -> list[Path]:
    """The ROI NIfTI files given (a folder or a list), or those in ``folder/rois``."""
    if rois is None:
        rois = folder / "rois" if folder is not None and (folder / "rois").is_dir() else []
    if isinstance(rois, (str, Path)):
        return sorted(p for p in Path(rois).iterdir() if _is_nifti(p))
    return [Path(path) for path in rois]


def _read_rois(paths, grid: Grid):
    """Yield (name, RoiVolume) for each ROI file, labels from ``<name>.ctab`` beside it when present."""
    for path in paths:
        name = path.name.removesuffix(".gz").removesuffix(".nii")
        tables = [path.with_name(f"{name}{suffix}") for suffix in (".ctab", ".mgz.ctab")]
        table = next((t for t in tables if t.is_file()), None)
        yield name, read_roi(path, name, grid, read_label_table(table) if table else None)
