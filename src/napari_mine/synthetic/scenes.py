"""Procedural scenes: the synthetic world's stimuli, captions and object masks.

The world must be the ground truth for every later score, so a scene is a small, exact description
(objects with category, colour, size and position, a background kind and a seed) and everything else —
pixels, caption, visible object masks, edited scenes — is a deterministic function of it. Background and
clutter come from the scene's seed alone and each object's details from its own attributes, so removing or
inserting an object leaves every other pixel of the scene as it was.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from skimage import draw

from ..errors import MineInputError

IMAGE_SIZE = 128
CATEGORIES: tuple[str, ...] = ("face", "house", "body", "word", "food", "car", "tree", "animal")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 165, 55),
    "blue": (35, 75, 215),
    "yellow": (240, 215, 35),
    "purple": (135, 50, 175),
    "orange": (245, 130, 25),
}
BACKGROUNDS: tuple[str, ...] = ("plain", "outdoor", "indoor", "noise")
SIZE_RANGE = (0.22, 0.5)
LARGE_SIZE = 0.35
LEFT_EDGE, RIGHT_EDGE = 0.4, 0.6
CONCEPT_PROMPTS: dict[str, str] = {category: f"a photo of a {category}" for category in CATEGORIES}

_SKIN_TONES = ((241, 194, 160), (224, 172, 130), (198, 134, 90), (141, 85, 54), (250, 215, 185))
_DARK = (30, 25, 25)
_GLASS = (170, 215, 240)
_PANEL = (245, 243, 232)
_GLYPHS = (
    "01110100011111110001",  # A
    "11111100001111010000",  # F
    "10001100011111110001",  # H
    "11111001000010000100",  # T
    "10001110101011100101",  # N
    "01110100011000101110",  # O
    "11110100011111010010",  # R
    "10000100001000011111",  # L
    "01111100000111000011",  # S
    "11111100001111011111",  # E
)
_GLYPH_ROWS, _GLYPH_COLS = 4, 5


@dataclass(frozen=True)
class SceneObject:
    """One object: ``x``, ``y`` its centre in [0, 1] (image fraction), ``size`` its largest extent as a
    fraction of the image width."""

    category: str
    color: str
    x: float
    y: float
    size: float

    def __post_init__(self):
        if self.category not in CATEGORIES:
            raise MineInputError(f"Unknown object category {self.category!r}; use one of {', '.join(CATEGORIES)}.")
        if self.color not in COLORS:
            raise MineInputError(f"Unknown colour {self.color!r}; use one of {', '.join(COLORS)}.")
        if not (0.0 <= self.x <= 1.0 and 0.0 <= self.y <= 1.0):
            raise MineInputError(f"Object centre ({self.x}, {self.y}) lies outside the image; give x and y in [0, 1].")
        if not 0.0 < self.size <= 1.0:
            raise MineInputError(f"Object size {self.size} is not a fraction of the image width; "
                                 "give a size in (0, 1].")


@dataclass(frozen=True)
class Scene:
    """Objects drawn in order (later ones occlude earlier ones) over a background made from ``seed``."""

    objects: tuple[SceneObject, ...]
    background: str
    seed: int

    def __post_init__(self):
        object.__setattr__(self, "objects", tuple(self.objects))
        if self.background not in BACKGROUNDS:
            raise MineInputError(f"Unknown background {self.background!r}; use one of {', '.join(BACKGROUNDS)}.")
        if not all(isinstance(obj, SceneObject) for obj in self.objects):
            raise MineInputError("A scene's objects must be SceneObject instances; build them with SceneObject(...).")


def concept_phrase(category: str) -> str:
    """Zero-shot text prompt for a category, e.g. ``"a photo of a face"``."""
    if category not in CONCEPT_PROMPTS:
        raise MineInputError(f"Unknown category {category!r}; use one of {', '.join(CATEGORIES)}.")
    return CONCEPT_PROMPTS[category]


# ----------------------------------------------------------------------------------------------- sampling


def sample_scene(rng: np.random.Generator, n_objects: int | None = None, max_objects: int = 4,
                 categories: tuple[str, ...] = CATEGORIES) -> Scene:
    """Draw a random scene of 1–``max_objects`` objects of distinct categories that overlap only partly.

    Parameters
    ----------
    rng : numpy Generator
        Source of all randomness (the scene's own seed is drawn from it).
    n_objects : int, optional
        Exact number of objects; drawn in [1, max_objects] when omitted.
    max_objects : int
        Upper bound for the drawn number of objects.
    categories : tuple of str
        Categories to choose from (distinct within a scene).

    Returns
    -------
    Scene
    """
    if n_objects is None:
        n_objects = int(rng.integers(1, max_objects + 1))
    if not 1 <= n_objects <= len(categories):
        raise MineInputError(f"Cannot place {n_objects} objects of distinct categories; "
                             f"ask for 1 to {len(categories)}.")
    chosen = rng.choice(len(categories), size=n_objects, replace=False)
    objects: list[SceneObject] = []
    for index in chosen:
        objects.append(_place_object(rng, categories[int(index)], objects))
    return Scene(tuple(objects), BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], int(rng.integers(2**31 - 1)))


def _place_object(rng: np.random.Generator, category: str, placed: list[SceneObject]) -> SceneObject:
    """Sample an object whose centre keeps a distance from the others, so occlusion stays partial
    (after repeated failures the object shrinks; the last try is kept if none fits)."""
    color = list(COLORS)[int(rng.integers(len(COLORS)))]
    size = float(rng.uniform(*SIZE_RANGE))
    for attempt in range(60):
        half = size / 2
        x, y = float(rng.uniform(half, 1 - half)), float(rng.uniform(half, 1 - half))
        if all(np.hypot(x - o.x, y - o.y) > 0.7 * (size + o.size) / 2 for o in placed):
            break
        if attempt % 10 == 9:
            size = max(SIZE_RANGE[0] * 0.8, size * 0.9)
    return SceneObject(category, color, x, y, size)


# ----------------------------------------------------------------------------------------------- editing


def remove_object(scene: Scene, index: int) -> Scene:
    """The same scene (background, clutter, other objects) without object ``index``."""
    if not -len(scene.objects) <= index < len(scene.objects):
        raise MineInputError(f"Object index {index} is out of range for a scene of {len(scene.objects)} objects.")
    objects = list(scene.objects)
    del objects[index]
    return dataclasses.replace(scene, objects=tuple(objects))


def insert_object(scene: Scene, obj: SceneObject) -> Scene:
    """The same scene with ``obj`` added on top (drawn last, so it may occlude the others)."""
    if not isinstance(obj, SceneObject):
        raise MineInputError("insert_object needs a SceneObject; "
                             "build one with SceneObject(category, color, x, y, size).")
    return dataclasses.replace(scene, objects=scene.objects + (obj,))


# ----------------------------------------------------------------------------------------------- captions


def size_word(size: float) -> str:
    """``"small"`` or ``"large"``: the caption's word for a continuous size."""
    return "large" if size >= LARGE_SIZE else "small"


def position_phrase(x: float) -> str:
    """Caption phrase for a horizontal centre position."""
    if x < LEFT_EDGE:
        return "on the left"
    if x > RIGHT_EDGE:
        return "on the right"
    return "in the centre"


def object_phrase(obj: SceneObject) -> str:
    """E.g. ``"a large red face on the left"``."""
    return f"a {size_word(obj.size)} {obj.color} {obj.category} {position_phrase(obj.x)}"


def caption(scene: Scene) -> str:
    """Every object of the scene in drawing order, e.g. ``"a large red face on the left and a small blue car
    on the right"``."""
    phrases = [object_phrase(obj) for obj in scene.objects]
    if not phrases:
        return "an empty scene"
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


# ----------------------------------------------------------------------------------------------- serialisation


def scene_to_dict(scene: Scene) -> dict:
    """JSON-ready description of a scene (floats kept exactly)."""
    return {"background": scene.background, "seed": int(scene.seed),
            "objects": [dataclasses.asdict(obj) for obj in scene.objects]}


def scene_from_dict(data: dict) -> Scene:
    """Inverse of :func:`scene_to_dict`."""
    try:
        objects = tuple(SceneObject(o["category"], o["color"], float(o["x"]), float(o["y"]), float(o["size"]))
                        for o in data["objects"])
        return Scene(objects, data["background"], int(data["seed"]))
    except (KeyError, TypeError) as exc:
        raise MineInputError(f"A scene description lacks the field {exc}; write scenes with scene_to_dict.") from None


# ----------------------------------------------------------------------------------------------- rendering


def render(scene: Scene, size: int = IMAGE_SIZE) -> np.ndarray:
    """Draw the scene as a ``uint8 (size, size, 3)`` RGB image."""
    canvas = _background(scene, size)
    for obj in scene.objects:
        for rr, cc, rgb in _object_shapes(obj, size):
            canvas[rr, cc] = rgb
    return np.clip(canvas, 0, 255).astype(np.uint8)


def render_scenes(scenes, size: int = IMAGE_SIZE) -> np.ndarray:
    """Draw many scenes as a ``uint8 (n, size, size, 3)`` stack."""
    images = np.empty((len(scenes), size, size, 3), np.uint8)
    for i, scene in enumerate(scenes):
        images[i] = render(scene, size)
    return images


def silhouettes(scene: Scene, size: int = IMAGE_SIZE) -> np.ndarray:
    """Full (unoccluded) pixel masks of each object, ``bool (n_objects, size, size)``."""
    masks = np.zeros((len(scene.objects), size, size), bool)
    for k, obj in enumerate(scene.objects):
        for rr, cc, _ in _object_shapes(obj, size):
            masks[k, rr, cc] = True
    return masks


def object_masks(scene: Scene, size: int = IMAGE_SIZE) -> np.ndarray:
    """Visible pixels of each object after occlusion by the objects drawn after it,
    ``bool (n_objects, size, size)``."""
    return occlude(silhouettes(scene, size))


def occlude(full_masks: np.ndarray) -> np.ndarray:
    """Visible masks from full silhouettes in drawing order (each hidden where a later one lies)."""
    visible = full_masks.copy()
    if len(visible) > 1:
        covered = np.logical_or.accumulate(full_masks[::-1], axis=0)[::-1]
        visible[:-1] &= ~covered[1:]
    return visible


def _detail_rng(obj: SceneObject) -> np.random.Generator:
    """Per-object randomness (skin tone, letters, fruit count) tied to the object's own attributes."""
    key = [CATEGORIES.index(obj.category), list(COLORS).index(obj.color),
           *(int(round(v * 1e6)) for v in (obj.x, obj.y, obj.size))]
    return np.random.default_rng([7, *key])


def _object_shapes(obj: SceneObject, size: int) -> list[tuple[np.ndarray, np.ndarray, tuple[int, int, int]]]:
    """The object's primitives as ``(rows, cols, rgb)`` in drawing order."""
    geometry = (obj.y * size, obj.x * size, obj.size * size, (size, size))
    return _DRAWERS[obj.category](*geometry, COLORS[obj.color], _detail_rng(obj))


def _rect(cy, cx, h, w, shape):
    return draw.polygon([cy - h / 2, cy - h / 2, cy + h / 2, cy + h / 2],
                        [cx - w / 2, cx + w / 2, cx + w / 2, cx - w / 2], shape=shape)


def _disk(cy, cx, r, shape):
    return draw.disk((cy, cx), max(r, 0.8), shape=shape)


def _ellipse(cy, cx, ry, rx, shape):
    return draw.ellipse(cy, cx, max(ry, 0.8), max(rx, 0.8), shape=shape)


def _face(cy, cx, s, shape, color, rng):
    skin = _SKIN_TONES[int(rng.integers(len(_SKIN_TONES)))]
    eye = max(0.05 * s, 0.8)
    return [
        (*_ellipse(cy - 0.17 * s, cx, 0.3 * s, 0.37 * s, shape), color),
        (*_ellipse(cy + 0.05 * s, cx, 0.43 * s, 0.31 * s, shape), skin),
        (*_disk(cy - 0.03 * s, cx - 0.12 * s, eye, shape), _DARK),
        (*_disk(cy - 0.03 * s, cx + 0.12 * s, eye, shape), _DARK),
        (*_ellipse(cy + 0.23 * s, cx, max(0.03 * s, 0.6), 0.12 * s, shape), (150, 30, 40)),
    ]


def _house(cy, cx, s, shape, color, rng):
    roof = ((110, 60, 40), (80, 80, 90), (60, 40, 35))[int(rng.integers(3))]
    shapes = [
        (*_rect(cy + 0.22 * s, cx, 0.56 * s, 0.8 * s, shape), color),
        (*draw.polygon([cy - 0.06 * s, cy - 0.5 * s, cy - 0.06 * s],
                       [cx - 0.5 * s, cx, cx + 0.5 * s], shape=shape), roof),
        (*_rect(cy + 0.36 * s, cx, 0.28 * s, 0.15 * s, shape), (70, 45, 30)),
    ]
    for dx in (-0.24, 0.24):
        shapes.append((*_rect(cy + 0.12 * s, cx + dx * s, 0.15 * s, 0.15 * s, shape), _GLASS))
    return shapes


def _body(cy, cx, s, shape, color, rng):
    skin = _SKIN_TONES[int(rng.integers(len(_SKIN_TONES)))]
    trousers = ((40, 40, 70), (60, 50, 40), (30, 30, 30))[int(rng.integers(3))]
    shapes = [(*_rect(cy + 0.29 * s, cx + dx * s, 0.42 * s, 0.1 * s, shape), trousers) for dx in (-0.07, 0.07)]
    for side in (-1, 1):
        shapes.append((*draw.polygon([cy - 0.3 * s, cy - 0.3 * s, cy + 0.05 * s, cy + 0.05 * s],
                                     [cx + side * 0.13 * s, cx + side * 0.2 * s, cx + side * 0.3 * s,
                                      cx + side * 0.23 * s], shape=shape), color))
    shapes.append((*_rect(cy - 0.11 * s, cx, 0.4 * s, 0.28 * s, shape), color))
    shapes.append((*_disk(cy - 0.41 * s, cx, 0.09 * s, shape), skin))
    return shapes


def _word(cy, cx, s, shape, color, rng):
    n_letters = int(rng.integers(3, 6))
    letters = [_GLYPHS[int(i)] for i in rng.integers(len(_GLYPHS), size=n_letters)]
    panel = _rect(cy, cx, 0.38 * s, s, shape)
    cell = 0.9 * s / (n_letters * (_GLYPH_COLS + 1))
    top, left = cy - _GLYPH_ROWS * cell / 2, cx - 0.45 * s + cell / 2
    row = np.floor((panel[0] + 0.5 - top) / cell).astype(int)
    col = np.floor((panel[1] + 0.5 - left) / cell).astype(int)
    letter, col_in_letter = np.divmod(col, _GLYPH_COLS + 1)
    inside = (row >= 0) & (row < _GLYPH_ROWS) & (col >= 0) & (letter < n_letters) & (col_in_letter < _GLYPH_COLS)
    bitmap = np.array([[ch == "1" for ch in glyph] for glyph in letters]).reshape(n_letters, _GLYPH_ROWS, _GLYPH_COLS)
    ink = np.zeros(panel[0].shape, bool)
    ink[inside] = bitmap[letter[inside], row[inside], col_in_letter[inside]]
    return [(*panel, _PANEL), (panel[0][ink], panel[1][ink], color)]


def _food(cy, cx, s, shape, color, rng):
    shapes = [(*_ellipse(cy + 0.12 * s, cx, 0.26 * s, 0.5 * s, shape), (200, 200, 205)),
              (*_ellipse(cy + 0.12 * s, cx, 0.2 * s, 0.42 * s, shape), (250, 250, 250))]
    n_fruits = int(rng.integers(1, 4))
    for dx in np.linspace(-0.22, 0.22, n_fruits) if n_fruits > 1 else (0.0,):
        fy, fx = cy - 0.02 * s, cx + dx * s
        shapes.append((*_disk(fy, fx, 0.17 * s, shape), color))
        shapes.append((*_ellipse(fy - 0.19 * s, fx + 0.05 * s, 0.04 * s, 0.08 * s, shape), (40, 120, 40)))
    return shapes


def _car(cy, cx, s, shape, color, rng):
    facing = 1 if rng.random() < 0.5 else -1
    shapes = [
        (*draw.polygon([cy - 0.02 * s, cy - 0.27 * s, cy - 0.27 * s, cy - 0.02 * s],
                       [cx - 0.32 * s, cx - 0.2 * s, cx + 0.2 * s, cx + 0.32 * s], shape=shape), color),
        (*draw.polygon([cy - 0.04 * s, cy - 0.23 * s, cy - 0.23 * s, cy - 0.04 * s],
                       [cx - 0.26 * s, cx - 0.17 * s, cx + 0.17 * s, cx + 0.26 * s], shape=shape), _GLASS),
        (*_rect(cy + 0.12 * s, cx, 0.28 * s, s, shape), color),
        (*_rect(cy + 0.06 * s, cx + facing * 0.46 * s, 0.06 * s, 0.06 * s, shape), (255, 240, 160)),
    ]
    for dx in (-0.3, 0.3):
        shapes.append((*_disk(cy + 0.26 * s, cx + dx * s, 0.12 * s, shape), _DARK))
        shapes.append((*_disk(cy + 0.26 * s, cx + dx * s, 0.05 * s, shape), (160, 160, 160)))
    return shapes


def _tree(cy, cx, s, shape, color, rng):
    shapes = [(*_rect(cy + 0.25 * s, cx, 0.5 * s, 0.12 * s, shape), (105, 70, 40))]
    for dy, dx in ((-0.12, -0.17), (-0.12, 0.17), (-0.28, 0.0)):
        shapes.append((*_disk(cy + dy * s, cx + dx * s, 0.22 * s, shape), color))
    return shapes


def _animal(cy, cx, s, shape, color, rng):
    facing = 1 if rng.random() < 0.5 else -1
    shapes = [(*_rect(cy + 0.2 * s, cx + dx * s, 0.26 * s, 0.06 * s, shape), color) for dx in (-0.22, -0.1, 0.1, 0.22)]
    shapes += [
        (*draw.polygon([cy - 0.05 * s, cy - 0.15 * s, cy - 0.12 * s],
                       [cx - facing * 0.28 * s, cx - facing * 0.5 * s, cx - facing * 0.27 * s], shape=shape), color),
        (*_ellipse(cy, cx, 0.15 * s, 0.32 * s, shape), color),
        (*draw.polygon([cy - 0.2 * s, cy - 0.33 * s, cy - 0.22 * s],
                       [cx + facing * 0.28 * s, cx + facing * 0.33 * s, cx + facing * 0.4 * s], shape=shape), color),
        (*_disk(cy - 0.14 * s, cx + facing * 0.37 * s, 0.12 * s, shape), color),
        (*_disk(cy - 0.16 * s, cx + facing * 0.42 * s, 0.025 * s, shape), _DARK),
    ]
    return shapes


_DRAWERS = {"face": _face, "house": _house, "body": _body, "word": _word, "food": _food, "car": _car,
            "tree": _tree, "animal": _animal}


# ----------------------------------------------------------------------------------------------- backgrounds


def _background(scene: Scene, size: int) -> np.ndarray:
    """Textured background plus low-contrast clutter, from the scene's seed only."""
    rng = np.random.default_rng([int(scene.seed), 0])
    canvas = _TEXTURES[scene.background](rng, size)
    _add_clutter(canvas, rng, size)
    return canvas


def _smooth_noise(rng: np.random.Generator, size: int, grid: int, channels: int) -> np.ndarray:
    """Low-frequency noise: a coarse random grid interpolated bilinearly up to ``size``."""
    coarse = rng.normal(size=(grid, grid, channels))
    pos = np.linspace(0, grid - 1, size)
    lo = np.minimum(np.floor(pos).astype(int), grid - 2)
    frac = (pos - lo)[:, None]
    rows = coarse[lo] * (1 - frac)[..., None] + coarse[lo + 1] * frac[..., None]
    return rows[:, lo] * (1 - frac.T)[..., None] + rows[:, lo + 1] * frac.T[..., None]


def _vertical_ramp(size: int) -> np.ndarray:
    return np.linspace(0.0, 1.0, size)[:, None, None]


def _plain(rng, size):
    base = rng.uniform(150, 235, size=3)
    return np.broadcast_to(base - 25 * _vertical_ramp(size), (size, size, 3)).copy()


def _outdoor(rng, size):
    horizon = int(rng.uniform(0.45, 0.7) * size)
    ramp = _vertical_ramp(size)
    canvas = np.broadcast_to(np.array([120.0, 170, 235]) + 60 * ramp, (size, size, 3)).copy()
    grass = np.array([95.0, 140, 70]) + 18 * _smooth_noise(rng, size, 12, 1)
    grass += 8 * rng.standard_normal((size, size, 1), np.float32)
    canvas[horizon:] = grass[horizon:]
    return canvas


def _indoor(rng, size):
    wall = rng.uniform(170, 225) * np.array([1.0, 0.93, 0.82])
    canvas = np.broadcast_to(wall, (size, size, 3)).copy()
    step = max(size // int(rng.integers(6, 11)), 2)
    canvas[::step] -= 35
    canvas[:, int(rng.integers(step)) :: step] -= 20
    floor = int(rng.uniform(0.72, 0.85) * size)
    canvas[floor:] = np.array([140.0, 100, 70]) + 6 * rng.standard_normal((size - floor, size, 1), np.float32)
    return canvas


def _noise(rng, size):
    return 150 + 35 * _smooth_noise(rng, size, 8, 3) + 12 * rng.standard_normal((size, size, 3), np.float32)


_TEXTURES = {"plain": _plain, "outdoor": _outdoor, "indoor": _indoor, "noise": _noise}


def _add_clutter(canvas: np.ndarray, rng: np.random.Generator, size: int) -> None:
    """Small desaturated blobs, bars and strokes: things in the scene that are none of the categories."""
    for _ in range(int(rng.integers(3, 9))):
        cy, cx = rng.uniform(0, size, 2)
        extent = rng.uniform(0.02, 0.06) * size
        shade = 0.5 * rng.uniform(40, 230, 3) + 0.5 * rng.uniform(80, 200)
        kind = int(rng.integers(3))
        if kind == 0:
            rr, cc = _disk(cy, cx, extent, (size, size))
        elif kind == 1:
            rr, cc = _rect(cy, cx, extent, 2.5 * extent, (size, size))
        else:
            angle = rng.uniform(0, np.pi)
            dy, dx = 2 * extent * np.sin(angle), 2 * extent * np.cos(angle)
            ny, nx = 0.15 * extent * np.cos(angle), -0.15 * extent * np.sin(angle)
            rr, cc = draw.polygon([cy - dy - ny, cy - dy + ny, cy + dy + ny, cy + dy - ny],
                                  [cx - dx - nx, cx - dx + nx, cx + dx + nx, cx + dx - nx], shape=(size, size))
        canvas[rr, cc] = shade
