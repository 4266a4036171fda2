"""The three causal experiments (DESIGN.md §1 step 5): sufficiency, removal and insertion.

Each takes a :class:`~napari_mine.validate.workbench.Workbench` (open it once with ``open_workbench`` and pass it to
every experiment, as ``run_validation`` does) and returns a plain dict of arrays. A response is the
encoder's prediction for the new image (normalised CLIP embedding @ W̃ + b̃) and, with a truth, the true
simulated brain's response to the generated or edited *scene* — the test that is not circular, since the
true brain never sees model features.
"""

from __future__ import annotations

import numpy as np

from napari_mine.errors import MineInputError
from napari_mine.validate.descriptions import (checked_space, feature_phrase, image_feature, low_attribution_text,
                                               random_text)
from napari_mine.validate.edits import (attribution_masks, driving_object_hit, edit_each, edit_result,
                                        edit_summaries, removed_category)
from napari_mine.validate.pairs import checked_pairs, sample_pairs
from napari_mine.validate.stats import N_BOOT, sufficiency_summary

SUFFICIENCY_CONDITIONS = ("mine", "random", "low_attribution")
CONCEPT_SOURCES = ("image", "profile")
TRUE_MEAN_IMAGES = 500  # scenes used for a voxel's mean true response (sufficiency's reference level)
LEVEL_SEED = (0, 41)  # their draw: one per workbench, whatever the run's seed or batch


def sufficiency(bench, *, space=None, pairs=None, mass: float = 0.5, n_boot: int = N_BOOT, seed: int = 0,
                **sampling) -> dict:
    """Images generated from descriptions alone: does MINE's description reproduce the voxel's response?

    For each pair, three descriptions are generated with the same seed (so a pair's images share what the
    descriptions leave open): MINE's per-image description, a description of random concepts, and the same
    describer on the image's lowest-attribution patches (as many as MINE's region has). Responses are taken
    relative to the voxel's mean response over the dataset, so the correlation across pairs measures whether
    the generated image drives the voxel like the original rather than the voxels' different baselines. The
    correlation within voxels (responses centred on each voxel's pairs) asks the harder question: does the
    description follow what sets one of a voxel's top images apart from another?

    Parameters
    ----------
    bench : Workbench
        From :func:`~napari_mine.validate.open_workbench`.
    space : vocabulary.ConceptSpace, optional
        Default: :func:`~napari_mine.validate.default_space`.
    pairs : dict, optional
        From :func:`~napari_mine.validate.sample_pairs`; drawn with ``sampling`` and ``seed`` when omitted.
    mass : float
        Region mass of the descriptions.
    n_boot : int or None
        Bootstrap resamples (None: no summary, see :func:`summarized`).
    seed : int

    Returns
    -------
    dict with the pairs, "descriptions" and "images" per condition, "predicted" and "true" responses
    (original and per condition, centred), and "summary" (correlation, correlation within voxels and MAE
    with 95 % CIs; p-values of MINE against each control).
    """
    from napari_mine.describe import describe_image
    from napari_mine.generate.base import images_of

    space = checked_space(bench, space)
    pairs = sample_pairs(bench.results, seed=seed, **sampling) if pairs is None else checked_pairs(pairs)
    rng = np.random.default_rng([int(seed), 21])
    tokens = bench.tokens(pairs["row"])
    texts = {name: [] for name in SUFFICIENCY_CONDITIONS}
    for pair_tokens, voxel in zip(tokens, pairs["voxel"]):
        weight = bench.weights[:, voxel]
        description = describe_image(pair_tokens, weight, space, mass=mass)
        texts["mine"].append(description.text)
        texts["random"].append(random_text(space, rng))
        texts["low_attribution"].append(low_attribution_text(pair_tokens, weight, space, int(description.region.sum())))
    kept = np.flatnonzero([bool(text) for text in texts["mine"]])
    pairs = {key: values[kept] for key, values in pairs.items()}
    texts = {name: [values[i] for i in kept] for name, values in texts.items()}
    result, _ = pair_record(bench, pairs, tokens[kept])
    result.update(kind="sufficiency", descriptions=texts, n_skipped=int(len(tokens) - len(kept)), conditions={})
    level_predicted, level_true = voxel_levels(bench, pairs["voxel"])
    for name in SUFFICIENCY_CONDITIONS:
        made = bench.generator.generate(texts[name], seed)
        images = images_of(made)
        result["conditions"][name] = {"images": images, "text": texts[name],
                                      "predicted": bench.predict(images, pairs["voxel"]) - level_predicted,
                                      "true": _minus(bench.true(made, pairs["voxel"]), level_true)}
    result["predicted_original"] = result["predicted_original"] - level_predicted
    result["true_original"] = _minus(result["true_original"], level_true)
    return summarized(result, n_boot, seed)


