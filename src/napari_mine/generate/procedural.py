"""The synthetic world's renderer as a generator: validation with a brain whose truth is known.

An edit here is an edit of the *scene* (an object removed or added), and the image is the scene rendered,
so validation can measure the true simulated brain on exactly what the image shows
(``WorldTruth.true_response(scenes)``). The ``scenes_*`` methods return the edited scenes; ``originals``,
``generate``, ``remove`` and ``insert`` return :class:`~napari_mine.generate.base.Edit` subjects that carry
both the scene and its rendering. Because backgrounds, clutter and the other objects do not depend on
an object, a rendered edit changes only the visible pixels of the removed or inserted object; everything
else is kept exactly. Unlike the diffusers backend this one does not composite by the mask, since the image
must stay the render of its scene: the whole object under the mask goes (also where it reaches past the
mask), and an inserted object is fitted into the box of the mask's core.

Descriptions use the captions' vocabulary: phrases ``"[a] [small|large] [colour] category [on the left |
on the right | in the centre]"`` joined by "and" or commas (``"an empty scene"`` has no objects);
attributes a phrase leaves out are drawn from the seed. Every attribute a phrase names holds in the scene's
caption, so the true brain sees what the description says (size words included: the world's voxels can
prefer large or small objects).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np

from napari_mine.errors import MineInputError
from napari_mine.generate.base import (Edit, Generator, Progress, StopFlag, checked_descriptions, checked_edits,
                                       checked_masks, per_image, stop_if_asked)
from napari_mine.synthetic import scenes as S

EMPTY_SCENE = "an empty scene"
POSITIONS = {"left": "left", "right": "right", "centre": "centre", "center": "centre"}
FILLER_WORDS = {"a", "an", "the", "on", "in"}
PHOTO_PREFIX = re.compile(r"^\s*(a\s+)?photo\s+of\s+")
PLACEMENT_TRIES = 30
SIZE_WORD_RANGES = {"small": (S.SIZE_RANGE[0], S.LARGE_SIZE), "large": (S.LARGE_SIZE, S.SIZE_RANGE[1])}
GRAMMAR = ("[small|large] [colour] category [on the left|on the right|in the centre] phrases joined by 'and' "
           f"(categories: {', '.join(S.CATEGORIES)}; colours: {', '.join(S.COLORS)})")


class ProceduralGenerator(Generator):
    """Render, remove and insert objects in synthetic-world scenes.

    Parameters
    ----------
    scenes : sequence of Scene, optional
        The world's scenes, so that an image can be addressed by its stimulus index (row of ``imgBrick``).
    size : int
        Side of the rendered images in pixels (masks of another size are resized to it).

    Notes
    -----
    The subjects of :meth:`remove` and :meth:`insert` must carry their scene (an :class:`Edit` from
    :meth:`originals`, :meth:`generate` or an earlier edit), not pixels alone: an edit needs the scene it edits.
    """

    def __init__(self, scenes=(), size: int = S.IMAGE_SIZE):
        self.scenes = list(scenes)
        self.image_size = (int(size), int(size))

    @classmethod
    def from_world(cls, root, size: int | None = None, truth=None) -> "ProceduralGenerator":
        """A generator that knows every stimulus of a world written by ``write_world``.

        Parameters
        ----------
        root : path
            The world's root folder.
        size : int, optional
            Image side; by default the size of the world's stored stimuli.
        truth : WorldTruth, optional
            The world's truth when it is loaded already (its scenes are the stimuli).
        """
        from napari_mine.synthetic.truth import load_truth

        truth = load_truth(root) if truth is None else truth
        return cls(truth.scenes, _stimulus_size(root) if size is None else size)

    # ------------------------------------------------------------------------------------------- scenes

    def scene(self, image) -> S.Scene:
        """The scene of a stimulus index, or ``image`` itself when it is a Scene."""
        if isinstance(image, S.Scene):
            return image
        if isinstance(image, (int, np.integer)) and not isinstance(image, bool):
            if not 0 <= image < len(self.scenes):
                raise MineInputError(f"Stimulus index {image} is outside this world's {len(self.scenes)} scenes; "
                                     "pass an index in range or a Scene.")
            return self.scenes[int(image)]
        raise MineInputError("The procedural generator edits scenes, not pixels; pass stimulus indices "
                             f"or Scene objects (got {type(image).__name__}).")

    def scenes_from_descriptions(self, descriptions, seed: int = 0) -> list[S.Scene]:
        """One new scene per description (see the module docstring for the phrases)."""
        descriptions = checked_descriptions(descriptions)
        return [scene_from_description(text, np.random.default_rng([int(seed), i]))
                for i, text in enumerate(descriptions)]

    def scenes_without(self, images, masks) -> list[S.Scene]:
        """Each scene without the object its mask overlaps most (soft intersection over union)."""
        scenes = [self.scene(image) for image in _as_list(images)]
        masks = checked_masks(masks, len(scenes), self.image_size)
        return [S.remove_object(scene, _object_under(scene, mask, i, self.image_size[0]))
                for i, (scene, mask) in enumerate(zip(scenes, masks))]

    def scenes_with(self, images, masks, concepts, seed: int = 0) -> list[S.Scene]:
        """Each scene with a new object of its concept centred on the mask and as large as the mask's extent.

        A concept is a phrase of the description grammar (``"face"``, ``"large red face"``, ``"a photo of a
        face"``). The object is centred on the mask's centroid and made as large as fits inside the box of
        the mask's core, so it stays (nearly) within the mask — unless a size word asks otherwise: a "large"
        object grows to the caption's large size, a "small" one shrinks below it, so the inserted object is
        what its phrase says. The mask decides where the object goes (a position word is not used); an
        unspecified colour comes from the seed.
        """
        scenes = [self.scene(image) for image in _as_list(images)]
        masks = checked_masks(masks, len(scenes), self.image_size)
        concepts = per_image(concepts, len(scenes), "concept")
        edited = []
        for i, (scene, mask, concept) in enumerate(zip(scenes, masks, concepts)):
            wanted = parse_phrase(PHOTO_PREFIX.sub("", concept.lower()), concept)
            color = wanted["color"] or _draw_color(np.random.default_rng([int(seed), i]))
            x, y, size = _placement_of(mask, wanted["category"], wanted["size"])
            edited.append(S.insert_object(scene, S.SceneObject(wanted["category"], color, x, y, size)))
        return edited

    def render(self, scenes, *, on_progress: Progress = None, should_stop: StopFlag = None) -> np.ndarray:
        """Draw scenes as ``uint8 (B, size, size, 3)``, checking for cancellation before each image."""
        scenes = list(scenes)
        images = np.empty((len(scenes),) + self.image_size + (3,), np.uint8)
        for i, scene in enumerate(scenes):
            stop_if_asked(should_stop)
            images[i] = S.render(scene, self.image_size[0])
            if on_progress is not None:
                on_progress(i + 1, len(scenes))
        return images

    def rendered(self, scenes, *, on_progress: Progress = None, should_stop: StopFlag = None) -> list[Edit]:
        """Each scene with its rendering, as the subjects every operation returns."""
        scenes = list(scenes)
        images = self.render(scenes, on_progress=on_progress, should_stop=should_stop)
        return [Edit(image, scene) for image, scene in zip(images, scenes)]

    # ------------------------------------------------------------------------------------------- interface

    def originals(self, stimuli, images=None) -> list[Edit]:
        """The world's scenes of ``stimuli`` (stimulus indices), rendered at :attr:`image_size`; a stimulus
        is its scene, so ``images`` are not read."""
        return self.rendered([self.scene(stimulus) for stimulus in _as_list(stimuli)])

    def generate(self, descriptions, seed: int = 0, *, on_progress: Progress = None,
                 should_stop: StopFlag = None) -> list[Edit]:
        """A new scene per description, rendered."""
        return self.rendered(self.scenes_from_descriptions(descriptions, seed), on_progress=on_progress,
                             should_stop=should_stop)

    def remove(self, edits, masks, seed: int = 0, *, on_progress: Progress = None,
               should_stop: StopFlag = None) -> list[Edit]:
        """Each scene without the object under its mask, rendered (removal is deterministic; ``seed`` is unused)."""
        return self.rendered(self.scenes_without(_scenes_of(edits), masks), on_progress=on_progress,
                             should_stop=should_stop)

    def insert(self, edits, masks, concepts, seed: int = 0, *, on_progress: Progress = None,
               should_stop: StopFlag = None) -> list[Edit]:
        """Each scene with its concept inserted into the masked region, rendered."""
        return self.rendered(self.scenes_with(_scenes_of(edits), masks, concepts, seed), on_progress=on_progress,
                             should_stop=should_stop)

    def default_vocabulary(self):
        """The synthetic world's vocabulary: the grammar this generator draws."""
        from napari_mine.vocabulary import synthetic_vocabulary

        return synthetic_vocabulary()

    def check_vocabulary(self, vocabulary) -> None:
        """Refuse a vocabulary without the world's categories: its descriptions name nothing this can draw."""
        from napari_mine.describe import HEAD_GROUP

        if HEAD_GROUP not in vocabulary.groups:
            raise MineInputError("The procedural generator draws only the synthetic world's categories; describe "
                                 "with concept_space(synthetic_vocabulary(), backbone).")


# ----------------------------------------------------------------------------------------------- descriptions


def scene_from_description(text: str, rng: np.random.Generator) -> S.Scene:
    """A scene with one object per phrase of ``text``; what a phrase leaves out is drawn from ``rng``.

    Parameters
    ----------
    text : str
        E.g. ``"a large red face on the left and a small car"``.
    rng : numpy Generator

    Returns
    -------
    Scene
    """
    cleaned = PHOTO_PREFIX.sub("", text.strip().lower())
    if cleaned in (EMPTY_SCENE, "empty scene"):
        phrases = []
    else:
        phrases = [p for p in re.split(r",|\band\b", cleaned) if p.strip()]
        if not phrases:
            raise MineInputError(f"The description {text!r} names no object; use {GRAMMAR}.")
    objects: list[S.SceneObject] = []
    for phrase in phrases:
        objects.append(_sample_object(parse_phrase(phrase, text), objects, rng))
    return S.Scene(tuple(objects), S.BACKGROUNDS[int(rng.integers(len(S.BACKGROUNDS)))], int(rng.integers(2**31 - 1)))


def parse_phrase(phrase: str, text: str) -> dict:
    """The attributes one phrase names: ``{"category", "size", "color", "position"}`` (None where unnamed)."""
    found = {"category": None, "size": None, "color": None, "position": None}
    for word in re.findall(r"[a-z]+", phrase.lower()):
        if word in FILLER_WORDS:
            continue
        slot = ("category" if word in S.CATEGORIES else "size" if word in ("small", "large")
                else "color" if word in S.COLORS else "position" if word in POSITIONS else None)
        if slot is None:
            raise MineInputError(f"Unknown word {word!r} in {text!r}; use {GRAMMAR}.")
        if found[slot] is not None:
            raise MineInputError(f"The phrase {phrase.strip()!r} of {text!r} names two {slot}s; "
                                 "give one per object and join objects with 'and'.")
        found[slot] = POSITIONS[word] if slot == "position" else word
    if found["category"] is None:
        raise MineInputError(f"The phrase {phrase.strip()!r} of {text!r} names no category; use {GRAMMAR}.")
    return found


def _sample_object(wanted: dict, placed: list[S.SceneObject], rng: np.random.Generator) -> S.SceneObject:
    """An object with the named attributes, the rest drawn, placed away from the others where it can be."""
    size = float(rng.uniform(*SIZE_WORD_RANGES.get(wanted["size"], S.SIZE_RANGE)))
    color = wanted["color"] or _draw_color(rng)
    for _ in range(PLACEMENT_TRIES):
        x, y = _draw_position(rng, size, wanted["position"])
        if all(np.hypot(x - o.x, y - o.y) > 0.7 * (size + o.size) / 2 for o in placed):
            break
    return S.SceneObject(wanted["category"], color, x, y, size)


def _draw_color(rng: np.random.Generator) -> str:
    return list(S.COLORS)[int(rng.integers(len(S.COLORS)))]


def _draw_position(rng: np.random.Generator, size: float, position: str | None) -> tuple[float, float]:
    """A centre inside the image whose caption phrase is ``position`` (any when None)."""
    half = size / 2
    x_range = {None: (half, 1 - half), "left": (half, S.LEFT_EDGE), "centre": (S.LEFT_EDGE, S.RIGHT_EDGE),
               "right": (np.nextafter(S.RIGHT_EDGE, 1.0), 1 - half)}[position]
    return float(rng.uniform(*x_range)), float(rng.uniform(half, 1 - half))


# ----------------------------------------------------------------------------------------------- masks


def _object_under(scene: S.Scene, mask: np.ndarray, index: int, size: int) -> int:
    """Index of the object whose visible pixels overlap the mask most (soft intersection over union)."""
    visible = S.object_masks(scene, size).astype(np.float32)
    if len(visible):
        overlap = np.minimum(visible, mask).sum((1, 2)) / np.maximum(visible, mask).sum((1, 2))
        if overlap.max() > 0:
            return int(np.argmax(overlap))
    raise MineInputError(f"Mask {index} overlaps no visible object of its scene; draw the mask over an object.")


def _placement_of(mask: np.ndarray, category: str, size_word: str | None = None) -> tuple[float, float, float]:
    """Centre and size (image fractions) of the largest ``category`` object centred on the mask's centroid
    whose bounding box stays inside the box of the mask's core (values >= 0.5, or > 0 for a faint mask);
    a ``size_word`` moves the size into the caption's range for that word."""
    height, width = mask.shape
    weights = mask / mask.sum()
    cy = float((weights.sum(1) * (np.arange(height) + 0.5)).sum())
    cx = float((weights.sum(0) * (np.arange(width) + 0.5)).sum())
    rows, cols = np.nonzero(mask >= 0.5) if (mask >= 0.5).any() else np.nonzero(mask > 0)
    room_y = 2 * min(cy - rows.min(), rows.max() + 1 - cy)
    room_x = 2 * min(cx - cols.min(), cols.max() + 1 - cx)
    span_y, span_x, shift_y, shift_x = _box_per_size(category)
    size = float(np.clip(min(room_y / span_y, room_x / span_x) / width, 1.0 / width, 1.0))
    if size_word == "large":
        size = max(size, S.LARGE_SIZE)
    elif size_word == "small":
        size = min(size, float(np.nextafter(S.LARGE_SIZE, 0.0)))
    x = float(np.clip(cx / width - shift_x * size, 0.0, 1.0))
    y = float(np.clip(cy / height - shift_y * size, 0.0, 1.0))
    return x, y, size


@functools.lru_cache(maxsize=None)
def _box_per_size(category: str) -> tuple[float, float, float, float]:
    """Bounding box of a ``category`` object per unit of its size: height, width, and the box centre's
    offset from the object's centre (rows, columns)."""
    reference, side = 0.5, 256
    silhouette = S.silhouettes(S.Scene((S.SceneObject(category, "red", 0.5, 0.5, reference),), "plain", 0), side)[0]
    rows, cols = np.nonzero(silhouette)
    unit = reference * side
    span_y, span_x = (rows.max() + 1 - rows.min()) / unit, (cols.max() + 1 - cols.min()) / unit
    shift_y = ((rows.min() + rows.max() + 1) / 2 - side / 2) / unit
    shift_x = ((cols.min() + cols.max() + 1) / 2 - side / 2) / unit
    return span_y, span_x, shift_y, shift_x


def _as_list(images) -> list:
    if isinstance(images, (S.Scene, int, np.integer)):
        raise MineInputError("remove and insert take a batch; wrap one stimulus index or Scene in a list.")
    return list(images)


def _scenes_of(edits) -> list[S.Scene]:
    """The scenes of the subjects of an edit, refusing subjects that are pixels alone."""
    edits = checked_edits(edits)
    if any(edit.scene is None for edit in edits):
        raise MineInputError("The procedural generator edits scenes, not pixels; give it the Edits of "
                             "ProceduralGenerator.originals or generate, which carry their scene.")
    return [edit.scene for edit in edits]


def _stimulus_size(root) -> int:
    """Side of the stimuli stored in a world's ``imgBrick``."""
    import h5py

    from napari_mine.synthetic.write_nsd import STIMULI

    path = Path(root) / STIMULI
    if not path.is_file():
        raise MineInputError(f"No stimuli file at {path}; point to a folder written by write_world.")
    with h5py.File(path, "r") as handle:
        return int(handle["imgBrick"].shape[1])
