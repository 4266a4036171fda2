"""Causal validation (DESIGN.md §1 step 5): do the features MINE names really drive the voxel?

Every experiment runs on (voxel, image) pairs drawn from the top images of well-predicted category voxels
(:func:`sample_pairs`):

* :func:`sufficiency` — an image generated from the pair's per-image description alone should drive the
  voxel like the original, better than images generated from a description of random concepts or of the
  image's lowest-attribution patches (same describer, other region);
* :func:`removal` — removing what lies under the high-attribution region should lower the response;
* :func:`insertion` — putting the described feature (or the voxel's top profile concept) into the voxel's
  low-response images, where the feature sat in the top image, should raise it.

A response is the encoder's prediction for the new image (normalised CLIP embedding @ W̃ + b̃) and, on the
synthetic world, also the true simulated brain's response to the generated or edited *scene* — the test
that is not circular, since the true brain never sees model features. Pairs that share a voxel are not
independent, so the voxel is the unit of every interval and test: bootstraps resample voxels with all their
pairs, and the rank test compares per-voxel mean errors. Experiments return plain dicts of arrays;
:func:`run_validation` summarises them into ``summary.json["validation"]`` after each experiment (so a
failure keeps what finished, marked incomplete) and draws example strips (``report_validation``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from napari_mine.errors import MineInputError

CATEGORY_ROIS = ("floc-faces", "floc-places", "floc-bodies", "floc-words")
SUFFICIENCY_CONDITIONS = ("mine", "random", "low_attribution")
CONCEPT_SOURCES = ("image", "profile")
TRUE_MEAN_IMAGES = 500  # scenes used for a voxel's mean true response (sufficiency's reference level)
N_BOOT = 2000
# 128 voxels × 2 of their top-10 images: 256 pairs, enough for sufficiency's correlation test (64 pairs gave
# CIs of ±0.2 on r), and two images per voxel show whether a description follows the image within a voxel.
N_VOXELS, IMAGES_PER_VOXEL, TOP_K = 128, 2, 10


# ----------------------------------------------------------------------------------------------- the study


@dataclass
class Study:
    """What every experiment reads: the store's encoder and features, the generator, and the truth.

    Built by :func:`open_study`; originals are the images as the generator sees them (a synthetic scene
    rendered at the generator's size, or a dataset image resized to it), so edits and their originals are
    encoded the same way.
    """

    store: object
    backbone: object
    generator: object
    truth: object | None
    images: object | None
    weights: np.ndarray  # W̃ (D, V)
    bias: np.ndarray  # b̃ (V,)
    features: np.ndarray  # (N, D)
    image_ids: np.ndarray  # (N,) stimulus ids of the store rows
    truth_voxels: np.ndarray | None  # (V,) index of each store voxel among the truth's voxels

    @property
    def scene_based(self) -> bool:
        from napari_mine.generate import ProceduralGenerator

        return isinstance(self.generator, ProceduralGenerator)

    def predicted(self, rows, voxels) -> np.ndarray:
        """The encoder's prediction from the stored features, one value per (row, voxel) pair."""
        return np.einsum("nd,dn->n", self.features[rows], self.weights[:, voxels]) + self.bias[voxels]

    def predict(self, images: np.ndarray, voxels) -> np.ndarray:
        """The encoder's prediction for new images, ``normalise(encode_image(x)) @ w̃ + b̃`` per pair."""
        embeddings = self.backbone.encode_image(images).float().cpu().numpy()
        return np.einsum("nd,dn->n", embeddings, self.weights[:, voxels]) + self.bias[voxels]

    def true(self, scenes, voxels) -> np.ndarray | None:
        """The true brain's response to each scene for its pair's voxel (None without a truth)."""
        if self.truth is None:
            return None
        return self.truth.true_response(list(scenes))[np.arange(len(voxels)), self.truth_voxels[voxels]]

    def tokens(self, rows) -> np.ndarray:
        """Token contributions (P, T, D) of store rows (each distinct row read once)."""
        unique, inverse = np.unique(rows, return_inverse=True)
        return np.asarray(self.store.group("features")["tokens"].oindex[unique], np.float32)[inverse]

    def scenes(self, rows) -> list:
        """The synthetic scenes of store rows (procedural generator only)."""
        return [self.generator.scene(int(self.image_ids[row])) for row in rows]

    def originals(self, rows) -> np.ndarray:
        """The images of store rows at the generator's size, uint8 (P, H, W, 3)."""
        if self.scene_based:
            return self.generator.render(self.scenes(rows))
        from napari_mine.generate.base import resize_images

        return np.stack([resize_images(_rgb(self.images[int(row)])[None], self.generator.image_size)[0]
                         for row in rows])


def open_study(store, backbone, generator, truth=None, images=None) -> Study:
    """Check the inputs fit together and read what the experiments share.

    Parameters
    ----------
    store : ResultsStore
        With the "features" and "encoder" steps, computed with ``backbone``.
    backbone : models.backbone.Backbone
    generator : generate.Generator
        A :class:`~napari_mine.generate.ProceduralGenerator` of the store's synthetic world, or a pixel
        generator (then ``images`` is needed).
    truth : WorldTruth, optional
        The synthetic world's ground truth (``synthetic.truth.load_truth``); needs the procedural generator.
    images : indexable, optional
        Store row → uint8 image (e.g. ``Dataset.images``), for pixel generators.

    Returns
    -------
    Study
    """
    from napari_mine.generate import Generator
    from napari_mine.pipeline import model_record

    if not store.has("encoder"):
        raise MineInputError(f"{store.root} has no fitted encoder; run `napari-mine fit` before validating.")
    store.require("features", "run `napari-mine features` first.")
    store.check_model(model_record(backbone)["id"])
    if not isinstance(generator, Generator):
        raise MineInputError(f"Validation needs a napari_mine.generate.Generator, got {type(generator).__name__}; "
                             "use ProceduralGenerator.from_world(root) or DiffusionGenerator.load(model).")
    study = Study(store, backbone, generator, truth, images,
                  store.array("encoder", "effective_weights").astype(np.float32),
                  store.array("encoder", "effective_bias").astype(np.float32),
                  store.array("features", "features").astype(np.float32),
                  store.array("features", "image_ids").astype(int), None)
    if study.scene_based:
        if study.image_ids.max() >= len(generator.scenes):
            raise MineInputError(f"The store's images (ids up to {study.image_ids.max()}) are not all scenes of "
                                 f"the generator's world ({len(generator.scenes)} scenes); build the generator "
                                 "with ProceduralGenerator.from_world on the store's world.")
    elif truth is not None:
        raise MineInputError("True responses need the synthetic world's scenes; validate with "
                             "ProceduralGenerator.from_world(root) when passing a truth.")
    elif images is None:
        raise MineInputError(f"{type(generator).__name__} edits pixels; pass images= (e.g. dataset.images) so the "
                             "store's images can be edited.")
    if truth is not None:
        if len(truth.scenes) != len(generator.scenes) or truth.scenes[:50] != generator.scenes[:50]:
            raise MineInputError("The generator and the truth come from different worlds; load both from the "
                                 "same write_world folder.")
        study.truth_voxels = truth_voxels(store, truth)
    return study


def truth_voxels(store, truth) -> np.ndarray:
    """Index of each store voxel among the truth's voxels (both in ``np.flatnonzero(mask)`` order).

    The store's mask is the dataset's (nsdgeneral, possibly with voxels dropped); the truth's is the world's
    nsdgeneral. They must share the grid, and every store voxel must be a voxel of the world.
    """
    mask = store.array("brain", "mask").astype(bool)
    world = np.asarray(truth.brain.mask, bool)
    if mask.shape != world.shape:
        raise MineInputError(f"The store's brain grid {mask.shape} is not the world's {world.shape}; validate "
                             "with the truth of the world the store was computed from.")
    lookup = np.full(world.size, -1)
    lookup[np.flatnonzero(world)] = np.arange(int(world.sum()))
    index = lookup[np.flatnonzero(mask)]
    if (index < 0).any():
        raise MineInputError(f"{int((index < 0).sum())} of the store's voxels lie outside the world's nsdgeneral "
                             "mask; validate with the truth of the world the store was computed from.")
    return index


# ----------------------------------------------------------------------------------------------- sampling


def sample_pairs(store, *, n_voxels: int = N_VOXELS, images_per_voxel: int = IMAGES_PER_VOXEL, top_k: int = TOP_K,
                 min_nc_r: float = 0.5, rois=CATEGORY_ROIS, voxels=None, seed: int = 0) -> dict:
    """(voxel, image) pairs from the top images of well-predicted category voxels.

    Voxels are category-ROI voxels whose noise-ceiling-normalised r reaches ``min_nc_r``, drawn in turn from
    each ROI file (faces, places, bodies, words) so every category is represented; each gets
    ``images_per_voxel`` images drawn from its ``top_k`` images by predicted response.

    Parameters
    ----------
    store : ResultsStore
    n_voxels, images_per_voxel, top_k : int
    min_nc_r : float
    rois : sequence of str
        ROI volumes whose labelled voxels (> 0) count as category voxels.
    voxels : int array, optional
        Use these voxels instead of drawing them.
    seed : int

    Returns
    -------
    dict with "voxel", "row" (store row) and "roi" (ROI label name) arrays of length P.
    """
    from napari_mine.describe import top_images

    rng = np.random.default_rng([int(seed), 11])
    if not store.has("encoder"):
        raise MineInputError(f"{store.root} has no fitted encoder; run `napari-mine fit` before validating.")
    labels = _category_labels(store, rois)
    if voxels is None:
        voxels = _draw_voxels(store, labels, n_voxels, min_nc_r, rng)
    voxels = np.asarray(voxels, int).ravel()
    weights = store.array("encoder", "effective_weights")
    if not voxels.size or voxels.min() < 0 or voxels.max() >= weights.shape[1]:
        raise MineInputError(f"Voxels must lie in 0..{weights.shape[1] - 1}; pick voxels of this encoder.")
    if min(top_k, images_per_voxel) < 1:
        raise MineInputError(f"top_k ({top_k}) and images_per_voxel ({images_per_voxel}) must be at least 1.")
    bias = store.array("encoder", "effective_bias")[voxels]
    predicted = store.array("features", "features") @ weights[:, voxels] + bias
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


def _category_labels(store, rois) -> np.ndarray:
    """ROI label name of every voxel in one of ``rois`` ("" elsewhere)."""
    brain = store.group("brain")
    mask = np.asarray(brain["mask"][...], bool)
    tables = store.manifest["steps"]["brain"]["settings"].get("roi_labels", {})
    labels = np.full(int(mask.sum()), "", dtype=object)
    for roi in rois:
        if roi in tables and f"roi/{roi}" in brain:
            values = np.asarray(brain[f"roi/{roi}"][...])[mask]
            for k, name in tables[roi].items():
                labels[values == int(k)] = name
    return labels


def _draw_voxels(store, labels, n_voxels, min_nc_r, rng) -> np.ndarray:
    """Voxels of the category ROIs with nc-normalised r ≥ ``min_nc_r``, drawn in turn from each ROI file."""
    if not (labels != "").any():
        raise MineInputError(f"{store.root} has no voxel in the category ROIs; pass rois= the ROI volumes of your "
                             "category regions, or voxels= explicitly.")
    nc_r = store.array("encoder", "accuracy/normalized_r")
    eligible = (labels != "") & np.isfinite(nc_r) & (nc_r >= min_nc_r)
    if not eligible.any():
        raise MineInputError(f"No category voxel reaches a noise-ceiling-normalised r of {min_nc_r}; lower "
                             "min_nc_r or fit the encoder on more images.")
    files = _roi_file_of(store, labels)
    queues = [list(rng.permutation(np.flatnonzero(eligible & (files == f)))) for f in np.unique(files[eligible])]
    chosen = []
    while len(chosen) < n_voxels and any(queues):
        for queue in queues:
            if queue and len(chosen) < n_voxels:
                chosen.append(queue.pop())
    return np.sort(np.asarray(chosen, int))


def _roi_file_of(store, labels) -> np.ndarray:
    """ROI file (e.g. "floc-faces") of each label name."""
    tables = store.manifest["steps"]["brain"]["settings"].get("roi_labels", {})
    file_of = {name: roi for roi, table in tables.items() for name in table.values()}
    return np.array([file_of.get(name, "") for name in labels], dtype=object)


# ----------------------------------------------------------------------------------------------- descriptions


def low_attribution_text(tokens, weight, space, n_patches: int, n_prefix_tokens: int = 1) -> str:
    """The same describer as MINE's, read out on the ``n_patches`` lowest-attribution patches instead.

    Parameters
    ----------
    tokens : float (T, D)
    weight : float (D,)
    space : vocabulary.ConceptSpace
    n_patches : int
        Size of the region (that of MINE's high-attribution region, for a matched control).
    n_prefix_tokens : int

    Returns
    -------
    str
    """
    from napari_mine import describe as D

    attribution = D.token_attribution(tokens, weight)
    region = np.zeros(len(tokens), bool)
    region[n_prefix_tokens + np.argsort(attribution[n_prefix_tokens:], kind="stable")[:max(n_patches, 1)]] = True
    place = np.ones(len(tokens))  # the region's patches weigh alike: where it lies, and the object around it
    presence = D.region_presence(tokens, place, region, space, n_prefix_tokens)
    scores = D.concept_scores(presence, D.concept_drive(weight, space.directions, space.group_columns))
    x = D.region_x(place, region, n_prefix_tokens) if D.POSITION_GROUP in space.vocabulary.groups else None
    return D.description_text(scores, presence, space.vocabulary, x)


def random_text(space, rng) -> str:
    """A description of random concepts, phrased like MINE's (random scores and presences)."""
    from napari_mine.describe import description_text

    n = len(space.vocabulary)
    return description_text(rng.standard_normal(n), rng.standard_normal(n), space.vocabulary)


def feature_phrase(scores, presence, vocabulary) -> str:
    """What an insertion puts in: the caption-style phrase of a grouped vocabulary (a category with its
    attributes, which a generator can draw; a grouped vocabulary's best concept may be a colour alone), else
    the single best concept."""
    from napari_mine.describe import HEAD_GROUP, description_text, rank_concepts

    if HEAD_GROUP in vocabulary.groups:
        return description_text(scores, presence, vocabulary)
    return vocabulary.concepts[int(rank_concepts(scores, presence)[0])]


def image_feature(description, vocabulary) -> str:
    """:func:`feature_phrase` of a per-image description ("" when no patch has positive attribution)."""
    from napari_mine.describe import HEAD_GROUP

    if not description.concepts:
        return ""
    return description.text if HEAD_GROUP in vocabulary.groups else description.concepts[0]


def default_space(backbone, generator):
    """The synthetic vocabulary for the procedural generator (its grammar), the general one otherwise."""
    from napari_mine.generate import ProceduralGenerator
    from napari_mine.vocabulary import concept_space, general_vocabulary, synthetic_vocabulary

    vocabulary = synthetic_vocabulary() if isinstance(generator, ProceduralGenerator) else general_vocabulary()
    return concept_space(vocabulary, backbone)


def checked_space(study: Study, space):
    """The concept space descriptions are read in (default: the generator's), refused if it belongs to another
    model than the store's or names what the procedural generator cannot draw."""
    from napari_mine.describe import HEAD_GROUP

    space = default_space(study.backbone, study.generator) if space is None else space
    study.store.check_model(space.model_id)
    if study.scene_based and HEAD_GROUP not in space.vocabulary.groups:
        raise MineInputError("The procedural generator draws only the synthetic world's categories; describe with "
                             "concept_space(synthetic_vocabulary(), backbone).")
    return space


# ----------------------------------------------------------------------------------------------- experiments


def sufficiency(store, backbone, generator, truth=None, *, space=None, pairs=None, images=None, mass: float = 0.5,
                n_boot: int = N_BOOT, seed: int = 0, **sampling) -> dict:
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
    store, backbone, generator, truth, images
        See :func:`open_study`.
    space : vocabulary.ConceptSpace, optional
        Default: :func:`default_space`.
    pairs : dict, optional
        From :func:`sample_pairs`; drawn with ``sampling`` and ``seed`` when omitted.
    mass : float
        Region mass of the descriptions.
    n_boot : int
        Bootstrap resamples.
    seed : int

    Returns
    -------
    dict with the pairs, "descriptions" and "images" per condition, "predicted" and "true" responses
    (original and per condition, centred), and "summary" (correlation, correlation within voxels and MAE
    with 95 % CIs; p-values of MINE against each control).
    """
    from napari_mine.describe import describe_image

    study = open_study(store, backbone, generator, truth, images)
    space = checked_space(study, space)
    pairs = sample_pairs(store, seed=seed, **sampling) if pairs is None else _checked_pairs(pairs)
    rng = np.random.default_rng([int(seed), 21])
    tokens = study.tokens(pairs["row"])
    texts = {name: [] for name in SUFFICIENCY_CONDITIONS}
    for pair_tokens, voxel in zip(tokens, pairs["voxel"]):
        weight = study.weights[:, voxel]
        description = describe_image(pair_tokens, weight, space, mass=mass)
        texts["mine"].append(description.text)
        texts["random"].append(random_text(space, rng))
        texts["low_attribution"].append(low_attribution_text(pair_tokens, weight, space, int(description.region.sum())))
    kept = np.flatnonzero([bool(text) for text in texts["mine"]])
    pairs = {key: values[kept] for key, values in pairs.items()}
    texts = {name: [values[i] for i in kept] for name, values in texts.items()}
    result = _pair_record(study, pairs, tokens[kept])
    result.update(kind="sufficiency", descriptions=texts, n_skipped=int(len(tokens) - len(kept)), conditions={})
    level_predicted, level_true = _voxel_levels(study, pairs["voxel"], seed)
    for name in SUFFICIENCY_CONDITIONS:
        made, scenes = _generate(study, texts[name], seed)
        result["conditions"][name] = {"images": made, "text": texts[name],
                                      "predicted": study.predict(made, pairs["voxel"]) - level_predicted,
                                      "true": _minus(study.true(scenes, pairs["voxel"]), level_true)}
    result["predicted_original"] = result["predicted_original"] - level_predicted
    result["true_original"] = _minus(result["true_original"], level_true)
    result["summary"] = {kind: _sufficiency_summary(result[f"{kind}_original"],
                                                    {n: c[kind] for n, c in result["conditions"].items()},
                                                    pairs["voxel"], n_boot, seed)
                         for kind in ("predicted", "true") if result[f"{kind}_original"] is not None}
    return result


def removal(store, backbone, generator, truth=None, *, pairs=None, images=None, masks=None,
            mask_fraction: float = 0.1, dilate_px: int = 0, feather_px: int = 0, n_boot: int = N_BOOT,
            seed: int = 0, **sampling) -> dict:
    """Remove the high-attribution feature of each pair's image: the response should fall.

    The edit mask is the top ``mask_fraction`` of the pair's exact attribution map (``attribution_mask``),
    cut to its connected part around the map's peak; the procedural generator removes the object the mask
    overlaps most, a pixel generator inpaints the mask. Pairs the generator cannot edit (a mask over no
    object) are skipped and counted.

    Parameters
    ----------
    store, backbone, generator, truth, images
        See :func:`open_study`.
    pairs : dict, optional
        From :func:`sample_pairs`.
    masks : float array (P, H, W), optional
        Edit masks to use instead of the attribution masks (e.g. drawn by hand).
    mask_fraction, dilate_px, feather_px
        Passed to :func:`napari_mine.generate.attribution_mask`.
    n_boot, seed : int

    Returns
    -------
    dict with the pairs, "masks", per-pair "predicted_original" / "true_original", the "edited" condition
    (images, responses, deltas), "removed" (the removed object's category, scene generators) and "summary"
    (sign accuracy of Δ < 0 and mean Δ, with 95 % CIs).
    """
    study = open_study(store, backbone, generator, truth, images)
    pairs = sample_pairs(store, seed=seed, **sampling) if pairs is None else _checked_pairs(pairs)
    tokens = study.tokens(pairs["row"])
    record = _pair_record(study, pairs, tokens)
    if masks is None:
        masks = attribution_masks(study, record["attribution"], mask_fraction, dilate_px, feather_px)
    elif np.shape(masks)[0] != len(pairs["row"]):
        raise MineInputError(f"Got {np.shape(masks)[0]} masks for {len(pairs['row'])} pairs; give one mask per pair.")
    subjects = study.scenes(pairs["row"]) if study.scene_based else record["original"]
    edits = _edit(study, "remove", subjects, masks, None, seed)
    return _edit_result(study, "removal", record, pairs, masks, edits, sign=-1, n_boot=n_boot, seed=seed)


def insertion(store, backbone, generator, truth=None, *, space=None, concept_source: str = "image", pairs=None,
              images=None, low_fraction: float = 0.2, mask_fraction: float = 0.15, dilate_px: int = 0,
              feather_px: int = 0, mass: float = 0.5, profile_top_k: int = 20, n_boot: int = N_BOOT,
              seed: int = 0, **sampling) -> dict:
    """Insert the feature into the voxel's low-response images: the response should rise.

    Each pair gets one target image, drawn (seeded) from the voxel's lowest ``low_fraction`` predicted
    responses; the feature goes where it sat in the pair's top image (the top ``mask_fraction`` of its
    attribution map, cut to the connected part around the peak). The feature is the pair's per-image
    description (``concept_source="image"``) or the voxel's profile (``"profile"``: its top concepts over its
    ``profile_top_k`` top images). The same seed gives both sources the same targets and masks, so their Δ
    can be compared pair by pair.

    Parameters
    ----------
    store, backbone, generator, truth, images
        See :func:`open_study`.
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
    from napari_mine.describe import describe_image, profiles_from_store

    if concept_source not in CONCEPT_SOURCES:
        raise MineInputError(f"Unknown concept_source {concept_source!r}; use one of {', '.join(CONCEPT_SOURCES)}.")
    if not 0.0 < low_fraction < 1.0:
        raise MineInputError(f"low_fraction must lie in (0, 1), got {low_fraction}; e.g. 0.2 for the lowest 20 %.")
    study = open_study(store, backbone, generator, truth, images)
    space = checked_space(study, space)
    pairs = sample_pairs(store, seed=seed, **sampling) if pairs is None else _checked_pairs(pairs)
    tokens = study.tokens(pairs["row"])
    if concept_source == "image":
        concepts = [image_feature(describe_image(pair_tokens, study.weights[:, voxel], space, mass=mass),
                                  space.vocabulary) for pair_tokens, voxel in zip(tokens, pairs["voxel"])]
    else:
        profiles = profiles_from_store(store, space, voxels=np.unique(pairs["voxel"]), top_k=profile_top_k, mass=mass)
        phrase = {int(v): feature_phrase(s, s, space.vocabulary) for v, s in zip(profiles.voxels, profiles.scores)}
        concepts = [phrase[int(v)] for v in pairs["voxel"]]
    target_rows = _low_response_rows(study, pairs["voxel"], low_fraction, seed)
    record = _pair_record(study, pairs, tokens)
    masks = attribution_masks(study, record["attribution"], mask_fraction, dilate_px, feather_px)
    target = _pair_record(study, {"voxel": pairs["voxel"], "row": target_rows}, None)
    subjects = study.scenes(target_rows) if study.scene_based else target["original"]
    edits = _edit(study, "insert", subjects, masks, concepts, seed)
    record.update(target_row=target_rows, target=target["original"], concepts=concepts, concept_source=concept_source,
                  predicted_original=target["predicted_original"], true_original=target["true_original"])
    return _edit_result(study, "insertion", record, pairs, masks, edits, sign=1, n_boot=n_boot, seed=seed)