def removal(bench, *, pairs=None, masks=None, mask_fraction: float = 0.1, dilate_px: int = 0, feather_px: int = 0,
            n_boot: int = N_BOOT, seed: int = 0, **sampling) -> dict:
    """Remove the high-attribution feature of each pair's image: the response should fall.

    The edit mask is the top ``mask_fraction`` of the pair's exact attribution map (``attribution_mask``),
    cut to its connected part around the map's peak; the procedural generator removes the object the mask
    overlaps most, a pixel generator inpaints the mask. Pairs the generator cannot edit (a mask over no
    object) are skipped and counted.

    Parameters
    ----------
    bench : Workbench
    pairs : dict, optional
        From :func:`~napari_mine.validate.sample_pairs`.
    masks : float array (P, H, W), optional
        Edit masks to use instead of the attribution masks (e.g. drawn by hand).
    mask_fraction, dilate_px, feather_px
        Passed to :func:`napari_mine.generate.attribution_mask`.
    n_boot, seed : int

    Returns
    -------
    dict with the pairs, "masks", per-pair "predicted_original" / "true_original", the "edited" condition
    (images, responses, deltas), "removed" (the removed object's category, when the edits have scenes) and
    "summary" (sign accuracy of Δ < 0 and mean Δ, with 95 % CIs).
    """
    pairs = sample_pairs(bench.results, seed=seed, **sampling) if pairs is None else checked_pairs(pairs)
    tokens = bench.tokens(pairs["row"])
    record, originals = pair_record(bench, pairs, tokens)
    if masks is None:
        masks = attribution_masks(bench, record["attribution"], mask_fraction, dilate_px, feather_px)
    elif np.shape(masks)[0] != len(pairs["row"]):
        raise MineInputError(f"Got {np.shape(masks)[0]} masks for {len(pairs['row'])} pairs; give one mask per pair.")
    edits = edit_each(bench, "remove", originals, masks, None, seed)
    result = edit_result(bench, "removal", record, pairs, masks, edits)
    if edits["scenes"] is not None and len(edits["kept"]):
        before = [originals[i].scene for i in edits["kept"]]
        result["removed"] = [removed_category(a, b) for a, b in zip(before, edits["scenes"])]
        if bench.truth is not None:
            result["removed_driving_object"] = driving_object_hit(bench, before, edits["scenes"], result["voxel"])
    return summarized(result, n_boot, seed)


def insertion(bench, *, space=None, concept_source: str = "image", pairs=None, low_fraction: float = 0.2,
              mask_fraction: float = 0.15, dilate_px: int = 0, feather_px: int = 0, mass: float = 0.5,
              profile_top_k: int = 20, n_boot: int = N_BOOT, seed: int = 0, **sampling) -> dict:
    """Insert the feature into the voxel's low-response images: the response should rise.

    Each pair gets one target image, drawn (seeded) from the voxel's lowest ``low_fraction`` predicted
    responses; the feature goes where it sat in the pair's top image (the top ``mask_fraction`` of its
    attribution map, cut to the connected part around the peak). The feature is the pair's per-image
    description (``concept_source="image"``) or the voxel's profile (``"profile"``: its top concepts over its
    ``profile_top_k`` top images). The same seed gives both sources the same targets and masks, so their Δ
    can be compared pair by pair.

    Parameters
    ----------
    bench : Workbench
    space : vocabulary.ConceptSpace, optional
    concept_source : {"image", "profile"}
    pairs : dict, optional
    low_fraction : float in (0, 1)
    mask_fraction, dilate_px, feather_px
        Passed to :func:`napari_mine.generate.attribution_mask`.
    mass : float
        Region mass of descriptions and profiles.
    profile_top_k : int
    n_boot, seed : int

    Returns
    -------
    dict like :func:`removal`'s, plus "target_row", "target" images and "concepts"; the summary's sign
    accuracy counts Δ > 0.
    """
    from napari_mine.describe import describe_image

    if concept_source not in CONCEPT_SOURCES:
        raise MineInputError(f"Unknown concept_source {concept_source!r}; use one of {', '.join(CONCEPT_SOURCES)}.")
    if not 0.0 < low_fraction < 1.0:
        raise MineInputError(f"low_fraction must lie in (0, 1), got {low_fraction}; e.g. 0.2 for the lowest 20 %.")
    space = checked_space(bench, space)
    pairs = sample_pairs(bench.results, seed=seed, **sampling) if pairs is None else checked_pairs(pairs)
    tokens = bench.tokens(pairs["row"])
    if concept_source == "image":
        concepts = [image_feature(describe_image(pair_tokens, bench.weights[:, voxel], space, mass=mass),
                                  space.vocabulary) for pair_tokens, voxel in zip(tokens, pairs["voxel"])]
    else:
        profiles = bench.results.profiles(space, np.unique(pairs["voxel"]), top_k=profile_top_k, mass=mass)
        phrase = {int(v): feature_phrase(s, s, space.vocabulary) for v, s in zip(profiles.voxels, profiles.scores)}
        concepts = [phrase[int(v)] for v in pairs["voxel"]]
    target_rows = low_response_rows(bench, pairs["voxel"], low_fraction, seed)
    record, _ = pair_record(bench, pairs, tokens)
    masks = attribution_masks(bench, record["attribution"], mask_fraction, dilate_px, feather_px)
    target, subjects = pair_record(bench, {"voxel": pairs["voxel"], "row": target_rows}, None)
    edits = edit_each(bench, "insert", subjects, masks, concepts, seed)
    record.update(target_row=target_rows, target=target["original"], concepts=concepts, concept_source=concept_source,
                  predicted_original=target["predicted_original"], true_original=target["true_original"])
    return summarized(edit_result(bench, "insertion", record, pairs, masks, edits), n_boot, seed)


