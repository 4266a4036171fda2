"""Vocabularies, text-embedding cache, per-image descriptions, voxel profiles and ROI clustering."""

from __future__ import annotations

import dataclasses
import warnings

import nibabel as nib
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from napari_mine import describe as D
from napari_mine.errors import MineInputError
from napari_mine.pipeline import profile_step
from napari_mine.store import ResultsStore, write_arrays
from napari_mine.vocabulary import (GENERAL_VOCABULARY_FILE, ConceptSpace, concept_space, embed_vocabulary,
                                    general_vocabulary, synthetic_vocabulary, vocabulary_from_concepts,
                                    vocabulary_from_file)

DIM, N_CONCEPTS, N_PATCHES = 48, 30, 16


def random_space(seed: int = 0, n_concepts: int = N_CONCEPTS, dim: int = DIM, vocabulary=None) -> ConceptSpace:
    vocabulary = vocabulary or vocabulary_from_concepts([f"concept {i}" for i in range(n_concepts)], "test")
    embeddings = np.random.default_rng(seed).normal(size=(len(vocabulary), dim))
    return ConceptSpace.from_embeddings(vocabulary, embeddings, model_id="test-model")


def image_with_region(space: ConceptSpace, vectors: np.ndarray, patches, rng, noise: float = 0.05) -> np.ndarray:
    """Tokens (1 + N_PATCHES, D): small noise everywhere, ``vectors`` added on ``patches`` (1-based tokens)."""
    tokens = noise * rng.normal(size=(1 + N_PATCHES, space.embeddings.shape[1]))
    tokens[np.asarray(patches)] += vectors
    return tokens.astype(np.float32)


# ----------------------------------------------------------------------------------------------- vocabularies


def test_shipped_general_vocabulary_has_2000_unique_lower_case_concepts():
    lines = [line for line in GENERAL_VOCABULARY_FILE.read_text("utf-8").splitlines() if not line.startswith("#")]
    assert len(lines) >= 2000
    assert len(set(lines)) == len(lines) and all(line == line.strip().lower() and line for line in lines)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vocabulary = general_vocabulary()
    assert len(vocabulary) == len(lines) and vocabulary.prompts[0] == (f"a photo of a {lines[0]}",)


