"""Turn any stimulus image into the one form every later step expects: RGB ``uint8`` ``(H, W, 3)``.

Researchers' stimuli come as greyscale, RGBA, palette, 16-bit or float images; refusing them would only push
the conversion onto every user, so each is converted here, once, with a documented rule.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_mine.errors import MineInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

# Pillow modes that numpy cannot hold as plain grey/RGB/RGBA values, and what to convert them to first.
_PIL_MODE_CONVERSIONS = {"P": "RGBA", "PA": "RGBA", "1": "L", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB"}


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Convert an image array to RGB ``uint8``.

    Rules: greyscale is repeated over three channels; an alpha channel is composited on white (transparent
    stimulus backgrounds are shown on white in experiments); ``uint16`` is scaled by 255/65535; other integer
    types are read as 8-bit when their maximum is at most 255, else as 16-bit; floats in [0, 1] are scaled by
    255, other floats are clipped to [0, 255]; NaN becomes 0.

    Parameters
    ----------
    image : array (H, W), (H, W, 1), (H, W, 2), (H, W, 3) or (H, W, 4)
        Greyscale, grey + alpha, RGB or RGBA values of any numeric or boolean dtype.

    Returns
    -------
    uint8 array (H, W, 3)
    """
    array = np.asarray(image)
    if array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3:
        return array
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise MineInputError(
            f"An image of shape {array.shape} is not greyscale, RGB or RGBA; give (H, W), (H, W, 3) or (H, W, 4)."
        )
    unit = _to_unit_float(array)
    colour, alpha = _split_alpha(unit)
    if alpha is not None:
        colour = colour * alpha + (1.0 - alpha)
    if colour.shape[2] == 1:
        colour = np.repeat(colour, 3, axis=2)
    return np.round(colour * 255.0).astype(np.uint8)


def _to_unit_float(array: np.ndarray) -> np.ndarray:
    """Scale values to float32 in [0, 1] according to the dtype rules of :func:`to_rgb_uint8`."""
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if np.issubdtype(array.dtype, np.integer):
        full_scale = 65535.0 if array.max(initial=0) > 255 else 255.0
        return np.clip(array.astype(np.float32), 0.0, full_scale) / full_scale
    values = np.nan_to_num(array.astype(np.float32), nan=0.0, posinf=255.0, neginf=0.0)
    if values.max(initial=0.0) <= 1.0:
        return np.clip(values, 0.0, 1.0)
    return np.clip(values, 0.0, 255.0) / 255.0


