"""Per-image descriptions, per-voxel profiles and ROI analysis (DESIGN.md §1 steps 3–4).

For an image's token contributions ``C`` (T, D) and a voxel's effective weights ``w̃`` (D,):

* **Region.** Token attribution ``a = C w̃``; the region is the smallest set of patches (the class token
  excluded) whose positive attribution reaches ``mass`` of the image's total positive attribution.
* **Region vector.** ``r = Σ_{t in region} C_t``: what the region adds to the image embedding, in CLIP's joint
  space, so it can be read out against text.
* **Score.** With ``u_k`` the concept directions (text embeddings minus the mean of their group, unit norm):

      presence_k = z_k( cos(r, u_k) )        is concept k in the region, more than its alternatives?
      drive_k    = z_k( u_k · w̃ )            does concept k raise the voxel's prediction, more than they do?
      score_k    = max(presence_k, 0) · max(drive_k, 0)

  where ``z_k`` z-scores across the concepts of k's group (colours against colours, categories against
  categories; an ungrouped vocabulary is one group). A concept scores only when it is both present in the
  region and drives the voxel; z-scoring makes both factors unit-free, so the score does not depend on the
  gain of ``w̃`` or on how far the region vector is from the origin.
* **Text.** A caption-style phrase for a grouped vocabulary; its position word says where the region lies
  (the attribution-weighted centre of its patches), which the exact map knows better than a text readout.
  Its colour word qualifies the *object* the region is part of, so colour presence is read in a window of the
  world's mean object radius around the region's centre: the region is the object's most voxel-driving part,
  which need not show its colour (a face voxel's region is the skin and eyes; the face's colour is its hair).
  The world's object sizes and position phrases come with the vocabulary (``Vocabulary.phrasing``).
* **Profile.** A voxel's profile is the mean of its per-image scores over its top-k images (by predicted
  response), weighted by each region's attribution mass. Since drive does not depend on the image, this is
  ``max(drive, 0)`` times the mass-weighted mean of ``max(presence, 0)``: the voxel's text-space tuning kept
  where its best images' high-attribution regions actually show the concept. The baseline beside it is the
  direct projection ``w̃ · e_k`` on the text embeddings (the text-space analogue of BrainSCUBA).

The functions take arrays; :class:`~napari_mine.results.Results` reads a results folder and calls them.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_mine.attribution import grid_side, patch_attribution
from napari_mine.errors import MineInputError
from napari_mine.vocabulary import ConceptSpace, Vocabulary

DEFAULT_MASS = 0.5
DEFAULT_TOP_K = 20
DEFAULT_N_CONCEPTS = 5
N_PREFIX_TOKENS = 1  # the class token: a source token, but not a place in the image
TEXT_CONCEPTS = 3
HEAD_GROUP = "category"
PHRASE_ORDER = ("size", "color", HEAD_GROUP, "position")  # the synthetic world's caption grammar
POSITION_GROUP = "position"
OBJECT_GROUPS = ("color",)  # attributes of the whole object, read around the region rather than in it
IMAGE_BATCH = 32  # top images whose tokens a profile computation reads at once (ViT-B/16: 0.4 MB each)
PAIR_BATCH = 4096  # (voxel, top image) pairs whose concept presence is one product: bounds pairs × concepts
STORE_VOXEL_BLOCK = 8192  # targets per profile block: each reads its top images' tokens once (10,000 images: 4 GB)
PROFILE_ROWS_PER_CHUNK = 256  # saved profile rows per storage chunk: a row read decompresses 4 MB at 4,086 concepts
DEFAULT_K_RANGE = (2, 6)
SILHOUETTE_ROWS = 8000  # rows whose pairwise distances score every k (float64: 512 MB); a seeded sample above
NIFTI_SUFFIXES = (".nii.gz", ".nii")


# ----------------------------------------------------------------------------------------------- scoring


def high_attribution_region(attribution: np.ndarray, mass: float = DEFAULT_MASS) -> np.ndarray:
    """Smallest set of tokens whose positive attribution reaches ``mass`` of the total positive attribution.

    Parameters
    ----------
    attribution : float (..., P)
    mass : float in (0, 1]

    Returns
    -------
    bool (..., P)
        Empty where no token has positive attribution.
    """
    if not 0.0 < mass <= 1.0:
        raise MineInputError(f"Region mass {mass} is not a fraction; give a value in (0, 1], e.g. 0.5.")
    positive = np.maximum(attribution, 0)
    order = np.argsort(-positive, axis=-1, kind="stable")
    ranked = np.take_along_axis(positive, order, axis=-1)
    before = np.cumsum(ranked, axis=-1) - ranked
    keep = (before < mass * ranked.sum(axis=-1, keepdims=True)) & (ranked > 0)
    region = np.zeros(attribution.shape, dtype=bool)
    np.put_along_axis(region, order, keep, axis=-1)
    return region


def region_vector(tokens: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Sum of the region's token contributions, (..., T, D) and (..., T) → (..., D)."""
    return (region[..., None, :].astype(tokens.dtype) @ tokens)[..., 0, :]