def delta_ratio(numerator: dict, denominator: dict, kind: str = "predicted", n_boot: int = N_BOOT,
                seed: int = 0) -> dict:
    """Ratio of mean Δ of two insertion results on the same pairs (e.g. profile over per-image), with a
    paired bootstrap 95 % CI (resampling voxels); the ratio is undefined (None) when the denominator's mean Δ
    is not positive.

    Only pairs both results edited count.
    """
    a, b, voxels = _paired_deltas(numerator, denominator, kind)
    if a is None or not len(a):
        return {"value": None, "ci": [None, None], "n": 0}
    ratio = _ratio(a, b)
    samples = _bootstrap(lambda i: _ratio(a[i], b[i]), voxels, n_boot, seed)
    return {"value": ratio, "ci": _ci(samples), "n": int(len(a)), "mean_delta_numerator": float(a.mean()),
            "mean_delta_denominator": float(b.mean())}


# ----------------------------------------------------------------------------------------------- run all


def run_validation(store, backbone, generator, truth=None, *, space=None, images=None, n_voxels: int = N_VOXELS,
                   images_per_voxel: int = IMAGES_PER_VOXEL, top_k: int = TOP_K, min_nc_r: float = 0.5,
                   rois=CATEGORY_ROIS, n_boot: int = N_BOOT, n_examples: int = 4, seed: int = 0,
                   on_progress: Callable[[int, int], None] | None = None) -> dict:
    """Run every experiment on one seeded sample of pairs and write ``summary.json["validation"]``.

    The summary is rewritten after each experiment with ``"complete": False`` until the last, so a failure
    keeps the experiments already done (and leaves the rest of summary.json as it was); the example strips
    go to ``<store>/figures/validation_*.png``.

    Parameters
    ----------
    store, backbone, generator, truth, images
        See :func:`open_study`.
    space : vocabulary.ConceptSpace, optional
    n_voxels, images_per_voxel, top_k, min_nc_r, rois
        See :func:`sample_pairs`.
    n_boot : int
    n_examples : int
        Pairs shown in each strip.
    seed : int
    on_progress : callable, optional
        ``on_progress(done, total)`` after each experiment.

    Returns
    -------
    dict: the "validation" summary (also in summary.json).
    """
    from napari_mine import report_validation

    study = open_study(store, backbone, generator, truth, images)
    space = checked_space(study, space)
    settings = {"n_voxels": n_voxels, "images_per_voxel": images_per_voxel, "top_k": top_k, "min_nc_r": min_nc_r,
                "rois": list(rois), "n_boot": n_boot, "seed": seed, "generator": type(generator).__name__,
                "vocabulary": space.vocabulary.name, "true_brain": truth is not None}
    pairs = sample_pairs(store, n_voxels=n_voxels, images_per_voxel=images_per_voxel, top_k=top_k,
                         min_nc_r=min_nc_r, rois=rois, seed=seed)
    common = {"pairs": pairs, "images": images, "n_boot": n_boot, "seed": seed}
    steps = [
        ("sufficiency", lambda: sufficiency(store, backbone, generator, truth, space=space, **common)),
        ("removal", lambda: removal(store, backbone, generator, truth, **common)),
        ("insertion", lambda: insertion(store, backbone, generator, truth, space=space, **common)),
        ("profile_insertion", lambda: insertion(store, backbone, generator, truth, space=space,
                                                concept_source="profile", **common)),
    ]
    summary = {"settings": settings, "n_pairs": int(len(pairs["row"])), "complete": False}
    results = {}
    for done, (name, experiment) in enumerate(steps, start=1):
        results[name] = experiment()
        summary.update(_summary_entries(name, results, n_boot, seed))
        if done == len(steps):
            summary["figures"] = report_validation.save_strips(store.root / "figures", results, n_examples)
            summary["complete"] = True
        store.update_summary("validation", _plain(summary))
        if on_progress is not None:
            on_progress(done, len(steps))
    return _plain(summary)