def _split_alpha(unit: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Separate colour channels from a trailing alpha channel (grey+alpha or RGBA)."""
    if unit.shape[2] in (2, 4):
        return unit[:, :, :-1], unit[:, :, -1:]
    return unit, None


def read_image_file(path: str | Path) -> np.ndarray:
    """Read an image file as RGB ``uint8`` ``(H, W, 3)``, converting palette, 16-bit, CMYK, … images.

    Parameters
    ----------
    path : str or Path
        Any format Pillow reads.

    Returns
    -------
    uint8 array (H, W, 3)
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            mode_target = _PIL_MODE_CONVERSIONS.get(image.mode)
            pixels = np.asarray(image.convert(mode_target) if mode_target else image)
    except (OSError, UnidentifiedImageError, SyntaxError) as error:
        raise MineInputError(f"Could not read the image {path} ({error}); replace it with a readable file.") from None
    return to_rgb_uint8(pixels)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize the shorter side to ``size`` and centre-crop to ``(size, size, 3)``, as CLIP preprocessing does.

    Used only when a collection mixes image sizes and must be stacked into one array.
    """
    from PIL import Image

    height, width = image.shape[:2]
    scale = size / min(height, width)
    new_width, new_height = max(size, round(width * scale)), max(size, round(height * scale))
    resized = np.asarray(Image.fromarray(image).resize((new_width, new_height), Image.Resampling.BICUBIC))
    top, left = (new_height - size) // 2, (new_width - size) // 2
    return np.ascontiguousarray(resized[top : top + size, left : left + size])


class ImageStore:
    """The stimulus images of a dataset, read on demand.

    Position ``i`` (what ``Dataset.trial_images`` holds) is the image whose source id is ``ids[i]`` (the
    0-based NSD stimulus id, or the row of an in-memory array, or the file's rank among the files). Nothing
    is read until indexed, so a 10,000-image dataset costs nothing to open, and the store pickles (paths
    only) for Dask workers. Build one with :meth:`from_hdf5`, :meth:`from_files` or :meth:`from_array`.
    """

    def __init__(self, ids, names, *, hdf5=None, files=None, array=None, image_size=None):
        self.ids = np.asarray(ids, dtype=np.int64)
        self.names = tuple(names)
        self._hdf5 = hdf5
        self._files = None if files is None else tuple(Path(path) for path in files)
        self._array = array
        self._image_size = image_size

    @classmethod
    def from_hdf5(cls, path: str | Path, stimulus_ids, dataset: str = "imgBrick") -> ImageStore:
        """Images ``dataset[stimulus_ids]`` of an HDF5 brick ``(n, H, W, C)``, such as NSD's ``imgBrick``."""
        ids = np.asarray(stimulus_ids, dtype=np.int64)
        return cls(ids, [f"{dataset}[{i}]" for i in ids], hdf5=(str(path), dataset))

    @classmethod
    def union(cls, stores, stimulus_ids) -> ImageStore:
        """Images ``stimulus_ids`` of the one HDF5 brick several stores read (a study's subjects share NSD's), so
        an image several subjects saw is one image: ids only identify a stimulus within one brick."""
        bricks = {store._hdf5 for store in stores}
        if len(bricks) != 1 or None in bricks:
            raise MineInputError("The subjects of a study must read their images from one stimulus file (NSD's "
                                 f"nsd_stimuli.hdf5); these read from {len(bricks)} sources. Load every subject from "
                                 "the same NSD root.")
        path, dataset = bricks.pop()
        return cls.from_hdf5(path, stimulus_ids, dataset)

    @classmethod
    def from_files(cls, paths, image_size: int | None = None) -> ImageStore:
        """Images read from files; ``image_size`` resizes and centre-crops each to a square (mixed sizes)."""
        paths = [Path(path) for path in paths]
        return cls(np.arange(len(paths)), [path.name for path in paths], files=paths, image_size=image_size)

    @classmethod
    def from_array(cls, images) -> ImageStore:
        """Images already in memory, ``(n, H, W)`` or ``(n, H, W, C)`` of any dtype ``to_rgb_uint8`` takes."""
        images = np.asarray(images)
        return cls(np.arange(len(images)), [f"image[{i}]" for i in range(len(images))], array=images)

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        origin = self._hdf5[0] if self._hdf5 else ("files" if self._files else "array")
        return f"ImageStore({len(self)} images from {origin})"

    def __getitem__(self, key) -> np.ndarray:
        """One image ``(H, W, 3)`` for an int, a stack ``(n, H, W, 3)`` for a slice, index or boolean array."""
        positions = np.arange(len(self))[key]
        if np.ndim(positions) == 0:
            return self._read(positions.reshape(1))[0]
        images = self._read(positions.ravel())
        return images.reshape(positions.shape + images.shape[1:])

    def _read(self, positions: np.ndarray) -> np.ndarray:
        if self._hdf5 is not None:
            images = self._read_hdf5(self.ids[positions])
        elif self._files is not None:
            images = [self._read_file(self._files[p]) for p in positions]
        else:
            images = [to_rgb_uint8(self._array[p]) for p in positions]
        return self._stack(images, positions)

    def _read_hdf5(self, stimulus_ids: np.ndarray) -> list[np.ndarray]:
        """Read each distinct id once, in increasing order as h5py requires, then restore the asked order."""
        import h5py

        path, dataset = self._hdf5
        unique_ids, inverse = np.unique(stimulus_ids, return_inverse=True)
        try:
            with h5py.File(path, "r") as handle:
                brick = handle[dataset][unique_ids]
        except (OSError, KeyError) as error:
            raise MineInputError(f"Could not read images from {path} ({error}); check that it is complete.") from None
        return [to_rgb_uint8(brick[i]) for i in inverse]

    def _read_file(self, path: Path) -> np.ndarray:
        image = read_image_file(path)
        return resize_square(image, self._image_size) if self._image_size else image

    def _stack(self, images: list[np.ndarray], positions: np.ndarray) -> np.ndarray:
        if not images:
            return np.empty((0, 0, 0, 3), dtype=np.uint8)
        odd = next((i for i, image in enumerate(images) if image.shape != images[0].shape), None)
        if odd is not None:
            first, other = self.names[positions[0]], self.names[positions[odd]]
            raise MineInputError(
                f"Images {first} {images[0].shape[:2]} and {other} {images[odd].shape[:2]} differ in size; "
                "pass image_size= to resize every image to one square size."
            )
        return np.stack(images)
