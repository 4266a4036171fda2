"""Ground-truth scores of MINE's interpretation steps on a synthetic world (DESIGN.md §6).

Every step after the encoder fit is scored against what the simulated brain really does, on the voxels
where the encoder is good enough for the question to be fair.

* **Voxels scored.** Category voxels (``tuning.kind == "category"``) of the named category ROIs (the labels
  of floc-faces, floc-places, floc-bodies and floc-words; the extra category patches are not ROIs) whose
  noise-ceiling-normalised r (``encoder.zarr accuracy/normalized_r``) is at least 0.5. The dataset's mask
  must be the truth's, so that voxel ``v`` of the encoder is voxel ``v`` of ``brain.tuning``. Results on the
  cortical surface are scored the same way: :func:`score_interpretation` first re-indexes the truth to their
  vertices (:meth:`WorldTruth.for_space`, each vertex the voxel it copies); give the lower-level functions
  ``truth.for_space(results.space)`` likewise.
* **Pairs.** A seeded sample of ``n_voxels`` scored voxels, each with its ``n_images_per_voxel`` images of
  highest predicted response. The object that *truly drives* the voxel on an image is the arg-max over the
  scene's objects of ``brain.object_drives`` (each object's own drive before pooling and saturation).
* **Pointing game.** The top patch of the exact attribution map (patch tokens · w̃) is a hit when its cell's
  centre lies within half a cell width of the driving object's visible pixels (in the stored image's pixel
  grid: a 128 px image on an 8 × 8 grid has 16 px cells, so 8 px). This is the tolerance of Zhang et al.'s
  pointing game (15 px on ~224 px images) scaled to the patch grid, where a patch is located only to its
  cell: the object must show inside the disk inscribed in the top cell. Score: hit rate over pairs.
* **Faithfulness.** ``attribution.faithfulness`` (grey fill) of every method in ``attribution.METHODS`` on a
  seeded sample of the pairs; deletion AUC (lower is better) and insertion AUC (higher is better).
* **Description.** For every pair, :func:`describe.describe_image` against the synthetic vocabulary; correct
  when its best *category* concept is the driving object's category.
* **Profile.** :meth:`Results.profiles` of all scored voxels; correct when the best category
  concept of the voxel's profile is its true preferred category (a profile whose category scores are all
  equal, e.g. all zero, gives no answer and counts as wrong), and the same for the direct-projection
  baseline. Per ROI label, the best category
  concept of the mean profile of its scored voxels, and whether it is the ROI's true category.
* **Clusters.** Per ROI label with at least 10 scored voxels, :func:`describe.cluster_voxels` (k chosen by
  silhouette) on :func:`describe.weight_features` (each voxel's w̃ beside its projection on the vocabulary's
  concept directions, both unit-scaled), scored by the adjusted Rand index against the true
  sub-populations. The weights recover the sub-populations better than the profiles: hemifield, size and
  colour preferences move w̃ along many feature directions, while a profile keeps only what the vocabulary's
  few attribute concepts and the top images' regions show; the projection keeps a colour preference, which
  moves w̃ along a direction the backbone mixes with other objects' colours, from being drowned by the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_mine.errors import MineInputError

from . import scenes as S
from .brain import FLOC_CATEGORY, ROI_FILES, object_drives

MIN_NORMALIZED_R = 0.5
DEFAULT_N_VOXELS = 200
DEFAULT_N_IMAGES_PER_VOXEL = 5
DEFAULT_FAITHFULNESS_PAIRS = 32  # enough for a CI over pairs (8 gave one mean and no spread)
FAITHFULNESS_BOOT = 2000
IG_STEPS = 8
HIT_TOLERANCE = 0.5  # of a cell's width: the pointing game's distance from the top cell's centre
MIN_CLUSTER_VOXELS = 10
CATEGORY_GROUP = "category"
CATEGORY_ROIS = tuple(name for roi_file in FLOC_CATEGORY for name in ROI_FILES[roi_file])
DRIVE_CHUNK = 256


def score_interpretation(results, dataset, truth, backbone, *, seed: int = 0, n_voxels: int = DEFAULT_N_VOXELS,
                         n_images_per_voxel: int = DEFAULT_N_IMAGES_PER_VOXEL,
                         n_faithfulness_pairs: int = DEFAULT_FAITHFULNESS_PAIRS) -> dict:
    """Score attribution, descriptions, profiles and clusters against the world's truth (see the module).

    Parameters
    ----------
    results : Results
        With the "features" and "encoder" steps of ``dataset``.
    dataset : Dataset
        The world loaded with ``load_nsd``.
    truth : WorldTruth
        ``load_truth`` of the same world (re-indexed here to surface results' vertices).
    backbone : Backbone
        The model that made the store's features.
    seed : int
        Seeds the samples of voxels and faithfulness pairs and the clustering.
    n_voxels, n_images_per_voxel : int
        Pairs of the pointing game and the descriptions.
    n_faithfulness_pairs : int
        Pairs of the (slower) faithfulness comparison.

    Returns
    -------
    dict with keys "attribution", "description", "profile", "clusters" (the demo's summary.json sections)
    """
    from napari_mine.vocabulary import concept_space, synthetic_vocabulary

    if min(n_voxels, n_images_per_voxel, n_faithfulness_pairs) < 1:
        raise MineInputError("Scoring needs at least one voxel, one image per voxel and one faithfulness pair.")
    truth = truth.for_space(results.space)
    rng = np.random.default_rng(seed)
    voxels = scored_voxels(results, dataset, truth)
    space = concept_space(synthetic_vocabulary(), backbone)
    pairs = sample_pairs(results, dataset, truth, voxels, rng, n_voxels, n_images_per_voxel)
    faithful = np.sort(rng.choice(len(pairs.rows), size=min(n_faithfulness_pairs, len(pairs.rows)), replace=False))
    faithfulness, faithfulness_pairs = faithfulness_scores(results, dataset, backbone, pairs.rows[faithful],
                                                           pairs.voxels[faithful], seed)
    return {
        "attribution": {
            "pointing_game": float(pointing_game_hits(pairs.tokens, pairs.weights, pairs.masks).mean()),
            "n_pairs": len(pairs.rows),
            "faithfulness": faithfulness,
            "faithfulness_pairs": faithfulness_pairs,
        },
        "description": {
            "top1_accuracy": float(np.mean(description_categories(pairs.tokens, pairs.weights, space)
                                           == pairs.categories)),
            "n_pairs": len(pairs.rows),
        },
        "profile": profile_scores(results, truth, voxels, space),
        "clusters": cluster_scores(results, truth, voxels, space, seed),
    }


# ----------------------------------------------------------------------------------------------- voxels and pairs


@dataclass(frozen=True)
class Pairs:
    """(image, voxel) pairs with what their scores need: the image's token contributions, the voxel's
    effective weights, and the visible mask and category of the object that truly drives the voxel."""

    rows: np.ndarray  # int (P,): store rows (positions in dataset.images)
    voxels: np.ndarray  # int (P,)
    tokens: np.ndarray  # float32 (P, T, D)
    weights: np.ndarray  # float32 (D, P)
    masks: list  # bool (H, W) per pair
    categories: np.ndarray  # str (P,)


def scored_voxels(results, dataset, truth, min_normalized_r: float = MIN_NORMALIZED_R) -> np.ndarray:
    """Encoder voxels that are category voxels of a named category ROI with normalised r ≥ the threshold."""
    check_voxel_order(results, dataset, truth)
    tuning = truth.brain.tuning
    normalized_r = np.nan_to_num(results.accuracy["normalized_r"], nan=-np.inf)
    chosen = (tuning.kind == "category") & np.isin(tuning.roi, CATEGORY_ROIS) & (normalized_r >= min_normalized_r)
    if not chosen.any():
        raise MineInputError(f"No category-ROI voxel of {results.root} reaches a normalised r of {min_normalized_r}; "
                             "fit the encoder on more images before scoring the interpretation.")
    return np.flatnonzero(chosen)


def check_voxel_order(results, dataset, truth) -> None:
    """Refuse a dataset, store and truth whose voxels or images are not the same, in the same order."""
    if dataset.mask.shape != truth.brain.mask.shape or not np.array_equal(dataset.mask, truth.brain.mask):
        raise MineInputError("The dataset's voxel mask is not the ground truth's, so its voxels cannot be matched "
                             "to the true tuning; load the dataset from the world the truth was read from.")
    if results.weights()[0].shape[1] != dataset.n_voxels:
        raise MineInputError(f"The encoder in {results.root} has other voxels than the dataset; refit it on this "
                             "dataset.")
    ids = np.asarray(dataset.images.ids)
    if not np.array_equal(results.image_ids, ids) or ids.max() >= len(truth.scenes):
        raise MineInputError(f"The features in {results.root} are not of this world's images; recompute them for "
                             "the dataset of this world.")


def sample_pairs(results, dataset, truth, voxels: np.ndarray, rng: np.random.Generator, n_voxels: int,
                 n_images: int) -> Pairs:
    """A seeded sample of ``n_voxels`` voxels, each paired with its ``n_images`` best-predicted images."""
    sample = np.sort(rng.choice(voxels, size=min(n_voxels, len(voxels)), replace=False))
    rows, pair_voxels = top_image_pairs(results, sample, n_images)
    scenes = [truth.scenes[i] for i in np.asarray(dataset.images.ids)[rows]]
    drivers = driving_objects(truth.brain, scenes, pair_voxels)
    size = dataset.images[int(rows[0])].shape[0]
    return Pairs(rows, pair_voxels, results.tokens(rows), results.weights()[0][:, pair_voxels],
                 [S.object_masks(scene, size)[driver] for scene, driver in zip(scenes, drivers)],
                 np.array([scene.objects[driver].category for scene, driver in zip(scenes, drivers)], dtype=object))


def top_image_pairs(results, voxels: np.ndarray, n_images: int) -> tuple[np.ndarray, np.ndarray]:
    """Each voxel's ``n_images`` images of highest predicted response, as (store rows, voxels) of all pairs."""
    from napari_mine.describe import top_images

    top = top_images(results.predict(voxels), n_images)
    return top.T.ravel(), np.repeat(voxels, top.shape[0])


def driving_objects(brain, scenes, voxels: np.ndarray) -> np.ndarray:
    """Index of the object that truly drives ``voxels[p]`` in ``scenes[p]`` (arg-max of its own drive)."""
    voxels = np.asarray(voxels)
    drivers = np.empty(len(scenes), int)
    for start in range(0, len(scenes), DRIVE_CHUNK):
        part = slice(start, start + DRIVE_CHUNK)
        drives = object_drives(brain, scenes[part])
        drivers[part] = drives[np.arange(len(drives)), :, voxels[part]].argmax(axis=1)
    return drivers


# ----------------------------------------------------------------------------------------------- attribution


def pointing_game_hits(tokens: np.ndarray, weights: np.ndarray, masks) -> np.ndarray:
    """Whether each pair's top attribution patch points at its object (see the module docstring).

    Parameters
    ----------
    tokens : float (P, T, D)
        Token contributions of each pair's image (class token first, then the g × g patches row-major).
    weights : float (D, P)
        Effective weights of each pair's voxel.
    masks : sequence of bool (H, W)
        The driving object's visible pixels in each pair's image.

    Returns
    -------
    bool (P,)
    """
    from napari_mine.attribution import to_patch_grid

    tokens = np.asarray(tokens, dtype=np.float32)
    weights = np.asarray(weights, dtype=np.float32)
    if tokens.ndim != 3 or weights.shape != (tokens.shape[2], tokens.shape[0]) or len(masks) != len(tokens):
        raise MineInputError(f"Expected tokens (P, T, D), weights (D, P) and P masks, got {tokens.shape}, "
                             f"{weights.shape} and {len(masks)} masks; give one voxel and one mask per image.")
    grids = to_patch_grid(np.einsum("ptd,dp->pt", tokens, weights))
    return np.array([cell_points_at(np.unravel_index(np.argmax(grid), grid.shape), grid.shape[0], mask)
                     for grid, mask in zip(grids, masks)], dtype=bool)


def cell_points_at(cell: tuple[int, int], grid_side: int, mask: np.ndarray) -> bool:
    """True when the centre of patch ``cell`` (row, column) lies within half a cell of a pixel of ``mask``."""
    mask = np.asarray(mask, dtype=bool)
    cell_height, cell_width = mask.shape[0] / grid_side, mask.shape[1] / grid_side
    centre_y, centre_x = (cell[0] + 0.5) * cell_height, (cell[1] + 0.5) * cell_width
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return False
    distance = np.hypot(ys + 0.5 - centre_y, xs + 0.5 - centre_x).min()
    return bool(distance <= HIT_TOLERANCE * min(cell_height, cell_width))


def faithfulness_scores(results, dataset, backbone, rows: np.ndarray, voxels: np.ndarray,
                        seed: int = 0) -> tuple[dict, dict]:
    """Deletion and insertion AUC of every attribution method over the (row, voxel) pairs.

    Returns the mean and 95 % bootstrap CI over pairs per method, and the per-pair values with each pair's
    row, voxel and the share of |terms| its patches carry (so worlds can be pooled and compared pair by pair).
    """
    from napari_mine.attribution import attribution_maps, faithfulness, spatial_fraction

    weights, bias = results.weights()
    pixels = backbone.preprocess(dataset.images[rows])
    per_pair = []
    for index, voxel in enumerate(voxels):
        image = pixels[index:index + 1]
        maps = attribution_maps(backbone, image, weights[:, voxel], n_steps=IG_STEPS)
        per_pair.append(faithfulness(backbone, image, weights[:, voxel], float(bias[voxel]), maps))
    tokens = results.tokens(rows)
    fractions = [float(np.squeeze(spatial_fraction(tokens[i], results.rest()[row], weights[:, voxel], bias[voxel])))
                 for i, (row, voxel) in enumerate(zip(rows, voxels))]
    rng = np.random.default_rng([int(seed), 31])
    draws = rng.integers(0, len(per_pair), size=(FAITHFULNESS_BOOT, len(per_pair)))
    means, pairs = {}, {"row": [int(r) for r in rows], "voxel": [int(v) for v in voxels], "spatial_fraction": fractions}
    for method in per_pair[0]:
        means[method], pairs[method] = {}, {}
        for key in ("deletion_auc", "insertion_auc"):
            values = np.array([pair[method][key] for pair in per_pair])
            means[method][key] = float(values.mean())
            means[method][f"{key}_ci"] = [float(v) for v in np.percentile(values[draws].mean(axis=1), [2.5, 97.5])]
            pairs[method][key] = [float(v) for v in values]
    return means, pairs


# ----------------------------------------------------------------------------------------------- concepts


def description_categories(tokens: np.ndarray, weights: np.ndarray, space) -> np.ndarray:
    """Best category concept of each pair's description ("" where no patch has positive attribution)."""
    from napari_mine.describe import describe_image

    is_category = dict(zip(space.vocabulary.concepts, np.asarray(space.vocabulary.groups) == CATEGORY_GROUP))
    best = []
    for pair_tokens, weight in zip(tokens, np.asarray(weights).T):
        ranked = describe_image(pair_tokens, weight, space, n_concepts=len(space.vocabulary)).concepts
        best.append(next((concept for concept in ranked if is_category[concept]), ""))
    return np.array(best, dtype=object)


def best_categories(scores: np.ndarray, space) -> np.ndarray:
    """Best category concept of each profile row (V, K); "" where every category scores the same (no answer,
    e.g. a MINE profile whose categories all score zero)."""
    columns = np.flatnonzero(np.asarray(space.vocabulary.groups) == CATEGORY_GROUP)
    category_scores = np.atleast_2d(scores)[:, columns]
    names = np.array([space.vocabulary.concepts[c] for c in columns], dtype=object)
    return np.where(np.ptp(category_scores, axis=1) > 0, names[category_scores.argmax(axis=1)], "")


def profile_scores(results, truth, voxels: np.ndarray, space) -> dict:
    """Top-1 category accuracy of the voxels' profiles and baselines, and each ROI's mean-profile category."""
    tuning = truth.brain.tuning
    profiles = results.profiles(space, voxels, use_saved=False)
    true = np.array([S.CATEGORIES[c] for c in tuning.category[voxels]], dtype=object)
    roi_category, roi_correct = {}, {}
    for roi in [name for name in CATEGORY_ROIS if np.any(tuning.roi[voxels] == name)]:
        members = tuning.roi[voxels] == roi
        roi_category[roi] = str(best_categories(profiles.scores[members].mean(axis=0), space)[0])
        roi_correct[roi] = roi_category[roi] == true[members][0]
    return {
        "top1_accuracy": float(np.mean(best_categories(profiles.scores, space) == true)),
        "n_voxels": len(voxels),
        "baseline_top1_accuracy": float(np.mean(best_categories(profiles.baseline, space) == true)),
        "roi_category": roi_category,
        "roi_category_correct": roi_correct,
    }


def cluster_scores(results, truth, voxels: np.ndarray, space, seed: int = 0) -> dict:
    """Adjusted Rand index of clusters of each ROI's weight features against the true sub-populations."""
    from sklearn.metrics import adjusted_rand_score

    from napari_mine.describe import cluster_voxels, weight_features

    tuning = truth.brain.tuning
    weights = weight_features(results.weights()[0][:, voxels].T, space.directions)
    ari = {}
    for roi in CATEGORY_ROIS:
        members = tuning.roi[voxels] == roi
        if members.sum() >= MIN_CLUSTER_VOXELS:
            clusters = cluster_voxels(weights[members], seed=seed).labels
            ari[roi] = float(adjusted_rand_score(tuning.subpopulation[voxels][members], clusters))
    return {"ari": ari, "mean_ari": float(np.mean(list(ari.values()))) if ari else None}