def _summary_entries(name: str, results: dict, n_boot: int, seed: int) -> dict:
    """The summary keys an experiment adds."""
    result = results[name]
    if name == "sufficiency":
        return {"sufficiency": {**result["summary"], "n_pairs": len(result["row"]),
                                "n_skipped": result["n_skipped"]}}
    if name in ("removal", "insertion"):
        entry = {kind: result["summary"][kind] for kind in result["summary"]}
        extra = {key: result[key] for key in ("n_skipped", "skip_reason", "removed_driving_object") if key in result}
        return {f"{name}_sign_accuracy": {**entry, **extra}}
    ratio = {kind: delta_ratio(result, results["insertion"], kind, n_boot, seed)
             for kind in result["summary"]}
    return {"profile_insertion": {kind: result["summary"][kind] for kind in result["summary"]},
            "profile_vs_image_insertion_delta_ratio": ratio}


# ----------------------------------------------------------------------------------------------- helpers


def _checked_pairs(pairs) -> dict:
    try:
        checked = {key: np.asarray(pairs[key]) for key in ("voxel", "row")}
    except (KeyError, TypeError):
        raise MineInputError("pairs must be a dict with 'voxel' and 'row' arrays, as sample_pairs returns.") from None
    if checked["voxel"].shape != checked["row"].shape or checked["voxel"].ndim != 1 or not checked["voxel"].size:
        raise MineInputError("pairs need 'voxel' and 'row' arrays of one equal, non-zero length.")
    checked["roi"] = np.asarray(pairs.get("roi", np.full(len(checked["row"]), "", dtype=object)), dtype=object)
    return checked


