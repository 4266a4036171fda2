"""Out-of-core responses: a fit that reads a chunked store one voxel batch at a time is the in-memory fit."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

from napari_mine.encoding import evaluate, fit_encoder, fit_encoder_blocks
from napari_mine.errors import MineInputError
from napari_mine.pipeline import fit_encoder_step
from napari_mine.responses import ResponseColumns, image_response_columns, open_responses, write_responses
from napari_mine.store import ResultsStore, write_arrays
from napari_mine.vocabulary import ConceptSpace, vocabulary_from_concepts

ALPHAS = np.logspace(-1, 4, 8)


def synthetic(n_images=160, n_features=12, n_voxels=50, seed=0):
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((n_images, n_features)).astype(np.float32)
    weights = rng.standard_normal((n_features, n_voxels)).astype(np.float32)
    noise = np.exp(rng.uniform(-1, 2, n_voxels)).astype(np.float32)
    responses = features @ weights + noise * rng.standard_normal((n_images, n_voxels)).astype(np.float32)
    return features, responses


def column_blocks(values, width):
    return (values[:, start:start + width] for start in range(0, values.shape[1], width))


def test_a_batched_fit_from_a_chunked_store_equals_the_in_memory_fit(tmp_path):
    features, responses = synthetic()
    stored = write_responses(tmp_path / "responses.zarr", column_blocks(responses, 8), responses.shape, block=8)
    assert stored.chunks == (len(responses), 8)
    whole = fit_encoder(features[:120], responses[:120], alphas=ALPHAS, backend="numpy", voxel_batch=50)
    source = ResponseColumns(open_responses(tmp_path / "responses.zarr"))
    train, test = source.take_rows(np.arange(120)), source.take_rows(np.arange(120, 160))
    progress = []
    blocks = list(fit_encoder_blocks(features[:120], train, alphas=ALPHAS, backend="numpy", voxel_batch=16,
                                     on_progress=lambda done, total: progress.append(done)))
    assert progress == [16, 32, 48, 50] and [b.stop - b.start for b, _ in blocks] == [16, 16, 16, 2]
    np.testing.assert_array_equal(np.concatenate([part.alphas for _, part in blocks]), whole.alphas)
    np.testing.assert_allclose(np.hstack([part.weights for _, part in blocks]), whole.weights, rtol=1e-5,
                               atol=1e-6 * np.abs(whole.weights).max())
    np.testing.assert_allclose(np.concatenate([part.intercept for _, part in blocks]), whole.intercept, rtol=1e-6)
    in_memory = evaluate(whole, features[120:], responses[120:])["r"]
    batched = np.concatenate([evaluate(part, features[120:], test.block(voxels))["r"] for voxels, part in blocks])
    np.testing.assert_allclose(batched, in_memory, atol=1e-5)


def test_row_selections_average_and_choose_like_the_dataset(tmp_path):
    rng = np.random.default_rng(1)
    trials = rng.standard_normal((30, 7)).astype(np.float32)
    trial_images = rng.integers(0, 10, size=30)

    @dataclasses.dataclass
    class Trials:  # the two fields image_response_columns reads, as a Dataset holds them
        responses: object
        trial_images: np.ndarray

        def image_responses(self):
            ids, inverse, counts = np.unique(self.trial_images, return_inverse=True, return_counts=True)
            means = np.stack([self.responses[inverse == row].mean(0) for row in range(len(ids))])
            return ids, means.astype(np.float32), counts

    on_disk = write_responses(tmp_path / "trials.zarr", column_blocks(trials, 3), trials.shape, block=3)
    ids, in_memory, counts = image_response_columns(Trials(trials, trial_images))
    disk_ids, disk, disk_counts = image_response_columns(Trials(on_disk, trial_images))
    assert np.array_equal(ids, disk_ids) and np.array_equal(counts, disk_counts)
    for voxels in (slice(0, 3), slice(3, 6), slice(6, 7)):
        np.testing.assert_allclose(disk.block(voxels), in_memory.block(voxels), rtol=1e-6)
        np.testing.assert_allclose(disk.take_rows([4, 1]).block(voxels), in_memory.block(voxels)[[4, 1]], rtol=1e-6)


def test_a_responses_store_refuses_blocks_that_do_not_fill_it(tmp_path):
    values = np.zeros((5, 6), np.float32)
    with pytest.raises(MineInputError, match="covered 4 of 6"):
        write_responses(tmp_path / "r.zarr", [values[:, :4]], values.shape, block=4)
    with pytest.raises(MineInputError, match="does not fit"):
        write_responses(tmp_path / "r.zarr", [values[:3]], values.shape, block=4)
    assert not (tmp_path / "r.zarr").exists()
    with pytest.raises(MineInputError, match="not a responses store"):
        open_responses(tmp_path / "r.zarr")


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, fit_synthetic_world):
    return fit_synthetic_world(tmp_path_factory.mktemp("responses"), n_images=200)


def test_fit_encoder_step_reads_responses_from_a_chunked_store(fitted, tmp_path):
    dataset, _, store, summary = fitted
    stored = write_responses(tmp_path / "trials.zarr", column_blocks(dataset.responses, 512),
                             dataset.responses.shape, block=512)
    on_disk = dataclasses.replace(dataset, responses=stored)
    shutil.copytree(store.root, tmp_path / "results")
    out_of_core = ResultsStore.open(tmp_path / "results")
    assert fit_encoder_step(on_disk, out_of_core) == summary
    reference, result = store.results().group("encoder"), out_of_core.results().group("encoder")
    np.testing.assert_array_equal(result["alphas"][...], reference["alphas"][...])
    for name in ("effective_weights", "effective_bias", "accuracy/r", "accuracy/normalized_r"):
        np.testing.assert_allclose(result[name][...], reference[name][...], rtol=1e-5, atol=1e-6)


def test_profiles_computed_in_target_blocks_equal_one_block(tmp_path):
    rng = np.random.default_rng(4)
    n_images, n_tokens, dim, n_targets = 30, 10, 8, 40
    tokens = rng.standard_normal((n_images, n_tokens, dim)).astype(np.float32)
    features = tokens.sum(axis=1)
    store = ResultsStore.create(tmp_path / "results", model={"id": "test-model"}, dataset={})
    with store.write_step("features") as group:
        write_arrays(group, {"features": features, "tokens": tokens, "rest": np.zeros_like(features),
                             "image_ids": np.arange(n_images)}, chunk_rows=8)
    with store.write_step("encoder") as group:
        write_arrays(group, {"effective_weights": rng.standard_normal((dim, n_targets)).astype(np.float32),
                             "effective_bias": np.zeros(n_targets, np.float32)})
    mask = np.zeros((4, 5, 2), bool)
    mask.flat[:n_targets] = True
    with store.write_step("brain") as group:
        write_arrays(group, {"mask": mask, "affine": np.eye(4)})
    vocabulary = vocabulary_from_concepts([f"concept {k}" for k in range(6)], "test")
    space = ConceptSpace.from_embeddings(vocabulary, rng.standard_normal((6, dim)), "test-model")
    results = store.results()
    one = results.profiles(space, top_k=5, use_saved=False, block=n_targets)
    blocked = results.profiles(space, top_k=5, use_saved=False, block=7)
    assert np.array_equal(blocked.top_images, one.top_images) and np.array_equal(blocked.voxels, one.voxels)
    for name in ("scores", "baseline", "region_mass"):
        np.testing.assert_allclose(getattr(blocked, name), getattr(one, name), rtol=1e-5, atol=1e-6)
