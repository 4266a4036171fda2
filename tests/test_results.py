"""The one read path: a typed manifest parsed once, a read session with bounded caches, exact queries, and
the backbone recorded with the results (its checkpoint reused, other weights refused)."""

import ast
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from napari_mine import results as R
from napari_mine.errors import MineInputError
from napari_mine.store import ResultsStore, write_arrays

SRC = Path(R.__file__).parent


def fitted_store(root, rng, n_images=12, n_tokens=10, dim=6, grid=(3, 4, 2)):
    """A store with a brain (mask, ROI labels), features, tokens (chunks of 4 images) and an encoder."""
    mask = np.zeros(grid, bool)
    mask.flat[::2] = True
    n_voxels = int(mask.sum())
    tokens = rng.normal(size=(n_images, n_tokens, dim)).astype(np.float32)
    rest = rng.normal(size=(n_images, dim)).astype(np.float32)
    store = ResultsStore.create(root, model={"id": "test", "name": "test"}, dataset={"format": "none"})
    roi = np.where(mask, 1 + np.arange(mask.size).reshape(grid) % 2, -1).astype(np.int16)
    with store.write_step("brain", {"roi_labels": {"floc-faces": {"1": "FFA-1", "2": "FFA-2"}}}) as group:
        write_arrays(group, {"mask": mask, "affine": np.diag([2.0, 2.0, 2.0, 1.0]), "roi/floc-faces": roi})
    with store.write_step("features") as group:
        write_arrays(group, {"tokens": tokens, "rest": rest, "features": tokens.sum(1) + rest,
                             "image_ids": np.arange(n_images)}, chunk_rows=4)
    with store.write_step("encoder") as group:
        write_arrays(group, {"effective_weights": rng.normal(size=(dim, n_voxels)).astype(np.float32),
                             "effective_bias": rng.normal(size=n_voxels).astype(np.float32),
                             "accuracy/r": rng.uniform(size=n_voxels).astype(np.float32)})
    return store, tokens, rest


def test_manifest_round_trips_and_is_parsed_once_per_session(tmp_path, monkeypatch):
    store, _, _ = fitted_store(tmp_path, np.random.default_rng(0))
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert R.Manifest.read(tmp_path).to_dict() == on_disk
    reads = []
    original = R.Manifest.read
    monkeypatch.setattr(R.Manifest, "read", classmethod(lambda cls, root: reads.append(root) or original(root)))
    results = R.Results.open(tmp_path)
    results.predict([0, 1])
    results.top_images(2, k=3)
    results.image_map(1, 5)
    assert results.space.roi_names_of(0) == ("FFA-1",)
    assert results.manifest.roi_labels == {"floc-faces": {1: "FFA-1", 2: "FFA-2"}}
    assert len(reads) == 1


def test_an_incomplete_manifest_is_named_in_one_sentence(tmp_path):
    fitted_store(tmp_path, np.random.default_rng(1))
    payload = json.loads((tmp_path / "manifest.json").read_text())
    del payload["model"]
    (tmp_path / "manifest.json").write_text(json.dumps(payload))
    with pytest.raises(MineInputError, match="is incomplete .*recompute the results"):
        R.Results.open(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(MineInputError, match="cannot be read as JSON"):
        R.Results.open(tmp_path)


def test_queries_are_exact_sums_of_the_token_terms(tmp_path):
    store, tokens, rest = fitted_store(tmp_path, np.random.default_rng(2))
    results = store.results()
    weights, bias = results.weights()
    predicted = results.predict()
    np.testing.assert_allclose(predicted, (tokens.sum(1) + rest) @ weights + bias, rtol=1e-5, atol=1e-5)
    for target, row in ((0, 3), (5, 11)):
        attribution = results.image_map(target, row)
        assert attribution.predicted == pytest.approx(float(predicted[row, target]), rel=1e-4, abs=1e-5)
        np.testing.assert_allclose(results.target_maps(target)[row], attribution.grid_map, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(results.whole_brain_map(row)[..., target], attribution.grid_map, rtol=1e-5,
                                   atol=1e-6)
    rows, values = results.top_images(4, k=5)
    np.testing.assert_array_equal(rows, np.argsort(-predicted[:, 4], kind="stable")[:5])
    volume = results.space.unmask(results.accuracy["r"])
    np.testing.assert_array_equal(volume[results.space.mask], results.accuracy["r"])
    assert results.space.target_at(results.space.ijk_of(7)) == 7
    assert results.space.target_at((0, 0, 1)) is None  # outside the mask


def test_caches_are_bounded(tmp_path, monkeypatch):
    store, tokens, _ = fitted_store(tmp_path / "one", np.random.default_rng(3))
    chunk_bytes = 4 * tokens[0].nbytes
    monkeypatch.setattr(R, "TOKEN_CACHE_BYTES", 2 * chunk_bytes)
    results = store.results()
    np.testing.assert_array_equal(results.tokens([0, 5, 9, 11, 2]), tokens[[0, 5, 9, 11, 2]])
    assert sum(block.nbytes for block in results._token_chunks.values()) <= 2 * chunk_bytes
    roots = [tmp_path / "one"]
    for index in range(R.OPEN_SESSIONS + 2):
        roots.append(tmp_path / f"copy{index}")
        shutil.copytree(tmp_path / "one", roots[-1])
    for root in roots:
        R.open_results(root)
    assert len(R._sessions) <= R.OPEN_SESSIONS
    assert R.open_results(roots[-1]) is R.open_results(roots[-1])


def test_a_recorded_checkpoint_is_reused_and_other_weights_are_refused(tmp_path):
    from safetensors.numpy import load_file, save_file

    from napari_mine.models.backbone import SHIPPED_WEIGHTS, load_backbone

    checkpoint = tmp_path / "mine-small-copy.safetensors"
    shutil.copy(SHIPPED_WEIGHTS, checkpoint)
    backbone = load_backbone("mine-small", checkpoint=checkpoint)
    store = ResultsStore.create(tmp_path / "results", model=backbone.record, dataset={}, checkpoint=checkpoint)
    results = R.Results.open(store.root)
    assert results.manifest.model.checkpoint == str(checkpoint.resolve())
    assert results.backbone(device="cpu").checksum == backbone.checksum  # found without being asked for

    tensors = load_file(checkpoint)
    name = next(iter(tensors))
    tensors[name] = tensors[name] + np.float32(1e-3)
    other = tmp_path / "other.safetensors"
    save_file(tensors, other)
    with pytest.raises(MineInputError, match="was computed with model"):
        results.backbone(checkpoint=other, device="cpu")
    checkpoint.unlink()
    with pytest.raises(MineInputError, match="no longer there"):
        R.Results.open(store.root).backbone(device="cpu")


def test_only_results_reads_the_manifest_layout():
    """No module but results.py indexes the manifest's JSON (its "steps", "dataset" or "settings" keys)."""
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.name == "results.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and \
                    node.slice.value in ("steps", "dataset", "settings"):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert offenders == []