def _pair_record(study: Study, pairs: dict, tokens) -> dict:
    """Originals, their responses and (with tokens) the exact attribution maps of each pair."""
    from napari_mine.attribution import to_patch_grid

    rows, voxels = pairs["row"], pairs["voxel"]
    original = study.originals(rows)
    record = {"voxel": voxels, "row": rows, "roi": pairs.get("roi"), "original": original,
              "predicted_original": study.predict(original, voxels),
              "true_original": study.true(study.scenes(rows), voxels) if study.truth is not None else None}
    if tokens is not None:  # attribution.patch_attribution, vectorised over pairs of different voxels
        record["attribution"] = to_patch_grid(np.einsum("ptd,dp->pt", tokens, study.weights[:, voxels]))
    return record


def attribution_masks(study: Study, maps, fraction, dilate_px, feather_px) -> np.ndarray:
    """Edit masks from attribution maps, each cut to the connected part that holds the map's peak.

    The top pixels of a map often fall on two objects; one edit should change one feature (and an
    insertion fitted to two blobs would be as large as both together).
    """
    from scipy.ndimage import label

    from napari_mine.attribution import upsample
    from napari_mine.generate import attribution_mask

    masks = []
    for grid in maps:
        mask = attribution_mask(grid, study.generator.image_size, top_fraction=fraction, dilate_px=dilate_px,
                                feather_px=feather_px)
        parts, _ = label(mask > 0)
        peak = np.unravel_index(np.argmax(np.where(mask > 0, upsample(grid, mask.shape), -np.inf)), mask.shape)
        masks.append(np.where(parts == parts[peak], mask, 0.0).astype(np.float32))
    return np.stack(masks)


