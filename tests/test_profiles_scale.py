"""Voxel profiles at surface scale: the batched computation equals the per-target one, and saved profiles too
large to hold are read by rows (one target, one ROI) with the same answers as in memory."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from napari_mine import describe as D
from napari_mine import results as results_module
from napari_mine.pipeline import profile_step
from napari_mine.store import ResultsStore, write_arrays
from napari_mine.vocabulary import ConceptSpace, vocabulary_from_concepts

N_TOKENS, DIM = 17, 24  # a class token and a 4 × 4 patch grid


def grouped_space(groups: dict[str, int], seed: int = 0) -> ConceptSpace:
    """Random embeddings of a vocabulary with these groups (one group: ungrouped), their members interleaved."""
    rng = np.random.default_rng(seed)
    members = rng.permutation([group for group, size in groups.items() for _ in range(size)])
    vocabulary = vocabulary_from_concepts([f"{group} {i}" for i, group in enumerate(members)], "test")
    if len(groups) > 1:
        vocabulary = dataclasses.replace(vocabulary, groups=tuple(members))
    return ConceptSpace.from_embeddings(vocabulary, rng.normal(size=(len(members), DIM)), model_id="test-model")


def reference_profiles(tokens, weights, top, space, mass=D.DEFAULT_MASS):
    """The profile as DESIGN.md states it, one (voxel, top image) pair at a time."""
    n_voxels = weights.shape[1]
    scores = np.zeros((n_voxels, len(space.vocabulary)), np.float32)
    region_mass = np.zeros(n_voxels, np.float32)
    for voxel in range(n_voxels):
        weight = weights[:, voxel]
        drive = np.maximum(D.concept_drive(weight, space.directions, space.group_columns), 0)
        presence, total = np.zeros(len(space.vocabulary)), 0.0
        for image in top[:, voxel]:
            patches = tokens[image, 1:]
            attribution = patches @ weight
            region = D.high_attribution_region(attribution, mass)
            vector = region.astype(np.float32) @ patches
            present = D.concept_presence(vector, space.directions, space.group_columns)
            presence += attribution[region].sum() * np.maximum(present, 0)
            total += attribution[region].sum()
        scores[voxel] = drive * (presence / total if total > 0 else 0)
        region_mass[voxel] = total / len(top)
    return scores, region_mass


class CountingRows:
    """Token rows that count how often each image is read."""

    def __init__(self, tokens):
        self.tokens, self.reads = tokens, np.zeros(len(tokens), int)

    def __getitem__(self, rows):
        np.add.at(self.reads, rows, 1)
        return self.tokens[rows]


@pytest.mark.parametrize("groups", [{"concept": 40}, {"category": 8, "color": 6, "size": 2, "position": 3}])
def test_batched_profiles_equal_the_per_target_computation(groups):
    rng = np.random.default_rng(1)
    space = grouped_space(groups)
    # Small integers: every attribution is exact in float32 whatever the order of the sums, so both
    # computations choose the same regions (ties included) and differ only by the rounding of presence.
    tokens = rng.integers(-3, 4, (60, N_TOKENS, DIM)).astype(np.float32)
    weights = rng.integers(-3, 4, (DIM, 90)).astype(np.float32)
    weights[:, 7] = 0  # no positive attribution anywhere: empty regions, a zero profile
    top = D.top_images(tokens.sum(axis=1) @ weights + rng.random((60, 90)), 12)
    reader = CountingRows(tokens)
    profiles = D.voxel_profiles(reader, weights, top, space)
    scores, region_mass = reference_profiles(tokens, weights, top, space)
    np.testing.assert_allclose(profiles.scores, scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(profiles.region_mass, region_mass)
    assert np.all(profiles.scores[7] == 0) and profiles.scores.max() > 0.5
    assert np.array_equal(reader.reads, np.isin(np.arange(60), top).astype(int))  # each top image read once
    np.testing.assert_allclose(profiles.baseline, weights.T @ space.embeddings.T, rtol=1e-5, atol=1e-5)


@pytest.fixture
def profiled(tmp_path):
    """A results store of 300 targets (ROI labels 1 and 2) profiled in blocks of 128."""
    rng = np.random.default_rng(2)
    space = grouped_space({"concept": 30}, seed=3)
    n_images, n_targets = 40, 300
    tokens = rng.normal(size=(n_images, N_TOKENS, DIM)).astype(np.float32)
    store = ResultsStore.create(tmp_path / "results", model={"id": "test-model"}, dataset={})
    with store.write_step("features") as group:
        write_arrays(group, {"features": tokens.sum(axis=1), "tokens": tokens, "rest": np.zeros((n_images, DIM)),
                             "image_ids": np.arange(n_images)}, chunk_rows=8)
    with store.write_step("encoder") as group:
        write_arrays(group, {"effective_weights": rng.normal(size=(DIM, n_targets)).astype(np.float32),
                             "effective_bias": np.zeros(n_targets, np.float32)})
    mask = np.zeros((10, 10, 4), bool)
    mask.flat[:n_targets] = True
    roi = np.zeros(mask.shape, np.int16)
    roi.flat[:n_targets] = rng.integers(0, 3, n_targets)
    with store.write_step("brain", {"roi_labels": {"floc-faces": {"1": "FFA-1", "2": "FFA-2"}}}) as group:
        write_arrays(group, {"mask": mask, "affine": np.eye(4), "roi/floc-faces": roi})
    saved, by_label = profile_step(store, space, top_k=6, block=128)
    in_memory = dataclasses.replace(saved, scores=saved.scores[...], baseline=saved.baseline[...])  # past a rerun
    return store, space, in_memory, by_label


def test_saved_profiles_are_read_by_rows_until_held_and_too_large_ones_stay_on_disk(profiled, monkeypatch):
    store, space, computed, by_label = profiled
    results = store.results()
    lazy = results.saved_profiles(space)  # what a first click reads: its rows, not every target's
    assert not isinstance(lazy.scores, np.ndarray) and not isinstance(lazy.baseline, np.ndarray)
    assert results.group("profiles")["scores"].chunks == (128, 30)  # a block, under PROFILE_ROWS_PER_CHUNK
    assert results.hold_saved_profiles(space)  # small: the viewer's preload holds them, a click then reads nothing
    in_memory = results.saved_profiles(space)
    assert isinstance(in_memory.scores, np.ndarray) and isinstance(in_memory.baseline, np.ndarray)
    np.testing.assert_array_equal(in_memory.scores, computed.scores)
    monkeypatch.setattr(results_module, "SAVED_PROFILES_BYTES", 0)
    results = store.results()
    assert not results.hold_saved_profiles(space)
    lazy = results.saved_profiles(space)
    assert not isinstance(lazy.scores, np.ndarray) and not isinstance(lazy.baseline, np.ndarray)
    assert lazy.ranked(5) == in_memory.ranked(5) and lazy.ranked(5, baseline=True) == in_memory.ranked(5, baseline=True)
    subset = results.profiles(space, [250, 3, 3])
    np.testing.assert_array_equal(subset.scores, in_memory.scores[[250, 3, 3]])
    np.testing.assert_array_equal(subset.top_images, in_memory.top_images[:, [250, 3, 3]])
    means = results.roi_profiles(lazy, "floc-faces")
    assert means.keys() == {"FFA-1", "FFA-2"}
    for label, mean in means.items():
        np.testing.assert_array_equal(mean, results.roi_profiles(in_memory, "floc-faces")[label])
        clustering, targets = results.roi_clusters(lazy, "floc-faces", label, k_range=(2, 3))
        expected, expected_targets = results.roi_clusters(in_memory, "floc-faces", label, k_range=(2, 3))
        assert np.array_equal(targets, expected_targets) and np.array_equal(clustering.labels, expected.labels)
    _, again = profile_step(store, space, top_k=6, block=128)  # done: the ROI analysis is read back by rows
    for saved, computed in zip(again, by_label):
        np.testing.assert_array_equal(saved.profile, computed.profile)
        assert np.array_equal(saved.clustering.labels, computed.clustering.labels)


def test_profile_step_chunks_rows_finer_than_its_blocks(profiled):
    store, space, in_memory, _ = profiled
    profile_step(store, space, top_k=6, block=600, force=True)
    group = store.results().group("profiles")
    assert group["scores"].chunks == (D.PROFILE_ROWS_PER_CHUNK, 30) and group["top_images"].chunks == (6, 256)
    np.testing.assert_allclose(group["scores"][...], in_memory.scores, rtol=1e-6, atol=1e-7)