def test_user_file_drops_blank_lines_and_duplicates_with_a_count(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("face\n\nFace\n  red   house \n\n# a comment\nface\nsmile\n", encoding="utf-8")
    with pytest.warns(UserWarning, match="2 blank lines and 2 duplicate"):
        vocabulary = vocabulary_from_file(path, template="a picture of {}")
    assert vocabulary.concepts == ("face", "red house", "smile")
    assert vocabulary.prompts[1] == ("a picture of red house",)


def test_user_file_that_is_not_utf8_names_the_file_and_line(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("face\nhouse\ncafé\n".encode("latin-1"))
    with pytest.raises(MineInputError, match=r"latin1\.txt line 3"):
        vocabulary_from_file(path)


def test_bad_template_and_empty_file_are_refused(tmp_path):
    with pytest.raises(MineInputError, match="template"):
        vocabulary_from_concepts(["face"], "x", template="a photo")
    (tmp_path / "empty.txt").write_text("# only a comment\n", encoding="utf-8")
    with pytest.raises(MineInputError, match="no concepts"):
        vocabulary_from_file(tmp_path / "empty.txt")


def test_synthetic_vocabulary_has_categories_and_category_free_attributes():
    from napari_mine.synthetic import scenes

    vocabulary = synthetic_vocabulary()
    categories = [c for c, g in zip(vocabulary.concepts, vocabulary.groups) if g == "category"]
    assert tuple(categories) == scenes.CATEGORIES
    assert {"red", "large", "small", "on the left", "on the right"} <= set(vocabulary.concepts)
    red = vocabulary.prompts[vocabulary.concepts.index("red")]
    assert len(red) == len(scenes.CATEGORIES) and all("red" in prompt for prompt in red)


def test_concept_groups_are_centred_apart_and_need_two_members():
    from napari_mine.vocabulary import Vocabulary

    vocabulary = Vocabulary("grouped", ("a", "b", "c", "x", "y"), (("a",), ("b",), ("c",), ("x",), ("y",)),
                            ("one", "one", "one", "two", "two"))
    space = ConceptSpace.from_embeddings(vocabulary, np.random.default_rng(0).normal(size=(5, 8)))
    assert [c.tolist() for c in space.group_columns] == [[0, 1, 2], [3, 4]]
    assert np.allclose(space.directions[3], -space.directions[4], atol=1e-6)
    singleton = dataclasses.replace(vocabulary, groups=("one", "one", "one", "one", "two"))
    with pytest.raises(MineInputError, match="at least two"):
        ConceptSpace.from_embeddings(singleton, np.ones((5, 8)))


@pytest.fixture(scope="module")
def random_backbone():
    """mine-small's architecture with random weights (no weights file needed)."""
    import open_clip
    import torch

    from napari_mine.models.backbone import Backbone, register_shipped_config

    register_shipped_config()
    torch.manual_seed(0)
    model = open_clip.create_model("mine-small", pretrained=None).eval()
    return Backbone(model=model, name="mine-small", pretrained=None, checksum="sha256:random-test-weights",
                    embed_dim=128, image_size=64, preprocess_cfg=dict(model.visual.preprocess_cfg),
                    tokenizer=open_clip.get_tokenizer("mine-small"), device="cpu")


def test_text_embeddings_are_cached_per_model_and_vocabulary(tmp_path, random_backbone, monkeypatch):
    calls, encode = [], type(random_backbone).encode_text
    monkeypatch.setattr(type(random_backbone), "encode_text",
                        lambda self, texts: calls.append(len(texts)) or encode(self, texts))
    vocabulary = synthetic_vocabulary()

    first = embed_vocabulary(vocabulary, random_backbone, cache_dir=tmp_path)
    assert sum(calls) == sum(len(p) for p in vocabulary.prompts)
    assert first.shape == (len(vocabulary), 128) and np.allclose(np.linalg.norm(first, axis=1), 1, atol=1e-5)

    calls.clear()
    space = concept_space(vocabulary, random_backbone, cache_dir=tmp_path)
    assert calls == [] and np.allclose(space.embeddings, first, atol=1e-6)
    assert space.model_id.startswith("mine-small:") and len(list(tmp_path.iterdir())) == 1

    other_model = dataclasses.replace(random_backbone, checksum="sha256:other-weights")
    embed_vocabulary(vocabulary, other_model, cache_dir=tmp_path)
    assert calls and len(list(tmp_path.glob("*.npz"))) == 2


def test_damaged_cache_file_is_recomputed(tmp_path, random_backbone):
    vocabulary = vocabulary_from_concepts(["face", "house"], "two")
    expected = embed_vocabulary(vocabulary, random_backbone, cache_dir=tmp_path)
    (cached,) = tmp_path.glob("*.npz")
    cached.write_bytes(b"not a zip file")
    assert np.allclose(embed_vocabulary(vocabulary, random_backbone, cache_dir=tmp_path), expected)


# ----------------------------------------------------------------------------------------------- descriptions


def test_region_is_the_smallest_set_reaching_the_mass():
    attribution = np.array([0.0, 5.0, 3.0, 2.0, -1.0])
    assert np.flatnonzero(D.high_attribution_region(attribution, 0.5)).tolist() == [1]
    assert np.flatnonzero(D.high_attribution_region(attribution, 0.6)).tolist() == [1, 2]
    assert np.flatnonzero(D.high_attribution_region(attribution, 1.0)).tolist() == [1, 2, 3]
    assert not D.high_attribution_region(-np.abs(attribution), 0.5).any()
    with pytest.raises(MineInputError, match="fraction"):
        D.high_attribution_region(attribution, 1.5)


def test_description_finds_the_region_and_concept_the_voxel_points_at():
    space, rng = random_space(), np.random.default_rng(1)
    planted, distractor = 7, 12
    tokens = image_with_region(space, space.embeddings[planted], [3, 4, 9], rng)
    tokens[[14, 15]] += space.embeddings[distractor]
    weight = space.embeddings[planted] + 0.1 * rng.normal(size=DIM)

    description = D.describe_image(tokens, weight, space)
    assert description.concepts[0] == "concept 7"
    assert set(np.flatnonzero(description.region)) <= {3, 4, 9} and not description.region[0]
    assert description.region_mass > 0.5 * np.maximum(description.attribution[1:], 0).sum()
    assert description.text.startswith("concept 7")


def test_description_ranks_the_driving_concept_that_is_present():
    """The voxel likes concepts A and B equally; only A is in the image, so A comes first."""
    space, rng = random_space(seed=2), np.random.default_rng(2)
    present, absent = 4, 20
    tokens = image_with_region(space, space.embeddings[present], [1, 2], rng)
    weight = space.embeddings[present] + space.embeddings[absent]
    description = D.describe_image(tokens, weight, space, n_concepts=3)
    assert description.concepts[0] == "concept 4"
    assert description.scores[0] > 3 * description.scores[1]


def test_synthetic_vocabulary_gives_a_caption_style_text():
    space, rng = random_space(seed=3, dim=64, vocabulary=synthetic_vocabulary()), np.random.default_rng(3)
    index = space.vocabulary.concepts.index
    region = sum(space.embeddings[index(c)] for c in ("face", "red", "large", "on the left"))
    tokens = image_with_region(space, region, [5, 6], rng)
    description = D.describe_image(tokens, space.embeddings[index("face")], space)
    assert description.text == "large red face on the left"
    assert description.concepts[0] == "face"


def test_the_position_word_says_where_the_region_lies_not_what_the_readout_says():
    """The region's contribution reads out "on the left", but its patches lie in the right column."""
    space, rng = random_space(seed=3, dim=64, vocabulary=synthetic_vocabulary()), np.random.default_rng(3)
    index = space.vocabulary.concepts.index
    region = sum(space.embeddings[index(c)] for c in ("face", "red", "large", "on the left"))
    right_column = [4, 8, 12, 16]  # tokens of patches (row, 3) on the 4 × 4 grid
    description = D.describe_image(image_with_region(space, region, right_column, rng), space.embeddings[index("face")],
                                   space)
    assert description.text == "large red face on the right"
    assert D.region_x(description.attribution, description.region) > 0.75
    attribution = np.zeros(1 + N_PATCHES)
    attribution[[1, 2]] = [3.0, 1.0]  # columns 0 and 1: centres 0.125 and 0.375
    assert D.region_x(attribution, attribution > 0) == pytest.approx((3 * 0.125 + 0.375) / 4)
    with pytest.raises(MineInputError, match="square grid"):
        D.region_x(np.ones(16), np.ones(16, bool))


def test_the_colour_word_is_the_objects_around_the_region_not_the_regions_own():
    """A face voxel's region is the skin (faintly orange); the face's colour is its purple hair next to it, and a
    blue car stands across the image."""
    space, rng = random_space(seed=3, dim=64, vocabulary=synthetic_vocabulary()), np.random.default_rng(3)
    embedding = dict(zip(space.vocabulary.concepts, space.embeddings))
    skin, hair, car = [9, 13], [5, 6], [12, 16]  # tokens of patches (2–3, 0), (1, 0–1), (2–3, 3) on the 4 × 4 grid
    tokens = image_with_region(space, embedding["face"] + embedding["large"] + 0.3 * embedding["orange"], skin, rng)
    tokens[hair] += 2 * embedding["purple"]
    tokens[car] += 2 * (embedding["blue"] + embedding["car"])
    description = D.describe_image(tokens, embedding["face"], space)
    assert set(np.flatnonzero(description.region)) <= set(skin)
    assert description.text == "large purple face on the left"
    window = D.object_window(description.attribution, description.region,
                             radius=space.vocabulary.phrasing.object_radius)
    assert window[0] == 0 and window[hair].min() > 10 * window[car].max()


def test_no_positive_attribution_gives_an_empty_description():
    space, rng = random_space(), np.random.default_rng(4)
    tokens = image_with_region(space, space.embeddings[3], [2], rng, noise=0.0)
    description = D.describe_image(tokens, -space.embeddings[3], space)
    assert description.concepts == () and description.text == "" and not description.region.any()


def test_mismatched_dimensions_are_refused():
    with pytest.raises(MineInputError, match="dimension"):
        D.describe_image(np.zeros((17, 10)), np.zeros(10), random_space())


# ----------------------------------------------------------------------------------------------- profiles


def planted_world(space: ConceptSpace, seed: int = 5, n_images: int = 90, groups=((0, 29), (3, 28), (5, 27))):
    """Images each showing one of concepts 0–5 on three patches; voxel group g likes (shown, never shown)."""
    rng = np.random.default_rng(seed)
    shown = rng.integers(0, 6, size=n_images)
    tokens = np.stack([image_with_region(space, space.embeddings[c], rng.choice(np.arange(1, 1 + N_PATCHES), 3,
                                                                                 replace=False), rng)
                       for c in shown])
    per_group = 8
    weights = np.concatenate([(space.embeddings[a] + space.embeddings[b])[:, None]
                              + 0.05 * rng.normal(size=(DIM, per_group)) for a, b in groups], axis=1)
    truth = np.repeat(np.arange(len(groups)), per_group)
    return tokens, weights.astype(np.float32), truth


def test_profiles_recover_the_planted_concept_and_ignore_the_absent_one():
    space = random_space(seed=6)
    tokens, weights, truth = planted_world(space)
    predicted = tokens.sum(axis=1) @ weights
    top = D.top_images(predicted, k=8)
    assert np.all(np.diff(np.take_along_axis(predicted, top, axis=0), axis=0) <= 0)

    profiles = D.voxel_profiles(tokens, weights, top, space)
    expected = np.array([0, 3, 5])[truth]
    assert [profiles.ranked(v, 1)[0][0] for v in range(len(truth))] == [f"concept {c}" for c in expected]
    never_shown = np.array([29, 28, 27])[truth]
    assert np.all(profiles.scores[np.arange(len(truth)), never_shown] < 0.2 * profiles.scores.max(axis=1))
    # the baseline cannot tell the shown concept from the never-shown one the weights also point at
    baseline_best = profiles.baseline.argmax(axis=1)
    assert np.all((baseline_best == expected) | (baseline_best == never_shown))


def test_roi_profiles_average_their_voxels():
    scores = np.array([[1.0, 0.0], [3.0, 2.0], [0.0, 5.0]])
    result = D.roi_profiles(scores, np.array([1, 1, 2]), {1: "FFA-1", 2: "PPA", 3: "EBA"})
    assert set(result) == {"FFA-1", "PPA"} and np.allclose(result["FFA-1"], [2.0, 1.0])


def test_clustering_recovers_planted_subpopulations_and_the_nifti_round_trips(tmp_path):
    rng = np.random.default_rng(7)
    sizes = (30, 25, 20)
    centres = np.abs(rng.normal(size=(3, 40)))
    truth = np.repeat(np.arange(3), sizes)
    profiles = centres[truth] * rng.uniform(0.5, 2.0, size=(len(truth), 1)) + 0.15 * rng.normal(size=(len(truth), 40))

    clustering = D.cluster_voxels(profiles, k_range=(2, 6), seed=0)
    assert clustering.k == 3 and adjusted_rand_score(truth, clustering.labels) >= 0.8
    assert np.bincount(clustering.labels).tolist() == [0, 30, 25, 20]

    mask = np.zeros((6, 7, 8), bool)
    mask.flat[rng.choice(mask.size, 120, replace=False)] = True
    voxels = rng.choice(120, len(truth), replace=False)
    volume = D.labels_volume(clustering.labels, mask, voxels)
    affine = np.diag([1.8, 1.8, 1.8, 1.0])
    affine[:3, 3] = (-10.0, 20.0, 5.0)
    path = D.save_labels_nifti(volume, affine, tmp_path / "clusters.nii.gz")
    loaded = nib.load(path)
    assert np.array_equal(np.asarray(loaded.dataobj), volume) and np.allclose(loaded.affine, affine)
    assert np.array_equal(volume[mask][voxels], clustering.labels) and volume[~mask].max() == 0
    assert [p.name for p in tmp_path.iterdir()] == ["clusters.nii.gz"]
    with pytest.raises(MineInputError, match="NIfTI"):
        D.save_labels_nifti(volume, affine, tmp_path / "clusters.png")
    with pytest.raises(MineInputError, match="Cannot cluster"):
        D.cluster_voxels(profiles[:2])


# ----------------------------------------------------------------------------------------------- results store


@pytest.fixture
def planted_store(tmp_path):
    """A results store with the planted world: 24 voxels, ROI 'floc-faces' label 1 = groups 0 and 1."""
    space = random_space(seed=8)
    tokens, weights, truth = planted_world(space, seed=9)
    store = ResultsStore.create(tmp_path / "results", model={"id": "test-model"}, dataset={})
    features = tokens.sum(axis=1)
    with store.write_step("features") as group:
        write_arrays(group, {"features": features, "tokens": tokens, "rest": np.zeros_like(features),
                             "image_ids": np.arange(len(tokens))}, chunk_rows=16)
    with store.write_step("encoder") as group:
        write_arrays(group, {"effective_weights": weights, "effective_bias": np.zeros(weights.shape[1], np.float32)})
    mask = np.zeros((4, 3, 5), bool)
    mask.flat[1:48:2] = True
    roi = np.zeros(mask.shape, np.int16)
    roi[mask] = np.where(truth < 2, 1, 2)
    with store.write_step("brain", {"roi_labels": {"floc-faces": {"1": "FFA-1", "2": "FFA-2"}}}) as group:
        write_arrays(group, {"mask": mask, "affine": np.diag([2.0, 2.0, 2.0, 1.0]), "roi/floc-faces": roi})
    return store, space, truth


def test_silhouettes_from_distances_computed_once_equal_scikit_learns_and_a_sample_bounds_memory(monkeypatch):
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng(3)
    truth = np.repeat(np.arange(3), 60)
    rows = np.abs(rng.normal(size=(3, 30)))[truth] + 0.2 * rng.normal(size=(len(truth), 30))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    fits = {2: np.minimum(truth, 1), 3: truth}
    exact = D._silhouettes(rows, fits, seed=0)
    assert exact == pytest.approx({k: silhouette_score(rows, labels) for k, labels in fits.items()}, abs=1e-9)

    monkeypatch.setattr(D, "SILHOUETTE_ROWS", 90)  # half the rows: the sample's silhouettes, seeded
    sampled = D._silhouettes(rows, fits, seed=0)
    assert sampled == D._silhouettes(rows, fits, seed=0) and sampled != exact
    assert sampled == pytest.approx(exact, abs=0.05) and max(sampled, key=sampled.get) == 3


def test_results_profile_describe_and_cluster(planted_store, tmp_path):
    store, space, truth = planted_store
    results = store.results()
    profiles = results.profiles(space, top_k=8)
    assert [profiles.ranked(v, 1)[0][0] for v in range(len(truth))] == \
        [f"concept {c}" for c in np.array([0, 3, 5])[truth]]

    saved, by_label = profile_step(store, space, top_k=8, rois=["floc-faces"])
    loaded = store.results().saved_profiles(space)
    assert loaded.concepts == profiles.concepts and np.array_equal(loaded.scores, profiles.scores)
    assert np.array_equal(saved.scores, profiles.scores)

    description = results.describe(int(profiles.top_images[0, 0]), 0, space)
    assert description.concepts[0] == "concept 0"

    by_roi = results.roi_profiles(profiles, "floc-faces")
    assert D.top_concepts(by_roi["FFA-2"], profiles.concepts, 1)[0][0] == "concept 5"

    clustering, targets = results.roi_clusters(profiles, "floc-faces", "FFA-1", k_range=(2, 4))
    assert clustering.k == 2 and adjusted_rand_score(truth[truth < 2], clustering.labels) == 1.0
    ffa1 = next(roi for roi in by_label if roi.label == "FFA-1")
    volume = np.asarray(nib.load(ffa1.path).dataobj)
    mask = results.space.mask
    assert np.array_equal(volume[mask] > 0, truth < 2) and volume[~mask].max() == 0
    assert np.array_equal(targets, np.flatnonzero(truth < 2))

    subset = results.profiles(space, [20, 3], top_k=8)
    assert np.allclose(subset.scores, profiles.scores[[20, 3]], atol=1e-6)


def test_store_of_another_model_is_refused(planted_store):
    store, space, _ = planted_store
    results = store.results()
    other = dataclasses.replace(space, model_id="another-model")
    with pytest.raises(MineInputError, match="another-model"):
        results.profiles(other)
    profiles = results.profiles(space, top_k=4)
    with pytest.raises(MineInputError, match="no label"):
        results.roi_clusters(profiles, "floc-faces", "PPA")
    with pytest.raises(MineInputError, match="no ROI volume"):
        results.roi_profiles(profiles, "floc-words")
    with pytest.raises(MineInputError, match="no labelled ROI volume 'floc-words'"):
        profile_step(store, space, rois=["floc-words"])


# ----------------------------------------------------------------------------------------------- the real model


def test_mine_small_describes_a_single_object_scene_by_its_category(tmp_path):
    from napari_mine.models.backbone import SHIPPED_WEIGHTS, load_backbone

    if not SHIPPED_WEIGHTS.exists():
        pytest.skip("the shipped mine-small weights are not built yet")
    from napari_mine.decompose import decompose_images
    from napari_mine.synthetic import scenes

    backbone = load_backbone("mine-small")
    space = concept_space(synthetic_vocabulary(), backbone, cache_dir=tmp_path)
    for category in ("face", "house", "car"):
        scene = scenes.Scene((scenes.SceneObject(category, "blue", 0.5, 0.5, 0.45),), "plain", seed=3)
        pixels = backbone.preprocess(scenes.render(scene)[None])
        tokens = decompose_images(backbone.model, pixels).normalized().tokens[0]
        weight = space.embeddings[space.vocabulary.concepts.index(category)]
        description = D.describe_image(tokens, weight, space)
        assert category in description.text.split(), (category, description.concepts, description.text)


def test_weight_features_put_the_weights_beside_their_concept_projections():
    rng = np.random.default_rng(3)
    weights, directions = rng.normal(size=(5, 8)), rng.normal(size=(3, 8))
    features = D.weight_features(weights, directions)
    assert features.shape == (5, 11)
    np.testing.assert_allclose(np.linalg.norm(features[:, :8], axis=1), 1.0)
    np.testing.assert_allclose(np.linalg.norm(features[:, 8:], axis=1), 1.0)
    projections = weights @ directions.T
    np.testing.assert_allclose(features[:, 8:], projections / np.linalg.norm(projections, axis=1, keepdims=True))