def _generate(study: Study, texts, seed: int):
    """Images (and scenes, for the procedural generator) generated from descriptions."""
    if study.scene_based:
        scenes = study.generator.scenes_from_descriptions(texts, seed)
        return study.generator.render(scenes), scenes
    return study.generator.generate(texts, seed), None


def _edit(study: Study, action: str, subjects, masks, concepts, seed: int) -> dict:
    """Edit each pair on its own (seeded by position); a pair the generator refuses is skipped."""
    from napari_mine.generate.base import image_seeds

    seeds = image_seeds(seed, len(subjects))
    images, scenes, kept, reasons = [], [], [], []
    for i, subject in enumerate(subjects):
        concept = None if concepts is None else concepts[i]
        if concept == "":
            reasons.append("the description is empty (no patch has positive attribution).")
            continue
        try:
            if study.scene_based:
                scene = edit_scene(study.generator, action, subject, masks[i], concept, seeds[i])
                scenes.append(scene)
                images.append(study.generator.render([scene])[0])
            else:
                images.append(_edit_pixels(study.generator, action, subject, masks[i], concept, seeds[i]))
        except MineInputError as error:
            reasons.append(str(error))
            continue
        if images[-1].shape != images[0].shape or (not study.scene_based and images[-1].shape != subject.shape):
            raise MineInputError(f"{type(study.generator).__name__} returned an edit of shape {images[-1].shape} for "
                                 f"an image of shape {np.shape(subject)}; a generator's edits must keep the size.")
        kept.append(i)
    return {"images": np.asarray(images, np.uint8), "scenes": scenes if study.scene_based else None,
            "kept": np.asarray(kept, int), "reasons": reasons}


