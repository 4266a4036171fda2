"""Which (voxel, image) pairs the experiments run on: the top images of well-predicted category voxels.

Validation asks whether what MINE names drives a voxel, so it samples where MINE claims something: voxels
the encoder predicts well (noise-ceiling-normalised r), in the category ROIs (faces, places, bodies, words,
drawn in turn so each is represented), on the images that drive them most. The draw is seeded, so every
experiment of a run, and every rerun, sees the same pairs.
"""

from __future__ import annotations

import numpy as np

from napari_mine.data.nsd import CATEGORY_ROIS
from napari_mine.errors import MineInputError

# 128 voxels × 2 of their top-10 images: 256 pairs, enough for sufficiency's correlation test (64 pairs gave
# CIs of ±0.2 on r), and two images per voxel show whether a description follows the image within a voxel.
N_VOXELS, IMAGES_PER_VOXEL, TOP_K = 128, 2, 10


def sample_pairs(results, *, n_voxels: int = N_VOXELS, images_per_voxel: int = IMAGES_PER_VOXEL, top_k: int = TOP_K,
                 min_nc_r: float = 0.5, rois=CATEGORY_ROIS, voxels=None, seed: int = 0) -> dict:
    """(voxel, image) pairs from the top images of well-predicted category voxels.

    Voxels are category-ROI voxels whose noise-ceiling-normalised r reaches ``min_nc_r``, drawn in turn from
    each ROI file (faces, places, bodies, words) so every category is represented; each gets
    ``images_per_voxel`` images drawn from its ``top_k`` images by predicted response.

    Parameters
    ----------
    results : napari_mine.results.Results
    n_voxels, images_per_voxel, top_k : int
    min_nc_r : float
    rois : sequence of str
        ROI volumes whose labelled voxels (> 0) count as category voxels.
    voxels : int array, optional
        Use these voxels instead of drawing them.
    seed : int

    Returns
    -------
    dict with "voxel", "row" (feature row) and "roi" (ROI label name) arrays of length P.
    """
    from napari_mine.describe import top_images

    rng = np.random.default_rng([int(seed), 11])
    if not results.has("encoder"):
        raise MineInputError(f"{results.root} has no fitted encoder; run `napari-mine fit` before validating.")
    labels = results.space.label_names(rois)
    if voxels is None:
        voxels = _draw_voxels(results, labels, n_voxels, min_nc_r, rng)
    voxels = np.asarray(voxels, int).ravel()
    n_targets = results.weights()[0].shape[1]
    if not voxels.size or voxels.min() < 0 or voxels.max() >= n_targets:
        raise MineInputError(f"Voxels must lie in 0..{n_targets - 1}; pick voxels of this encoder.")
    if min(top_k, images_per_voxel) < 1:
        raise MineInputError(f"top_k ({top_k}) and images_per_voxel ({images_per_voxel}) must be at least 1.")
    predicted = results.predict(voxels)
    top = top_images(np.where(np.isfinite(predicted), predicted, -np.inf), top_k)
    pair_voxels, rows = [], []
    for column, voxel in enumerate(voxels):
        candidates = top[:, column][np.isfinite(predicted[top[:, column], column])]
        if not candidates.size:
            raise MineInputError(f"Voxel {voxel} has no top images (no finite prediction); choose another voxel.")
        chosen = rng.choice(candidates, min(images_per_voxel, len(candidates)), replace=False)
        pair_voxels += [voxel] * len(chosen)
        rows += list(chosen)
    pair_voxels = np.asarray(pair_voxels, int)
    return {"voxel": pair_voxels, "row": np.asarray(rows, int), "roi": labels[pair_voxels]}


def _draw_voxels(results, labels, n_voxels, min_nc_r, rng) -> np.ndarray:
    """Voxels of the category ROIs with nc-normalised r ≥ ``min_nc_r``, drawn in turn from each ROI file."""
    if not (labels != "").any():
        raise MineInputError(f"{results.root} has no voxel in the category ROIs; pass rois= the ROI volumes of "
                             "your category regions, or voxels= explicitly.")
    nc_r = results.accuracy["normalized_r"]
    eligible = (labels != "") & np.isfinite(nc_r) & (nc_r >= min_nc_r)
    if not eligible.any():
        raise MineInputError(f"No category voxel reaches a noise-ceiling-normalised r of {min_nc_r}; lower "
                             "min_nc_r or fit the encoder on more images.")
    files = results.space.roi_file_of(labels)
    queues = [list(rng.permutation(np.flatnonzero(eligible & (files == f)))) for f in np.unique(files[eligible])]
    chosen = []
    while len(chosen) < n_voxels and any(queues):
        for queue in queues:
            if queue and len(chosen) < n_voxels:
                chosen.append(queue.pop())
    return np.sort(np.asarray(chosen, int))


def checked_pairs(pairs) -> dict:
    """Pairs given by the caller as arrays: 'voxel' and 'row' of one length, 'roi' ("" when not given)."""
    try:
        checked = {key: np.asarray(pairs[key]) for key in ("voxel", "row")}
    except (KeyError, TypeError):
        raise MineInputError("pairs must be a dict with 'voxel' and 'row' arrays, as sample_pairs returns.") from None
    if checked["voxel"].shape != checked["row"].shape or checked["voxel"].ndim != 1 or not checked["voxel"].size:
        raise MineInputError("pairs need 'voxel' and 'row' arrays of one equal, non-zero length.")
    checked["roi"] = np.asarray(pairs.get("roi", np.full(len(checked["row"]), "", dtype=object)), dtype=object)
    return checked
