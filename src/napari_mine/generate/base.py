"""The generator interface of causal validation (DESIGN.md §1 step 5) and the masks edits are made under.

Validation needs four things from an image generator: the dataset's images as it sees them (the originals),
an image from a description alone (sufficiency), and an image with the content under a mask removed, or a
concept inserted there (counterfactual edits). Every backend implements :class:`Generator`, and every
operation takes and returns one subject type, :class:`Edit`: the image, and for the synthetic world the
scene it renders. So validation and the viewer's editor drive any backend the same way, and the true brain
responds to ``edit.scene`` wherever there is one. An edit keeps every pixel where the mask is 0 exactly as
it was, so a change in a voxel's response can only come from the edited region.

Masks are float arrays in [0, 1] (1 = replace, 0 = keep, in between = blend, the feathered border);
:func:`attribution_mask` makes one from an attribution map.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Callable

import numpy as np

from napari_mine.errors import Cancelled, MineInputError

Progress = Callable[[int, int], None] | None
StopFlag = Callable[[], bool] | None
DEFAULT_TOP_FRACTION = 0.1


class GenerationCancelled(Cancelled):
    """``should_stop()`` asked a generation to end: it stopped at the next step or image and returned nothing.

    A subclass of :class:`napari_mine.errors.Cancelled`, so code that runs any long step catches one type.
    """


@dataclass(frozen=True, eq=False)
class Edit:
    """What a generator makes and edits: a uint8 image (H, W, 3) and, for the synthetic world, its scene.

    A pixel backend edits ``image`` and leaves ``scene`` None (an inpainted image has no scene); the
    procedural one edits ``scene`` and renders it into ``image``, so whoever measures the edit can ask the
    true brain about exactly what the image shows.
    """

    image: np.ndarray
    scene: object | None = None  # synthetic.scenes.Scene


class Generator(abc.ABC):
    """An image generator that validation can drive: originals, text to image, remove and insert under a mask.

    Every operation takes and returns :class:`Edit` subjects. Every method is batched and seeded (the same
    inputs and seed give the same images; each image's randomness depends on its seed and position only, not
    on how the batch is split), reports progress as ``on_progress(done, total)`` and stops when
    ``should_stop()`` returns True by raising :class:`GenerationCancelled` at its next step or image. Edits
    return images the size of their inputs and keep the pixels where the mask is 0 exactly.

    Attributes
    ----------
    image_size : (int, int)
        (H, W) of the images the backend makes.
    """

    image_size: tuple[int, int]

    def originals(self, stimuli, images=None) -> list[Edit]:
        """The dataset's stimuli as this generator edits them, at :attr:`image_size`.

        A pixel backend resizes the images (so originals and edits are encoded alike); the procedural one
        overrides this to render its world's scenes of ``stimuli``, and needs no images.

        Parameters
        ----------
        stimuli : int sequence
            Stimulus ids (a results folder's ``image_ids`` of the rows).
        images : iterable of images, optional
            The same stimuli's images (any dtype ``to_rgb_uint8`` takes), one per id; read only by pixel
            backends, so a lazy iterable costs nothing for the others.

        Returns
        -------
        list of Edit
        """
        from napari_mine.data.images import to_rgb_uint8

        if images is None:
            raise MineInputError(f"{type(self).__name__} edits pixels; pass images= (e.g. dataset.images) so the "
                                 "results' images can be edited.")
        return [Edit(resize_images(to_rgb_uint8(np.asarray(image))[None], self.image_size)[0]) for image in images]

    @abc.abstractmethod
    def generate(self, descriptions, seed: int = 0, *, on_progress: Progress = None,
                 should_stop: StopFlag = None) -> list[Edit]:
        """Images from text alone.

        Parameters
        ----------
        descriptions : list of str
            One description per image.
        seed : int
            Seed of the whole batch.
        on_progress, should_stop : callable, optional
            Progress report ``(done, total)`` and cancellation flag.

        Returns
        -------
        list of Edit, images uint8 (H, W, 3) at :attr:`image_size`.
        """

    @abc.abstractmethod
    def remove(self, edits, masks, seed: int = 0, *, on_progress: Progress = None,
               should_stop: StopFlag = None) -> list[Edit]:
        """The subjects with what lies under each mask removed.

        Parameters
        ----------
        edits : list of Edit
            What to edit (from :meth:`originals`, :meth:`generate` or an earlier edit).
        masks : float array (H, W) or (B, H, W) in [0, 1]
            Region to edit; one mask for all subjects or one per subject.
        seed : int
        on_progress, should_stop : callable, optional

        Returns
        -------
        list of Edit, each image the size of its subject's.
        """

    @abc.abstractmethod
    def insert(self, edits, masks, concepts, seed: int = 0, *, on_progress: Progress = None,
               should_stop: StopFlag = None) -> list[Edit]:
        """The subjects with a concept put into each masked region.

        Parameters
        ----------
        edits : list of Edit
            As for :meth:`remove`.
        masks : float array (H, W) or (B, H, W) in [0, 1]
        concepts : str or list of str
            One concept for all subjects or one per subject.
        seed : int
        on_progress, should_stop : callable, optional

        Returns
        -------
        list of Edit
        """

    def default_vocabulary(self):
        """The vocabulary descriptions for this generator are read in by default (the general one)."""
        from napari_mine.vocabulary import general_vocabulary

        return general_vocabulary()

    def check_vocabulary(self, vocabulary) -> None:
        """Refuse a vocabulary whose descriptions this generator cannot draw (any text will do here)."""


# ----------------------------------------------------------------------------------------------- subjects


def checked_generator(generator) -> "Generator":
    """``generator`` when it implements :class:`Generator`, else a clear refusal."""
    if not isinstance(generator, Generator):
        raise MineInputError(f"Validation needs a napari_mine.generate.Generator, got {type(generator).__name__}; "
                             "use ProceduralGenerator.from_world(root) or DiffusionGenerator.load(model).")
    return generator


def checked_edits(edits) -> list[Edit]:
    """The subjects of an operation as a non-empty list of :class:`Edit`."""
    if isinstance(edits, (Edit, np.ndarray)) or not hasattr(edits, "__iter__"):
        raise MineInputError(f"Generators take a list of Edit subjects (a uint8 (H, W, 3) image, and for the "
                             f"synthetic world its scene), got {type(edits).__name__}; wrap images with "
                             "as_edits(images), or use Generator.originals.")
    edits = list(edits)
    if not edits or not all(isinstance(edit, Edit) for edit in edits):
        raise MineInputError("Generators take a non-empty list of Edit subjects; wrap images with as_edits(images) "
                             "or use Generator.originals.")
    return edits


def images_of(edits) -> np.ndarray:
    """The subjects' images as one batch ``uint8 (B, H, W, 3)``."""
    edits = checked_edits(edits)
    shapes = {np.shape(edit.image) for edit in edits}
    if len(shapes) != 1:
        raise MineInputError(f"The images of one batch must share a size, got {sorted(shapes)}; edit images of "
                             "different sizes in separate calls.")
    return checked_images(np.stack([np.asarray(edit.image) for edit in edits]))


def as_edits(images) -> list[Edit]:
    """Pixel subjects (no scene) of a batch of images ``uint8 (B, H, W, 3)``."""
    return [Edit(image) for image in checked_images(images)]


# ----------------------------------------------------------------------------------------------- run helpers


def stop_if_asked(should_stop: StopFlag) -> None:
    """Raise :class:`GenerationCancelled` when ``should_stop()`` is true."""
    if should_stop is not None and should_stop():
        raise GenerationCancelled("generation was cancelled; no images were returned.")


def image_seeds(seed: int, n_images: int) -> list[int]:
    """One seed per image from the batch seed and the image's position, so batch splits do not matter."""
    return [int(np.random.SeedSequence([int(seed), i]).generate_state(1)[0]) for i in range(n_images)]


def per_image(values, n_images: int, what: str) -> list[str]:
    """A list of ``n_images`` strings from one string or a list of that length."""
    if isinstance(values, str):
        return [values] * n_images
    values = list(values)
    if len(values) != n_images or not all(isinstance(v, str) for v in values):
        raise MineInputError(f"Expected one {what} string or a list of {n_images} strings, got {len(values)} "
                             f"values; pass one {what} per image.")
    return values


def checked_descriptions(descriptions) -> list[str]:
    """The descriptions as a non-empty list of strings."""
    if isinstance(descriptions, str):
        raise MineInputError("generate takes a list of descriptions; wrap one description in a list.")
    descriptions = list(descriptions)
    if not descriptions or not all(isinstance(d, str) for d in descriptions):
        raise MineInputError("generate needs a non-empty list of description strings; pass one string per image.")
    return descriptions


def checked_images(images) -> np.ndarray:
    """A batch of RGB images as ``uint8 (B, H, W, 3)``."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8 or len(images) == 0:
        raise MineInputError(f"Expected a batch of RGB images, uint8 (B, H, W, 3), got {images.dtype} "
                             f"{images.shape}; use images[None] for one image.")
    return images


# ----------------------------------------------------------------------------------------------- masks


def attribution_mask(attribution, image_size, *, top_fraction: float | None = None, threshold: float | None = None,
                     dilate_px: int = 0, feather_px: int = 0) -> np.ndarray:
    """An edit mask from an attribution map: its highest pixels, grown and feathered.

    The map is upsampled bilinearly to the image, the region is its ``top_fraction`` highest pixels (or the
    pixels at or above ``threshold``), grown by ``dilate_px`` and given a linear ramp of ``feather_px``
    pixels outside it, so an edit blends into the kept image instead of leaving a seam.

    Parameters
    ----------
    attribution : float array (h, w)
        Attribution map at any resolution (a patch grid g × g or pixels).
    image_size : int or (H, W)
        Size of the mask.
    top_fraction : float in (0, 1), optional
        Share of the pixels in the region (default 0.1 when no threshold is given).
    threshold : float, optional
        Attribution value at or above which a pixel is in the region (instead of ``top_fraction``).
    dilate_px : int
        Grow the region by this many pixels (Euclidean).
    feather_px : int
        Width of the blend ramp outside the (grown) region.

    Returns
    -------
    float32 array (H, W) in [0, 1]: 1 on the region, falling to 0 over ``feather_px`` pixels.
    """
    from napari_mine.attribution import upsample

    attribution = np.asarray(attribution, dtype=np.float32)
    if attribution.ndim != 2 or not np.isfinite(attribution).all():
        raise MineInputError(f"An attribution map must be a finite 2-D array (h, w), got shape {attribution.shape}; "
                             "pass one image's map for one voxel.")
    height, width = _size_pair(image_size)
    pixels = upsample(attribution, (height, width))
    region = _top_region(pixels, top_fraction, threshold)
    if dilate_px < 0 or feather_px < 0:
        raise MineInputError(f"dilate_px ({dilate_px}) and feather_px ({feather_px}) must be 0 or more pixels.")
    distance = _distance_outside(region)
    region = distance <= dilate_px
    mask = feather(region, feather_px) if feather_px else region.astype(np.float32)
    check_mask_extent(mask, "The attribution mask")
    return mask


def feather(region: np.ndarray, feather_px: int) -> np.ndarray:
    """A soft mask: 1 on ``region`` and a linear ramp to 0 over ``feather_px`` pixels outside it."""
    distance = _distance_outside(np.asarray(region, dtype=bool))
    return np.clip(1.0 - distance / max(feather_px, 1e-6), 0.0, 1.0).astype(np.float32)


def _top_region(pixels: np.ndarray, top_fraction, threshold) -> np.ndarray:
    if top_fraction is not None and threshold is not None:
        raise MineInputError("Give either top_fraction or threshold for an attribution mask, not both.")
    if threshold is not None:
        return pixels >= threshold
    top_fraction = DEFAULT_TOP_FRACTION if top_fraction is None else top_fraction
    if not 0.0 < top_fraction < 1.0:
        raise MineInputError(f"top_fraction must lie in (0, 1), got {top_fraction}; e.g. 0.1 for the top 10 %.")
    return pixels >= np.quantile(pixels, 1.0 - top_fraction)


def _distance_outside(region: np.ndarray) -> np.ndarray:
    """Euclidean distance of every pixel to the region (0 inside; infinite when the region is empty)."""
    from scipy.ndimage import distance_transform_edt

    if not region.any():
        return np.full(region.shape, np.inf)
    return distance_transform_edt(~region)


def check_mask_extent(mask: np.ndarray, name: str) -> None:
    """Refuse a mask that selects nothing, or that leaves no pixel of the image as it was."""
    if not (mask > 0).any():
        raise MineInputError(f"{name} is empty; lower the threshold or raise top_fraction so it covers a region.")
    if (mask > 0).all():
        raise MineInputError(f"{name} covers the whole image, so nothing of the image would be kept; "
                             "select a smaller region (lower top_fraction, dilate_px or feather_px).")


def checked_masks(masks, n_images: int, size) -> np.ndarray:
    """Masks as ``float32 (n_images, H, W)`` in [0, 1], each neither empty nor whole.

    One (H, W) mask applies to every image; masks of another size than ``size`` are resized bilinearly.
    """
    masks = np.asarray(masks)
    if masks.ndim == 2:
        masks = np.broadcast_to(masks, (n_images,) + masks.shape)
    if masks.ndim != 3 or len(masks) != n_images:
        raise MineInputError(f"Expected one mask (H, W) or {n_images} masks (B, H, W), got shape {masks.shape}; "
                             "pass one mask per image.")
    masks = masks.astype(np.float32)
    if not np.isfinite(masks).all() or masks.min() < 0 or masks.max() > 1:
        raise MineInputError("Mask values must lie in [0, 1] (1 = edit, 0 = keep); rescale the masks.")
    masks = resize_masks(masks, size)
    for i, mask in enumerate(masks):
        check_mask_extent(mask, f"Mask {i}")
    return masks


def resize_masks(masks: np.ndarray, size) -> np.ndarray:
    """Bilinear resize of float masks (B, h, w) to ``size`` (kept as they are when already that size)."""
    height, width = _size_pair(size)
    if masks.shape[1:] == (height, width):
        return np.ascontiguousarray(masks, dtype=np.float32)
    from skimage.transform import resize

    return np.stack([resize(m, (height, width), order=1, anti_aliasing=False) for m in masks]).astype(np.float32)


def resize_images(images: np.ndarray, size) -> np.ndarray:
    """Resize uint8 images (B, h, w, 3) to ``size`` (antialiased when shrinking; unchanged when equal)."""
    height, width = _size_pair(size)
    if images.shape[1:3] == (height, width):
        return images
    from skimage.transform import resize

    shrink = height < images.shape[1] or width < images.shape[2]
    resized = [resize(image, (height, width), order=1, anti_aliasing=shrink, preserve_range=True) for image in images]
    return np.clip(np.rint(np.stack(resized)), 0, 255).astype(np.uint8)


def composite(original: np.ndarray, generated: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Blend ``generated`` into ``original`` by the masks; where a mask is 0 the original is kept exactly.

    Parameters
    ----------
    original, generated : uint8 (B, H, W, 3)
    masks : float (B, H, W) in [0, 1]

    Returns
    -------
    uint8 (B, H, W, 3)
    """
    weight = masks[..., None]
    blended = np.rint(weight * generated + (1.0 - weight) * original)
    return np.where(weight > 0, blended, original).astype(np.uint8)


def _size_pair(size) -> tuple[int, int]:
    height, width = (size, size) if np.isscalar(size) else tuple(size)
    if int(height) < 1 or int(width) < 1:
        raise MineInputError(f"Image size {size} is not positive; give a size in pixels, e.g. 512 or (512, 512).")
    return int(height), int(width)