def edit_scene(generator, action: str, scene, mask, concept, seed: int):
    """One synthetic-world scene with the object under ``mask`` removed, or ``concept`` inserted there."""
    if action == "remove":
        return generator.scenes_without([scene], mask[None])[0]
    return generator.scenes_with([scene], mask[None], [concept], seed)[0]


def _edit_pixels(generator, action: str, image, mask, concept, seed: int) -> np.ndarray:
    if action == "remove":
        edited = generator.remove(image[None], mask[None], seed=seed)
    else:
        edited = generator.insert(image[None], mask[None], [concept], seed=seed)
    return np.asarray(edited)[0]


def _edit_result(study: Study, kind: str, record: dict, pairs: dict, masks, edits: dict, sign: int, n_boot: int,
                 seed: int) -> dict:
    """Responses, deltas and the sign-accuracy summary of an edit experiment, on the pairs edited."""
    kept = edits["kept"]
    result = {key: (value[kept] if isinstance(value, np.ndarray) and len(value) == len(pairs["row"])
                    else [value[i] for i in kept] if isinstance(value, list) else value)
              for key, value in record.items()}
    result.update(kind=kind, masks=np.asarray(masks)[kept], n_skipped=int(len(pairs["row"]) - len(kept)),
                  skip_reason=edits["reasons"][0] if edits["reasons"] else None)
    voxels = result["voxel"]
    edited = {"images": edits["images"], "scenes": edits["scenes"], "predicted": None, "true": None}
    if len(kept):
        edited["predicted"] = study.predict(edits["images"], voxels) - result["predicted_original"]
        if study.truth is not None:
            edited["true"] = study.true(edits["scenes"], voxels) - result["true_original"]
    result["conditions"] = {"edited": edited}
    if study.scene_based and kind == "removal" and len(kept):
        originals = study.scenes(result["row"])
        result["removed"] = [_removed_category(before, after) for before, after in zip(originals, edits["scenes"])]
        if study.truth is not None:
            result["removed_driving_object"] = _driving_object_hit(study, originals, edits["scenes"], voxels)
    kinds = ("predicted", "true") if study.truth is not None else ("predicted",)
    result["summary"] = {name: _edit_summary(edited[name], voxels, sign, n_boot, seed) for name in kinds}
    return result


