"""Concept vocabularies and their CLIP text embeddings (DESIGN.md §1 step 3).

MINE reads token contributions out against text embeddings, so a vocabulary is a list of concepts, each with
the prompts whose mean normalised text embedding stands for it (CLIP's prompt ensembling). Three sources:
the synthetic world's categories and attributes, the shipped general visual vocabulary
(``data/vocab/general.txt``) and a user's text file. Embedding thousands of prompts takes seconds to minutes,
so embeddings are cached on disk per model and vocabulary and a second load only reads one small file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from napari_mine.errors import MineInputError

GENERAL_VOCABULARY_FILE = Path(__file__).parent / "data" / "vocab" / "general.txt"
DEFAULT_TEMPLATE = "a photo of a {}"
CACHE_ENV = "NAPARI_MINE_CACHE"
COMMENT = "#"
TEXT_BATCH = 256


@dataclass(frozen=True)
class Phrasing:
    """How descriptions phrase a grouped vocabulary's world; the defaults assume nothing about it.

    Attributes
    ----------
    size_range : (float, float) or None
        Smallest and largest object size (image fraction). With it, the words of the object groups (colour)
        are read in a window of the mean object radius around the region; without, in the region itself.
    position_phrase : callable (x) -> str, or None
        The world's phrase for a horizontal centre ``x`` (image fraction, 0 = left edge). With it, the
        position word says where the region lies; without, it is the position concept most present there.
    """

    size_range: tuple[float, float] | None = None
    position_phrase: Callable[[float], str] | None = None

    @property
    def object_radius(self) -> float | None:
        """Half the mean object size: the standard deviation of the object window (None without sizes)."""
        return None if self.size_range is None else np.mean(self.size_range) / 2


@dataclass(frozen=True)
class Vocabulary:
    """Concepts, the prompts that stand for each, and an optional group per concept.

    Attributes
    ----------
    name : str
        What the vocabulary is (``"general"``, ``"synthetic"``, a file name).
    concepts : tuple of str
        Concept labels, unique.
    prompts : tuple of tuple of str
        The texts whose mean normalised embedding is the concept's embedding (one or more per concept).
    groups : tuple of str
        Group of each concept (``"category"``, ``"color"``, ...) or ``""``; descriptions use groups to
        compose phrases such as "large red face on the left".
    phrasing : Phrasing
        The world's object sizes and position phrases, for caption-style texts (not part of ``digest``).
    """

    name: str
    concepts: tuple[str, ...]
    prompts: tuple[tuple[str, ...], ...]
    groups: tuple[str, ...]
    phrasing: Phrasing = field(default_factory=Phrasing)

    def __post_init__(self):
        if not self.concepts:
            raise MineInputError(f"Vocabulary {self.name!r} has no concepts; give at least two concepts.")
        if not len(self.concepts) == len(self.prompts) == len(self.groups):
            raise MineInputError(f"Vocabulary {self.name!r} needs one prompt list and one group per concept.")
        if any(not prompts for prompts in self.prompts):
            raise MineInputError(f"Every concept of vocabulary {self.name!r} needs at least one prompt.")

    def __len__(self) -> int:
        return len(self.concepts)

    @property
    def digest(self) -> str:
        """sha256 of the concepts, prompts and groups: what the cached embeddings depend on."""
        payload = json.dumps([self.concepts, self.prompts, self.groups], ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ConceptSpace:
    """A vocabulary embedded by one model: what descriptions and profiles read token contributions against.

    Attributes
    ----------
    vocabulary : Vocabulary
    embeddings : float32 (K, D)
        Unit-norm text embedding of each concept (mean of its prompts' normalised embeddings, renormalised).
    directions : float32 (K, D)
        Embeddings minus the mean of their group, renormalised. CLIP text embeddings share a large common
        component; removing it makes a concept's similarity measure what sets it apart from its alternatives
        (red from the other colours, a face from the other categories).
    model_id : str
        The model that made the embeddings (``backbone.record["id"]``), checked against
        a results store before the two are combined.
    group_columns : tuple of int arrays
        Concept indices of each group, in order of first appearance (one array for an ungrouped vocabulary).
    """

    vocabulary: Vocabulary
    embeddings: np.ndarray
    directions: np.ndarray
    model_id: str
    group_columns: tuple[np.ndarray, ...]

    @classmethod
    def from_embeddings(cls, vocabulary: Vocabulary, embeddings: np.ndarray, model_id: str = "") -> "ConceptSpace":
        """Build a concept space from precomputed text embeddings (K, D)."""
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[0] != len(vocabulary):
            raise MineInputError(f"Expected one embedding row per concept ({len(vocabulary)}, D), got shape "
                                 f"{embeddings.shape}; embed the vocabulary with embed_vocabulary.")
        groups = np.asarray(vocabulary.groups)
        columns = tuple(np.flatnonzero(groups == group) for group in dict.fromkeys(vocabulary.groups))
        if any(len(group) < 2 for group in columns):
            raise MineInputError(f"Every concept group of vocabulary {vocabulary.name!r} needs at least two "
                                 "concepts to compare; add concepts or merge the groups.")
        units = _unit_rows(embeddings)
        directions = np.empty_like(units)
        for group in columns:
            directions[group] = _unit_rows(units[group] - units[group].mean(axis=0))
        return cls(vocabulary, units, directions, model_id, columns)


# ----------------------------------------------------------------------------------------------- sources


def synthetic_vocabulary(attributes: bool = True) -> Vocabulary:
    """The synthetic world's concepts: its categories and, optionally, size, colour and position.

    Categories use the world's zero-shot prompts (``scenes.CONCEPT_PROMPTS``). An attribute is an ensemble
    over every category ("a photo of a red face", "a photo of a red house", ...), the form mine-small was
    trained and evaluated with, so the attribute's embedding carries no particular category.
    """
    from napari_mine.synthetic import scenes

    concepts = list(scenes.CATEGORIES)
    prompts = [(scenes.CONCEPT_PROMPTS[category],) for category in scenes.CATEGORIES]
    groups = ["category"] * len(concepts)
    if attributes:
        attribute_prompts = {
            "size": {word: [f"a photo of a {word} {c}" for c in scenes.CATEGORIES]
                     for word in (scenes.size_word(0.0), scenes.size_word(1.0))},
            "color": {color: [f"a photo of a {color} {c}" for c in scenes.CATEGORIES] for color in scenes.COLORS},
            "position": {phrase: [f"a photo of a {c} {phrase}" for c in scenes.CATEGORIES]
                         for phrase in (scenes.position_phrase(0.0), scenes.position_phrase(0.5),
                                        scenes.position_phrase(1.0))},
        }
        for group, by_concept in attribute_prompts.items():
            for concept, texts in by_concept.items():
                concepts.append(concept)
                prompts.append(tuple(texts))
                groups.append(group)
    return Vocabulary("synthetic" if attributes else "synthetic-categories", tuple(concepts), tuple(prompts),
                      tuple(groups), Phrasing(scenes.SIZE_RANGE, scenes.position_phrase))


def general_vocabulary(template: str = DEFAULT_TEMPLATE) -> Vocabulary:
    """The shipped general visual vocabulary (faces, bodies, places, objects, text, colours, materials, ...)."""
    return vocabulary_from_concepts(read_concepts(GENERAL_VOCABULARY_FILE), "general", template)


def vocabulary_named(name: str) -> Vocabulary:
    """A vocabulary by the name the CLI and the docks use: "synthetic", "general" or a text file's path."""
    if name == "synthetic":
        return synthetic_vocabulary()
    if name == "general":
        return general_vocabulary()
    return vocabulary_from_file(name)


def vocabulary_from_file(path: str | os.PathLike, template: str = DEFAULT_TEMPLATE) -> Vocabulary:
    """A user vocabulary: one concept per UTF-8 line (see :func:`read_concepts`), each put into ``template``."""
    path = Path(path)
    return vocabulary_from_concepts(read_concepts(path), path.stem, template)


def vocabulary_from_concepts(concepts, name: str, template: str = DEFAULT_TEMPLATE) -> Vocabulary:
    """A vocabulary of single-prompt concepts, e.g. ``"face"`` → ``"a photo of a face"``."""
    if not isinstance(template, str) or template.count("{}") != 1:
        raise MineInputError(f"Prompt template {template!r} must contain '{{}}' once, e.g. {DEFAULT_TEMPLATE!r}.")
    concepts = tuple(concepts)
    return Vocabulary(name, concepts, tuple((template.format(c),) for c in concepts), ("",) * len(concepts))


def read_concepts(path: str | os.PathLike) -> list[str]:
    """Concepts of a vocabulary text file, in file order.

    One concept per line; whitespace is collapsed, lines starting with ``#`` are comments. Blank lines and
    duplicates (compared case-insensitively, as CLIP's tokenizer lower-cases) are dropped with one warning
    that counts them.

    Parameters
    ----------
    path : path
        A UTF-8 text file.

    Returns
    -------
    list of str
    """
    path = Path(path)
    if not path.is_file():
        raise MineInputError(f"Vocabulary file {str(path)!r} does not exist; check the path.")
    concepts, seen, n_blank, n_duplicate = [], set(), 0, 0
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MineInputError(f"{path} line {number} is not UTF-8 text; save the vocabulary file "
                                 "with UTF-8 encoding.") from None
        concept = re.sub(r"\s+", " ", line.lstrip("\ufeff")).strip()
        if concept.startswith(COMMENT):
            continue
        if not concept:
            n_blank += 1
        elif concept.casefold() in seen:
            n_duplicate += 1
        else:
            seen.add(concept.casefold())
            concepts.append(concept)
    if n_blank or n_duplicate:
        warnings.warn(f"{path.name}: dropped {n_blank} blank lines and {n_duplicate} duplicate concepts.",
                      UserWarning, stacklevel=2)
    if not concepts:
        raise MineInputError(f"Vocabulary file {path} has no concepts; write one concept per line.")
    return concepts


# ----------------------------------------------------------------------------------------------- embeddings


def concept_space(vocabulary: Vocabulary, backbone, cache_dir: str | os.PathLike | None = None,
                  on_progress=None) -> ConceptSpace:
    """Embed ``vocabulary`` with ``backbone`` (cached) and build its concept space."""
    model_id = backbone.record["id"]
    embeddings = embed_vocabulary(vocabulary, backbone, cache_dir=cache_dir, on_progress=on_progress)
    return ConceptSpace.from_embeddings(vocabulary, embeddings, model_id)


def embed_vocabulary(vocabulary: Vocabulary, backbone, cache_dir: str | os.PathLike | None = None,
                     on_progress=None) -> np.ndarray:
    """Unit-norm text embedding per concept, read from the cache when this model embedded it before.

    Parameters
    ----------
    vocabulary : Vocabulary
    backbone : models.backbone.Backbone
        Its ``encode_text`` embeds the prompts; its weights checksum is part of the cache key.
    cache_dir : path, optional
        Folder of cached embeddings; default ``$NAPARI_MINE_CACHE/text-embeddings`` or
        ``~/.cache/napari-mine/text-embeddings``.
    on_progress : callable(done, total), optional
        Called in prompts after each batch of text embedded (not at all when the cache has them).

    Returns
    -------
    float32 (K, D)
    """
    model_id = backbone.record["id"]
    path = cache_path(cache_dir, model_id, vocabulary)
    cached = _read_cache(path, model_id, vocabulary)
    if cached is not None:
        return cached
    embeddings = _ensemble(_encode_texts(backbone, [t for texts in vocabulary.prompts for t in texts], on_progress),
                           [len(texts) for texts in vocabulary.prompts])
    _write_cache(path, embeddings, model_id, vocabulary)
    return embeddings


def cache_path(cache_dir: str | os.PathLike | None, model_id: str, vocabulary: Vocabulary) -> Path:
    """Where the embeddings of ``vocabulary`` by model ``model_id`` are cached."""
    if cache_dir is None:
        root = Path(os.environ.get(CACHE_ENV) or Path("~/.cache/napari-mine").expanduser())
        cache_dir = root / "text-embeddings"
    model_key = hashlib.sha256(model_id.encode("utf-8")).hexdigest()[:16]
    return Path(cache_dir) / f"{model_key}-{vocabulary.digest[:16]}.npz"


def cached_embeddings(vocabulary: Vocabulary, model_id: str, cache_dir: str | os.PathLike | None = None):
    """The embeddings of ``vocabulary`` by model ``model_id`` from a cache folder (default: the user's), or
    None: reading them needs no model, only its id."""
    return _read_cache(cache_path(cache_dir, model_id, vocabulary), model_id, vocabulary)


def save_embeddings(embeddings: np.ndarray, vocabulary: Vocabulary, model_id: str,
                    cache_dir: str | os.PathLike | None = None) -> Path:
    """Write embeddings into a cache folder (atomically) where :func:`cached_embeddings` finds them."""
    path = cache_path(cache_dir, model_id, vocabulary)
    _write_cache(path, np.asarray(embeddings, dtype=np.float32), model_id, vocabulary)
    return path


def _encode_texts(backbone, texts: list[str], on_progress=None) -> np.ndarray:
    """Normalised text embeddings (n, D), in batches so a large vocabulary stays in memory bounds."""
    chunks = []
    for start in range(0, len(texts), TEXT_BATCH):
        chunks.append(backbone.encode_text(texts[start:start + TEXT_BATCH]).float().cpu().numpy())
        if on_progress is not None:
            on_progress(min(start + TEXT_BATCH, len(texts)), len(texts))
    return _unit_rows(np.concatenate(chunks))


def _ensemble(embeddings: np.ndarray, counts: list[int]) -> np.ndarray:
    """Mean of each concept's consecutive prompt embeddings, renormalised (K, D)."""
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return _unit_rows(np.add.reduceat(embeddings, starts, axis=0) / np.asarray(counts)[:, None])


def _read_cache(path: Path, model_id: str, vocabulary: Vocabulary) -> np.ndarray | None:
    """Cached embeddings if the file exists, is readable and was made for this model and vocabulary."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as cached:
            if str(cached["model_id"]) != model_id or str(cached["digest"]) != vocabulary.digest:
                return None
            embeddings = np.asarray(cached["embeddings"], dtype=np.float32)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None  # a damaged cache file is recomputed and replaced
    return embeddings if embeddings.shape[0] == len(vocabulary) else None


def _write_cache(path: Path, embeddings: np.ndarray, model_id: str, vocabulary: Vocabulary) -> None:
    """Write the cache file atomically (temporary file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, embeddings=embeddings.astype(np.float32), model_id=np.array(model_id),
                     digest=np.array(vocabulary.digest))
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _unit_rows(values: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    values = np.asarray(values, dtype=np.float32)
    norms = np.linalg.norm(values, axis=-1, keepdims=True)
    return values / np.maximum(norms, np.finfo(np.float32).tiny)