def summarized(result: dict, n_boot: int | None, seed: int) -> dict:
    """``result`` with its "summary" (intervals, tests) computed; ``n_boot`` None leaves it out, for a batch of
    pairs whose results are summarised once merged with the others (``summary.merge_results``)."""
    if n_boot is None:
        return result
    if result["kind"] != "sufficiency":
        result["summary"] = edit_summaries(result, n_boot, seed)
        return result
    result["summary"] = {kind: sufficiency_summary(result[f"{kind}_original"],
                                                   {n: c[kind] for n, c in result["conditions"].items()},
                                                   result["voxel"], n_boot, seed)
                         for kind in ("predicted", "true") if result[f"{kind}_original"] is not None}
    return result


# ----------------------------------------------------------------------------------------------- shared steps


def pair_record(bench, pairs: dict, tokens) -> tuple[dict, list]:
    """Originals, their responses and (with tokens) the exact attribution maps of each pair; and the
    originals as Edits, the subjects of the pairs' edits."""
    from napari_mine.attribution import to_patch_grid
    from napari_mine.generate.base import images_of

    rows, voxels = pairs["row"], pairs["voxel"]
    originals = bench.originals(rows)
    images = images_of(originals)
    record = {"voxel": voxels, "row": rows, "roi": pairs.get("roi"), "original": images,
              "predicted_original": bench.predict(images, voxels), "true_original": bench.true(originals, voxels)}
    if tokens is not None:  # attribution.patch_attribution, vectorised over pairs of different voxels
        record["attribution"] = to_patch_grid(np.einsum("ptd,dp->pt", tokens, bench.weights[:, voxels]))
    return record, originals


def low_response_rows(bench, voxels, low_fraction: float, seed: int) -> np.ndarray:
    """One row per pair from its voxel's lowest ``low_fraction`` predicted responses (seeded)."""
    rng = np.random.default_rng([int(seed), 31])
    unique = np.unique(voxels)
    predicted = bench.features @ bench.weights[:, unique] + bench.bias[unique]
    n_low = max(1, int(low_fraction * len(predicted)))
    lowest = np.argsort(predicted, axis=0, kind="stable")[:n_low]
    column = {int(v): i for i, v in enumerate(unique)}
    return np.array([rng.choice(lowest[:, column[int(v)]]) for v in voxels], int)


def voxel_levels(bench, voxels):
    """Each voxel's mean predicted response over the results' images, and its mean true response over (up to
    TRUE_MEAN_IMAGES of) them: the reference level of sufficiency's responses.

    The true levels are drawn once per workbench with a fixed seed (``LEVEL_SEED``), so every batch of pairs of a
    chunked run, and every run, measures a voxel from the same level.
    """
    unique, inverse = np.unique(voxels, return_inverse=True)
    predicted = (bench.features.mean(0) @ bench.weights[:, unique] + bench.bias[unique])[inverse]
    if bench.truth is None:
        return predicted, None
    if bench.true_levels is None:
        rng = np.random.default_rng(LEVEL_SEED)
        rows = rng.choice(len(bench.image_ids), min(TRUE_MEAN_IMAGES, len(bench.image_ids)), replace=False)
        bench.true_levels = bench.truth.true_response(bench.true_scenes(rows)).mean(0)
    return predicted, bench.true_levels[bench.truth_voxels[unique]][inverse]


def _minus(values, level):
    return None if values is None else values - level