def _removed_category(before, after) -> str:
    gone = [obj for obj in before.objects if obj not in after.objects]
    return gone[0].category if gone else ""


def _driving_object_hit(study: Study, originals, edited, voxels) -> float:
    """Fraction of removals that took out the object whose own drive of the voxel is the largest (truth)."""
    from napari_mine.synthetic.brain import object_drives

    drives = object_drives(study.truth.brain, originals)[np.arange(len(voxels)), :, study.truth_voxels[voxels]]
    hits = [before.objects[int(np.argmax(drive[:len(before.objects)]))] not in after.objects
            for before, after, drive in zip(originals, edited, drives)]
    return float(np.mean(hits))


def _edit_summary(deltas, voxels, sign: int, n_boot: int, seed: int) -> dict:
    if deltas is None or not len(deltas):
        return {"value": None, "ci": [None, None], "n": 0, "mean_delta": None, "mean_delta_ci": [None, None]}
    correct = (np.sign(deltas) == sign).astype(float)
    accuracy_ci = _ci(_bootstrap(lambda i: correct[i].mean(), voxels, n_boot, seed))
    return {"value": float(correct.mean()), "ci": accuracy_ci,
            "n": int(len(deltas)), "mean_delta": float(deltas.mean()),
            "mean_delta_ci": _ci(_bootstrap(lambda i: deltas[i].mean(), voxels, n_boot, seed))}


def _low_response_rows(study: Study, voxels, low_fraction: float, seed: int) -> np.ndarray:
    """One row per pair from its voxel's lowest ``low_fraction`` predicted responses (seeded)."""
    rng = np.random.default_rng([int(seed), 31])
    unique = np.unique(voxels)
    predicted = study.features @ study.weights[:, unique] + study.bias[unique]
    n_low = max(1, int(low_fraction * len(predicted)))
    lowest = np.argsort(predicted, axis=0, kind="stable")[:n_low]
    column = {int(v): i for i, v in enumerate(unique)}
    return np.array([rng.choice(lowest[:, column[int(v)]]) for v in voxels], int)


