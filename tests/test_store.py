"""The results store: steps land atomically, the manifest tells what was computed, bad folders are refused."""

import json

import numpy as np
import pytest

from napari_mine.errors import MineInputError
from napari_mine.results import Results
from napari_mine.store import ResultsStore, write_arrays

MODEL = {"id": "mine-small::abc", "name": "mine-small"}
DATASET = {"kind": "nsd", "root": "/data/nsd", "subject": 1}


def test_step_is_recorded_and_read_back(tmp_path):
    store = ResultsStore.create(tmp_path / "results", model=MODEL, dataset=DATASET)
    values = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    with store.write_step("features", {"batch_size": 8}) as group:
        write_arrays(group, {"features": values}, chunk_rows=16)
    reopened = ResultsStore.open(tmp_path / "results")
    assert reopened.has("features")
    assert reopened.manifest.settings("features") == {"batch_size": 8}
    np.testing.assert_array_equal(reopened.results().features(), values)
    assert Results.open(tmp_path / "results").group("features")["features"].chunks == (16, 4)


def test_failed_step_leaves_store_as_before(tmp_path):
    store = ResultsStore.create(tmp_path, model=MODEL, dataset=DATASET)
    with store.write_step("features") as group:
        write_arrays(group, {"features": np.ones((3, 2))})
    with pytest.raises(RuntimeError):
        with store.write_step("features") as group:
            write_arrays(group, {"features": np.zeros((3, 2))})
            raise RuntimeError("interrupted")
    np.testing.assert_array_equal(store.results().features(), np.ones((3, 2)))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_missing_step_and_other_model_are_refused(tmp_path):
    store = ResultsStore.create(tmp_path, model=MODEL, dataset=DATASET)
    with pytest.raises(MineInputError, match="no 'encoder' results"):
        store.results().group("encoder")
    with pytest.raises(MineInputError, match="computed with model 'mine-small::abc'"):
        store.check_model("ViT-B-16:laion2b:123")
    with pytest.raises(MineInputError, match="already holds results of model"):
        ResultsStore.create(tmp_path, model={"id": "other"}, dataset=DATASET)


def test_not_a_store_and_old_format(tmp_path):
    with pytest.raises(MineInputError, match="not a napari-mine results folder"):
        ResultsStore.open(tmp_path)
    ResultsStore.create(tmp_path, model=MODEL, dataset=DATASET)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["version"] = 0
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MineInputError, match="results format 0"):
        ResultsStore.open(tmp_path)


def test_summary_sections_merge(tmp_path):
    store = ResultsStore.create(tmp_path, model=MODEL, dataset=DATASET)
    store.update_summary("encoder", {"median": 0.9})
    summary = store.update_summary("decomposition_max_rel_error", 1e-7)
    assert summary == {"encoder": {"median": 0.9}, "decomposition_max_rel_error": 1e-7}