def concept_presence(vectors: np.ndarray, directions: np.ndarray, groups=None) -> np.ndarray:
    """Cosine of region vectors (..., D) with the concept directions (K, D), z-scored within each group of
    concept columns (``ConceptSpace.group_columns``; default one group) → (..., K)."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return _zscore((vectors / np.maximum(norms, np.finfo(np.float32).tiny)) @ directions.T, groups)


def concept_drive(weights: np.ndarray, directions: np.ndarray, groups=None) -> np.ndarray:
    """Projection of the concept directions (K, D) on effective weights (..., D), z-scored within each group
    of concept columns → (..., K)."""
    return _zscore(weights @ directions.T, groups)


def concept_scores(presence: np.ndarray, drive: np.ndarray) -> np.ndarray:
    """``max(presence, 0) · max(drive, 0)``: high only for concepts both in the region and driving the voxel."""
    return np.maximum(presence, 0) * np.maximum(drive, 0)


def rank_concepts(scores: np.ndarray, presence: np.ndarray) -> np.ndarray:
    """Concept indices by score, ties (e.g. all zero) broken by presence, best first."""
    return np.lexsort((-presence, -scores))


def _zscore(values: np.ndarray, groups=None) -> np.ndarray:
    """Standardise along the last axis (concepts), within each group of columns; constant rows become zeros."""
    if groups is None or len(groups) == 1:
        centred = values - values.mean(axis=-1, keepdims=True)
        spread = centred.std(axis=-1, keepdims=True)
        return np.divide(centred, spread, out=np.zeros_like(centred), where=spread > 0)
    standardised = np.empty_like(values)
    for columns in groups:
        standardised[..., columns] = _zscore(values[..., columns])
    return standardised


# ----------------------------------------------------------------------------------------------- descriptions


@dataclass(frozen=True)
class Description:
    """What drives one voxel on one image.

    Attributes
    ----------
    concepts : tuple of str
        Top concepts, best first.
    scores : float32 (n,)
        Their scores (see the module docstring).
    text : str
        A short phrase: "large red face on the left" for grouped (synthetic) vocabularies, its position word
        from where the region lies (:func:`region_x`), the top concepts joined by commas otherwise; empty
        when no patch has positive attribution.
    region : bool (T,)
        Tokens of the high-attribution region.
    attribution : float32 (T,)
        Every token's attribution to the voxel's prediction.
    region_vector : float32 (D,)
        Summed contribution of the region, in CLIP's joint space.
    region_mass : float
        Attribution carried by the region (the weight of this image in the voxel's profile).
    """

    concepts: tuple[str, ...]
    scores: np.ndarray
    text: str
    region: np.ndarray
    attribution: np.ndarray
    region_vector: np.ndarray
    region_mass: float


def describe_image(tokens: np.ndarray, weight: np.ndarray, space: ConceptSpace, *, mass: float = DEFAULT_MASS,
                   n_concepts: int = DEFAULT_N_CONCEPTS, n_prefix_tokens: int = N_PREFIX_TOKENS) -> Description:
    """Describe what drives a voxel on one image, from the image's token contributions.

    Parameters
    ----------
    tokens : float (T, D)
        Token contributions of the image (class token first, then patches).
    weight : float (D,)
        The voxel's effective weights w̃.
    space : ConceptSpace
        The vocabulary embedded by the model that made ``tokens``.
    mass : float in (0, 1]
        Fraction of the positive attribution the region must carry.
    n_concepts : int
        How many top concepts to return.
    n_prefix_tokens : int
        Leading tokens that are not patches (never part of the region).

    Returns
    -------
    Description
    """
    tokens, weight = _checked_image_inputs(tokens, weight, space)
    attribution = patch_attribution(tokens, weight)
    region = np.zeros(len(tokens), dtype=bool)
    region[n_prefix_tokens:] = high_attribution_region(attribution[n_prefix_tokens:], mass)
    vector = region_vector(tokens, region)
    region_mass = float(attribution[region].sum())
    if not region.any():
        return Description((), np.zeros(0, np.float32), "", region, attribution, vector, 0.0)
    presence = region_presence(tokens, attribution, region, space, n_prefix_tokens)
    scores = concept_scores(presence, concept_drive(weight, space.directions, space.group_columns))
    top = rank_concepts(scores, presence)[:n_concepts]
    x = region_x(attribution, region, n_prefix_tokens) if POSITION_GROUP in space.vocabulary.groups else None
    text = description_text(scores, presence, space.vocabulary, x)
    return Description(tuple(space.vocabulary.concepts[i] for i in top), scores[top].astype(np.float32), text,
                       region, attribution, vector, region_mass)


def region_presence(tokens: np.ndarray, attribution: np.ndarray, region: np.ndarray, space: ConceptSpace,
                    n_prefix_tokens: int = N_PREFIX_TOKENS) -> np.ndarray:
    """Presence of each concept (K,): in the region's vector, except for the groups of ``OBJECT_GROUPS``
    (colour), read in the :func:`object_window` around the region when the vocabulary's phrasing knows the
    world's object sizes."""
    presence = concept_presence(region_vector(tokens, region), space.directions, space.group_columns)
    columns = np.flatnonzero(np.isin(space.vocabulary.groups, OBJECT_GROUPS))
    radius = space.vocabulary.phrasing.object_radius
    if columns.size and radius is not None:
        around = object_window(attribution, region, n_prefix_tokens, radius=radius) @ tokens
        presence[columns] = concept_presence(around, space.directions, space.group_columns)[columns]
    return presence


def object_window(attribution: np.ndarray, region: np.ndarray, n_prefix_tokens: int = N_PREFIX_TOKENS, *,
                  radius: float) -> np.ndarray:
    """Token weights (T,) of a Gaussian window around the region's centre (:func:`region_centre`), zero on the
    prefix tokens: where the object the region belongs to lies. Its standard deviation ``radius`` (image
    fraction) is the world's mean object radius, ``Vocabulary.phrasing.object_radius``."""
    y, x = region_centre(attribution, region, n_prefix_tokens)
    side = grid_side(len(attribution), n_prefix_tokens)
    centres = (np.arange(side) + 0.5) / side
    squared = (centres[:, None] - y) ** 2 + (centres[None, :] - x) ** 2
    window = np.zeros(len(attribution), np.float32)
    window[n_prefix_tokens:] = np.exp(-squared / (2 * radius ** 2)).ravel()
    return window


def region_x(attribution: np.ndarray, region: np.ndarray, n_prefix_tokens: int = N_PREFIX_TOKENS) -> float:
    """Horizontal centre of a region (image fraction, 0 = left edge), see :func:`region_centre`."""
    return region_centre(attribution, region, n_prefix_tokens)[1]


def region_centre(attribution: np.ndarray, region: np.ndarray,
                  n_prefix_tokens: int = N_PREFIX_TOKENS) -> tuple[float, float]:
    """(row, column) centre of a region in image fractions (0 = top / left edge): the mean position of its
    patches, weighted by their positive attribution (patches follow the prefix tokens row-major on a square
    grid)."""
    weights = np.where(region, np.maximum(attribution, 0), 0)[n_prefix_tokens:]
    side = grid_side(len(attribution), n_prefix_tokens)
    grid = weights.reshape(side, side)
    if grid.sum() <= 0:
        raise MineInputError("The region has no positive attribution, so it has no place in the image.")
    centres = (np.arange(side) + 0.5) / side
    return float(grid.sum(axis=1) @ centres / grid.sum()), float(grid.sum(axis=0) @ centres / grid.sum())


def description_text(scores: np.ndarray, presence: np.ndarray, vocabulary: Vocabulary,
                     x: float | None = None) -> str:
    """Short phrase for the top concepts.

    A vocabulary with a ``"category"`` group gets a caption-style phrase: the best-scoring category,
    qualified by the attribute of each other group most present in the region (where one is present above
    the vocabulary's average). With the region's horizontal centre ``x`` (:func:`region_x`) and a vocabulary
    whose phrasing has a ``position_phrase``, the position word is the world's phrase for that place instead.
    Any other vocabulary gets its top concepts joined by commas.
    """
    ranking = rank_concepts(scores, presence)
    groups = np.asarray(vocabulary.groups)
    position_phrase = vocabulary.phrasing.position_phrase
    if HEAD_GROUP not in vocabulary.groups:
        return ", ".join(vocabulary.concepts[i] for i in ranking[:TEXT_CONCEPTS])
    words = []
    for group in PHRASE_ORDER:
        members = np.flatnonzero(groups == group)
        if group == HEAD_GROUP:
            words.append(vocabulary.concepts[ranking[np.isin(ranking, members)][0]])
        elif group == POSITION_GROUP and members.size and x is not None and position_phrase is not None:
            words.append(position_phrase(x))
        elif members.size and presence[members].max() > 0:
            words.append(vocabulary.concepts[members[np.argmax(presence[members])]])
    return " ".join(words)


def _checked_image_inputs(tokens, weight, space: ConceptSpace) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.asarray(tokens, dtype=np.float32)
    weight = np.asarray(weight, dtype=np.float32)
    dim = space.directions.shape[1]
    if tokens.ndim != 2 or tokens.shape[1] != dim or weight.shape != (dim,):
        raise MineInputError(f"Expected tokens (T, {dim}) and a weight vector ({dim},) in the concept space's "
                             f"dimension, got {tokens.shape} and {weight.shape}; use one model for both.")
    return tokens, weight


# ----------------------------------------------------------------------------------------------- profiles


@dataclass(frozen=True)
class VoxelProfiles:
    """Ranked concept profiles of many voxels, with the direct-projection baseline beside them.

    Attributes
    ----------
    concepts : tuple of str
        The vocabulary's concepts (columns).
    scores : float32 (V, K)
        MINE profile: per-image scores averaged over the top images, weighted by region attribution mass.
        Saved profiles of many targets keep this and ``baseline`` as zarr arrays, read by rows
        (``scores[rows]``, ``scores[row]``; see ``Results.saved_profiles``).
    baseline : float32 (V, K)
        Direct projection of each voxel's effective weights on the concepts' text embeddings.
    top_images : int (k, V)
        Image rows (of the token array) each profile was built from, highest predicted response first.
    region_mass : float32 (V,)
        Mean attribution mass of the regions over the top images.
    voxels : int (V,)
        The voxels' indices among the encoder's voxels.
    """

    concepts: tuple[str, ...]
    scores: np.ndarray
    baseline: np.ndarray
    top_images: np.ndarray
    region_mass: np.ndarray
    voxels: np.ndarray

    def ranked(self, row: int, n: int = 10, baseline: bool = False) -> list[tuple[str, float]]:
        """The ``n`` best (concept, score) pairs of profile row ``row`` (or of its baseline)."""
        return top_concepts((self.baseline if baseline else self.scores)[row], self.concepts, n)


def top_concepts(profile: np.ndarray, concepts, n: int = 10) -> list[tuple[str, float]]:
    """The ``n`` highest-scoring (concept, score) pairs of one profile (K,)."""
    best = np.argsort(-np.asarray(profile), kind="stable")[:n]
    return [(concepts[i], float(profile[i])) for i in best]


def top_images(predicted: np.ndarray, k: int = DEFAULT_TOP_K) -> np.ndarray:
    """Rows of the ``k`` highest predicted responses per voxel, (N, V) → (k, V), best first."""
    k = min(int(k), predicted.shape[0])
    if k < 1:
        raise MineInputError("Profiles need at least one image per voxel; ask for top_k >= 1.")
    candidates = np.argpartition(-predicted, k - 1, axis=0)[:k]
    order = np.argsort(-np.take_along_axis(predicted, candidates, axis=0), axis=0, kind="stable")
    return np.take_along_axis(candidates, order, axis=0)


def voxel_profiles(tokens: np.ndarray, weights: np.ndarray, top: np.ndarray, space: ConceptSpace, *,
                   mass: float = DEFAULT_MASS, n_prefix_tokens: int = N_PREFIX_TOKENS,
                   voxels: np.ndarray | None = None) -> VoxelProfiles:
    """Profiles of many voxels from their top images' token contributions.

    Parameters
    ----------
    tokens : float (N, T, D), array-like
        Token contributions of the images that ``top`` indexes: anything whose ``tokens[rows]`` reads those
        rows (a numpy or zarr array, a results session's token cache). Each top image is read once, a batch
        of images at a time.
    weights : float (D, V)
        Effective weights W̃ of the voxels.
    top : int (k, V)
        Each voxel's top images (rows of ``tokens``), e.g. from :func:`top_images`.
    space : ConceptSpace
    mass : float in (0, 1]
        Region mass (see :func:`high_attribution_region`).
    n_prefix_tokens : int
        Leading tokens that are not patches.
    voxels : int (V,), optional
        The voxels' indices among the encoder's voxels (default 0..V-1).

    Returns
    -------
    VoxelProfiles
    """
    weights = np.asarray(weights, dtype=np.float32)
    if top.ndim != 2 or top.shape[1] != weights.shape[1] or weights.shape[0] != space.directions.shape[1]:
        raise MineInputError(f"Expected weights (D={space.directions.shape[1]}, V) and top images (k, V), got "
                             f"{weights.shape} and {top.shape}; pass W̃ as the encoder stores it.")
    presence, region_mass = _mean_region_presence(tokens, weights, top, space, mass, n_prefix_tokens)
    drive = concept_drive(weights.T, space.directions, space.group_columns)
    scores = (presence * np.maximum(drive, 0)).astype(np.float32)
    baseline = (weights.T @ space.embeddings.T).astype(np.float32)
    voxels = np.arange(weights.shape[1]) if voxels is None else np.asarray(voxels)
    return VoxelProfiles(space.vocabulary.concepts, scores, baseline, top, region_mass, voxels)


def _mean_region_presence(tokens, weights, top, space: ConceptSpace, mass, n_prefix_tokens):
    """Mass-weighted mean of max(presence, 0) over each voxel's top images, a few products per batch of pairs.

    Presence z-scores, within each group, the cosines of a region vector r with the concept directions; the
    cosine's 1/|r| cancels in the z-score, so presence is r · (u_k − ū_g) over its spread across the group.
    Both the spread and each pair's weight in the mean (its mass over the voxel's total) are positive scales
    of a row, so they fold into one scale per (pair, group) applied before the max: the whole computation is
    one product of the pairs' region vectors with the centred directions, a row scaling, a max and a sum.
    """
    vectors, masses = _region_vectors(tokens, weights, top, mass, n_prefix_tokens)
    n_voxels, n_top = masses.shape
    total = masses.sum(axis=1)
    order = np.concatenate(space.group_columns)  # each group's columns contiguous, so a group is a slice
    directions = space.directions[order]
    bounds = np.cumsum([0] + [len(group) for group in space.group_columns])
    for first, last in zip(bounds[:-1], bounds[1:]):
        directions[first:last] -= directions[first:last].mean(axis=0)
    share = np.divide(masses, total[:, None], out=np.zeros_like(masses), where=total[:, None] > 0).ravel()
    presence = np.empty((n_voxels, len(order)), np.float32)
    step = max(1, PAIR_BATCH // n_top)
    for start in range(0, n_voxels, step):
        voxels = slice(start, min(start + step, n_voxels))
        centred = vectors[voxels].reshape(-1, vectors.shape[-1]) @ directions.T
        weight = share[voxels.start * n_top:voxels.stop * n_top]
        for first, last in zip(bounds[:-1], bounds[1:]):
            group = centred[:, first:last]
            spread = np.sqrt(np.einsum("pk,pk->p", group, group) / (last - first))
            group *= np.divide(weight, spread, out=np.zeros_like(spread), where=spread > 0)[:, None]
        np.maximum(centred, 0, out=centred)
        presence[voxels, order] = centred.reshape(-1, n_top, len(order)).sum(axis=1)
    return presence, total / n_top


def _region_vectors(tokens, weights, top, mass, n_prefix_tokens) -> tuple[np.ndarray, np.ndarray]:
    """Region vector (V, k, D) and region mass (V, k) of every voxel on each of its top images.

    Image-major: the top images are read once each, ``IMAGE_BATCH`` at a time, and an image's patches are
    projected on the weights of all the voxels that have it among their top images (one product per image);
    the regions of a batch's pairs are then selected at once, and each image's region vectors are one
    product of its pairs' region masks with its patches. (They are small, and OpenBLAS's threads stall on
    busy cores, but limiting them is process-wide and its sums depend on the thread count: concurrent Dask
    tasks would then differ from a serial run in the last bit.)
    """
    n_top, n_voxels = top.shape
    images = top.T.ravel()  # pair p = voxel * n_top + rank
    order = np.argsort(images, kind="stable")
    rows, starts = np.unique(images[order], return_index=True)
    ends = np.append(starts[1:], len(order))
    voxel_weights = np.ascontiguousarray(weights.T)
    vectors = np.empty((len(images), weights.shape[0]), np.float32)
    masses = np.empty(len(images), np.float32)
    for first in range(0, len(rows), IMAGE_BATCH):
        batch = slice(first, min(first + IMAGE_BATCH, len(rows)))
        patches = np.asarray(tokens[rows[batch]], dtype=np.float32)[:, n_prefix_tokens:]
        offset = starts[batch.start]
        pairs = order[offset:ends[batch.stop - 1]]
        spans = list(zip(starts[batch] - offset, ends[batch] - offset))
        attribution = np.empty((len(pairs), patches.shape[1]), np.float32)
        for image, (low, high) in enumerate(spans):
            attribution[low:high] = voxel_weights[pairs[low:high] // n_top] @ patches[image].T
        region = high_attribution_region(attribution, mass)
        masses[pairs] = np.where(region, attribution, 0).sum(axis=-1)
        region = region.astype(np.float32)
        for image, (low, high) in enumerate(spans):
            vectors[pairs[low:high]] = region[low:high] @ patches[image]
    return vectors.reshape(n_voxels, n_top, -1), masses.reshape(n_voxels, n_top)


# ----------------------------------------------------------------------------------------------- ROI analysis


@dataclass(frozen=True)
class Clustering:
    """Sub-populations of an ROI's voxels.

    Attributes
    ----------
    labels : int (n,)
        Cluster of each voxel, 1..k, numbered by decreasing cluster size.
    k : int
        The number of clusters with the best silhouette.
    silhouettes : dict of int to float
        Silhouette score of each k tried.
    """

    labels: np.ndarray
    k: int
    silhouettes: dict[int, float]


def roi_profiles(scores: np.ndarray, voxel_labels: np.ndarray, label_names: dict[int, str]) -> dict[str, np.ndarray]:
    """Mean profile of each labelled ROI.

    Parameters
    ----------
    scores : float (V, K)
        Voxel profiles (or baselines).
    voxel_labels : int (V,)
        ROI label of each voxel (the ROI volume read inside the mask); 0 or negative is no ROI.
    label_names : dict of int to str
        Label → ROI name, e.g. ``{2: "FFA-1"}``.

    Returns
    -------
    dict of str to float (K,)
        ROIs without voxels are left out.
    """
    voxel_labels = np.asarray(voxel_labels)
    return {name: scores[voxel_labels == label].mean(axis=0)
            for label, name in label_names.items() if np.any(voxel_labels == label)}


def weight_features(weights: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Voxels' effective weights (V, D) beside their projections on concept directions (K, D), each unit-scaled.

    Within an ROI the weights share the category's direction; what tells sub-populations apart is smaller.
    A colour preference moves w̃ along a direction the backbone mixes with other objects' colours, and is
    drowned by the rest of w̃; read out on the vocabulary's concepts it stands out. Both halves weigh alike.
    Chosen on the tuning worlds 0–3 (lowest ROI's ARI 0.32–0.93 on w̃ alone, 0.71–0.94 with both).
    """
    weights = np.asarray(weights, dtype=np.float64)
    projections = weights @ np.asarray(directions, dtype=np.float64).T
    tiny = np.finfo(float).tiny
    return np.hstack([weights / np.maximum(np.linalg.norm(weights, axis=1, keepdims=True), tiny),
                      projections / np.maximum(np.linalg.norm(projections, axis=1, keepdims=True), tiny)])


def cluster_voxels(features: np.ndarray, k_range: tuple[int, int] = DEFAULT_K_RANGE, seed: int = 0) -> Clustering:
    """Cluster voxels into sub-populations, choosing k by silhouette.

    Rows are scaled to unit norm first, so voxels group by the shape of their tuning, not its gain.

    Parameters
    ----------
    features : float (n, F)
        One row per voxel: its profile, or its effective weights restricted to the ROI's voxels.
    k_range : (int, int)
        Smallest and largest k to try (inclusive); the largest is capped at n - 1.
    seed : int
        Seed of the k-means initialisations.

    Returns
    -------
    Clustering
    """
    from sklearn.cluster import KMeans

    features = np.asarray(features, dtype=np.float64)
    low, high = int(k_range[0]), min(int(k_range[1]), len(features) - 1)
    if low < 2 or high < low:
        raise MineInputError(f"Cannot cluster {len(features)} voxels into {k_range[0]}–{k_range[1]} groups; "
                             "give k_range with 2 <= min <= max and at least max + 1 voxels.")
    rows = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), np.finfo(float).tiny)
    fits = {k: KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(rows) for k in range(low, high + 1)}
    silhouettes = _silhouettes(rows, fits, seed)
    best = max(silhouettes, key=silhouettes.get)
    return Clustering(_number_by_size(fits[best]), best, silhouettes)


def _silhouettes(rows: np.ndarray, fits: dict, seed: int) -> dict[int, float]:
    """Mean silhouette of each k's labels. The pairwise distances are computed once for every k (scikit-learn's
    default recomputes them per k: the same n² × features work for each), on a seeded sample of
    ``SILHOUETTE_ROWS`` rows above that size, as memory grows with n²."""
    from sklearn.metrics import pairwise_distances, silhouette_score

    sample = np.arange(len(rows))
    if len(rows) > SILHOUETTE_ROWS:
        sample = np.sort(np.random.default_rng(seed).choice(len(rows), SILHOUETTE_ROWS, replace=False))
    distances = pairwise_distances(rows[sample])
    return {k: float(silhouette_score(distances, labels[sample], metric="precomputed")) for k, labels in fits.items()}


def _number_by_size(labels: np.ndarray) -> np.ndarray:
    """Relabel clusters 1..k, largest first (ties by first label), so numbers do not depend on k-means' order."""
    values, counts = np.unique(labels, return_counts=True)
    rank = np.empty(len(values), int)
    rank[np.argsort(-counts, kind="stable")] = np.arange(1, len(values) + 1)
    return rank[np.searchsorted(values, labels)]


def labels_volume(labels: np.ndarray, mask: np.ndarray, voxels: np.ndarray) -> np.ndarray:
    """Put per-voxel labels back into a volume, 0 elsewhere.

    Parameters
    ----------
    labels : int (n,)
    mask : bool (X, Y, Z)
        The dataset's voxel mask (masked arrays follow ``np.flatnonzero(mask)`` order).
    voxels : int (n,)
        Each label's voxel index among the mask's voxels.

    Returns
    -------
    int16 (X, Y, Z)
    """
    positions = np.flatnonzero(mask)
    if len(labels) != len(voxels) or (len(voxels) and (np.min(voxels) < 0 or np.max(voxels) >= len(positions))):
        raise MineInputError(f"Got {len(labels)} labels for {len(voxels)} voxels of a {len(positions)}-voxel mask; "
                             "give one label per voxel index inside the mask.")
    volume = np.zeros(mask.shape, np.int16)
    volume.flat[positions[np.asarray(voxels)]] = labels
    return volume


def save_labels_nifti(volume: np.ndarray, affine: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a labels volume as NIfTI with the dataset's affine, atomically; returns the path."""
    import nibabel as nib

    path = Path(path)
    suffix = next((s for s in NIFTI_SUFFIXES if path.name.endswith(s)), None)
    if suffix is None:
        raise MineInputError(f"{path.name} is not a NIfTI file name; end it with .nii.gz or .nii.")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(handle)
    try:
        image = nib.Nifti1Image(np.asarray(volume, np.int16), np.asarray(affine, float))
        image.header.set_intent("label")
        nib.save(image, temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path