def _voxel_levels(study: Study, voxels, seed: int):
    """Each voxel's mean predicted response over the store's images, and its mean true response over (up to
    TRUE_MEAN_IMAGES of) them: the reference level of sufficiency's responses."""
    unique, inverse = np.unique(voxels, return_inverse=True)
    predicted = (study.features.mean(0) @ study.weights[:, unique] + study.bias[unique])[inverse]
    if study.truth is None:
        return predicted, None
    rng = np.random.default_rng([int(seed), 41])
    rows = rng.choice(len(study.image_ids), min(TRUE_MEAN_IMAGES, len(study.image_ids)), replace=False)
    true = study.truth.true_response(study.scenes(rows))[:, study.truth_voxels[unique]].mean(0)
    return predicted, true[inverse]


def _sufficiency_summary(original, conditions: dict, voxels, n_boot: int, seed: int) -> dict:
    """Correlation and MAE of each condition against the originals, the correlation within voxels, CIs, and
    paired tests of MINE against each control (voxels as the unit: Wilcoxon on per-voxel mean errors, a
    voxel bootstrap on the correlation)."""
    from scipy.stats import wilcoxon

    errors = {name: np.abs(values - original) for name, values in conditions.items()}
    original_within = _within_voxel(original, voxels)
    summary = {}
    for name, values in conditions.items():
        within = _within_voxel(values, voxels)
        entry = {"correlation": _pearson(original, values),
                 "correlation_ci": _ci(_bootstrap(lambda i: _pearson(original[i], values[i]), voxels, n_boot, seed)),
                 "correlation_within_voxel": _pearson(original_within, within),
                 "correlation_within_voxel_ci": _ci(_bootstrap(lambda i: _pearson(original_within[i], within[i]),
                                                               voxels, n_boot, seed)),
                 "mae": float(errors[name].mean()),
                 "mae_ci": _ci(_bootstrap(lambda i: errors[name][i].mean(), voxels, n_boot, seed))}
        if name != "mine":
            difference = _voxel_means(errors["mine"] - errors[name], voxels)
            entry["p_mae"] = (float(wilcoxon(difference, alternative="less").pvalue)
                              if np.any(difference != 0) else 1.0)
            gain = _bootstrap(lambda i: _pearson(original[i], conditions["mine"][i])
                              - _pearson(original[i], values[i]), voxels, n_boot, seed)
            gain = gain[np.isfinite(gain)]
            entry["p_correlation"] = float((np.sum(gain <= 0) + 1) / (len(gain) + 1))
        summary[name] = entry
    return summary


def _within_voxel(values, voxels) -> np.ndarray:
    """Values minus their voxel's mean over the pairs: what is left is how a voxel's images differ."""
    _, inverse = np.unique(voxels, return_inverse=True)
    return values - _voxel_means(values, voxels)[inverse]


def _voxel_means(values, voxels) -> np.ndarray:
    _, inverse = np.unique(voxels, return_inverse=True)
    return np.bincount(inverse, values) / np.bincount(inverse)


def _bootstrap(statistic, voxels, n_boot: int, seed: int) -> np.ndarray:
    """``statistic(indices)`` over ``n_boot`` resamples (seeded) of the items' voxels with replacement, each
    drawn voxel bringing all its items: pairs of one voxel are not independent draws."""
    rng = np.random.default_rng([int(seed), 51])
    _, inverse = np.unique(voxels, return_inverse=True)
    members = [np.flatnonzero(inverse == k) for k in range(inverse.max() + 1)]
    return np.array([statistic(np.concatenate([members[k] for k in rng.integers(0, len(members), len(members))]))
                     for _ in range(int(n_boot))], float)


def _ci(samples: np.ndarray) -> list:
    samples = samples[np.isfinite(samples)]
    if not len(samples):
        return [None, None]
    return [float(np.percentile(samples, 2.5)), float(np.percentile(samples, 97.5))]


def _pearson(a, b) -> float:
    a, b = np.asarray(a, float) - np.mean(a), np.asarray(b, float) - np.mean(b)
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else float("nan")


def _ratio(a, b) -> float:
    return float(a.mean() / b.mean()) if b.mean() > 0 else float("nan")


def _paired_deltas(numerator: dict, denominator: dict, kind: str):
    """Deltas of two edit results on the pairs both edited (matched by pair position), and those pairs' voxels."""
    a, b = numerator["conditions"]["edited"][kind], denominator["conditions"]["edited"][kind]
    if a is None or b is None:
        return None, None, None
    key_a = list(zip(numerator["voxel"], numerator["row"], numerator["target_row"]))
    key_b = {key: i for i, key in enumerate(zip(denominator["voxel"], denominator["row"], denominator["target_row"]))}
    both = [(i, key_b[key]) for i, key in enumerate(key_a) if key in key_b]
    return (np.array([a[i] for i, _ in both]), np.array([b[j] for _, j in both]),
            np.array([numerator["voxel"][i] for i, _ in both], int))


def _minus(values, level):
    return None if values is None else values - level


def _rgb(image) -> np.ndarray:
    from napari_mine.data.images import to_rgb_uint8

    return to_rgb_uint8(np.asarray(image))


def _plain(value):
    """JSON-ready copy: numpy scalars and arrays to Python, NaN to None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value
