"""End to end through the real files: a small synthetic world in the NSD layout → features → encoder fit.

Checks the invariants that make MINE exact (DESIGN.md §2): the cached token contributions sum to the
features, and the projected terms sum to the encoder's prediction; and that the CLI reports bad input in one
line without losing what was already computed.
"""

import json

import numpy as np
import pytest

from napari_mine import cli
from napari_mine.errors import Cancelled
from napari_mine.pipeline import compute_features, fit_encoder_step
from napari_mine.store import ResultsStore


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, fit_synthetic_world):
    return fit_synthetic_world(tmp_path_factory.mktemp("pipeline"), n_images=240)


def test_token_contributions_sum_to_features(fitted):
    _, _, store, _ = fitted
    features = store.results().group("features")["features"][...]
    tokens = store.results().group("features")["tokens"][:16]
    rest = store.results().group("features")["rest"][...][:16]
    np.testing.assert_allclose(tokens.sum(axis=1) + rest, features[:16], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-5)


def test_projected_terms_sum_to_prediction(fitted):
    _, _, store, _ = fitted
    group = store.results().group("encoder")
    encoder = store.results().encoder
    weights, bias = group["effective_weights"][...], group["effective_bias"][...]
    tokens = store.results().group("features")["tokens"][:8]
    rest = store.results().group("features")["rest"][...][:8]
    decomposed = np.einsum("ntd,dv->nv", tokens, weights) + rest @ weights + bias
    predicted = encoder.predict(store.results().group("features")["features"][...][:8])
    np.testing.assert_allclose(decomposed, predicted, rtol=1e-3, atol=1e-4)


def test_accuracy_is_scored_against_the_noise_ceiling(fitted):
    dataset, _, store, summary = fitted
    normalized = store.results().group("encoder")["accuracy/normalized_r"][...]
    assert normalized.shape == (dataset.n_voxels,)
    assert {"FFA-1", "PPA", "EBA", "VWFA-1"} <= set(summary["median_nc_r_by_roi"])
    # A tiny world (200 training images) cannot reach the demo's accuracy, but face voxels must be predictable.
    assert summary["median_nc_r_by_roi"]["FFA-1"] > 0.3


def test_cli_fit_reports_missing_features_in_one_line(fitted, tmp_path, capsys):
    dataset, backbone, _, _ = fitted
    ResultsStore.create(tmp_path, model=backbone.record, dataset=dataset.source)
    assert cli.main(["fit", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == [f"napari-mine fit: {tmp_path} has no 'features' results yet; run `napari-mine features` first."]


def test_cli_refuses_unknown_model_without_touching_results(fitted, capsys):
    dataset, _, store, _ = fitted
    before = json.loads((store.root / "manifest.json").read_text())
    world = dataset.source["root"]
    assert cli.main(["features", str(world), "--out", str(store.root), "--model", "ViT-Nope-99"]) == 2
    assert "Unknown model 'ViT-Nope-99'" in capsys.readouterr().err
    assert json.loads((store.root / "manifest.json").read_text()) == before


def test_cli_attribute_describe_profile(fitted, tmp_path, capsys):
    _, _, store, _ = fitted
    out = tmp_path / "map.npy"
    assert cli.main(["attribute", str(store.root), "--image", "3", "--voxel", "10", "--out", str(out)]) == 0
    grid = np.load(out)
    assert grid.shape == (8, 8) and np.isfinite(grid).all()
    assert "patch terms carry" in capsys.readouterr().out

    assert cli.main(["describe", str(store.root), "--image", "3", "--voxel", "10"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("image 3, voxel 10: ")

    assert cli.main(["profile", str(store.root), "--roi", "floc-faces"]) == 0
    output = capsys.readouterr().out
    assert "FFA-1" in output and (store.root / "clusters" / "FFA-1.nii.gz").is_file()
    assert store.has("profiles")


def test_cli_attribute_out_of_range(fitted, capsys):
    _, _, store, _ = fitted
    assert cli.main(["attribute", str(store.root), "--image", "100000", "--voxel", "0"]) == 2
    assert "out of range" in capsys.readouterr().err


def test_cli_features_then_fit_on_an_nsd_folder(fitted, tmp_path, capsys):
    dataset, _, _, _ = fitted
    out = tmp_path / "results"
    assert cli.main(["features", str(dataset.source["root"]), "--out", str(out), "--batch-size", "128"]) == 0
    assert cli.main(["fit", str(out)]) == 0
    assert "FFA-1" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["encoder"]["n_voxels"] == dataset.n_voxels


def test_a_cancelled_encoder_fit_keeps_the_fitted_encoder(fitted):
    dataset, _, store, _ = fitted
    before = store.results().group("encoder")["effective_weights"][...]
    checks = []

    def stop_after_two_folds():
        checks.append(1)
        return len(checks) > 2

    with pytest.raises(Cancelled, match="encoder fit was cancelled"):
        fit_encoder_step(dataset, store, alphas=[1.0, 10.0], should_stop=stop_after_two_folds)
    assert len(checks) == 3
    np.testing.assert_array_equal(ResultsStore.open(store.root).results().group("encoder")["effective_weights"][...], before)


def test_encoder_fit_reports_progress_in_voxels(fitted):
    dataset, _, store, _ = fitted
    reports = []
    fit_encoder_step(dataset, ResultsStore.open(store.root), on_progress=lambda *report: reports.append(report))
    n_voxels = int(np.asarray(dataset.mask).sum())
    assert reports[-1] == (n_voxels, n_voxels)


def test_features_on_a_dask_cluster_match_the_serial_ones(fitted, tmp_path, monkeypatch):
    from distributed import Client

    from napari_mine import decompose

    monkeypatch.setattr(decompose, "TOKEN_CHUNK_BYTES", 2**20)  # several tasks (one per chunk) for 240 images
    dataset, backbone, store, _ = fitted
    on_cluster = ResultsStore.create(tmp_path / "cluster", model=backbone.record, dataset=dataset.source)
    reports = []
    with Client(processes=False, n_workers=2, threads_per_worker=1, dashboard_address=None) as client:
        n = compute_features(dataset, backbone, on_cluster, batch_size=16, client=client,
                             on_progress=lambda *report: reports.append(report))
    n_chunks = on_cluster.results().group("features")["tokens"].nchunks
    assert n == len(dataset.images) and reports[0] == (0, n) and reports[-1] == (n, n) and len(reports) == n_chunks + 1
    for name in ("tokens", "rest", "features", "image_ids"):
        np.testing.assert_allclose(on_cluster.results().group("features")[name][...],
                                   store.results().group("features")[name][...], atol=1e-6)


def test_a_stopped_dask_extraction_leaves_the_store_unchanged(fitted, tmp_path):
    from distributed import Client

    dataset, backbone, _, _ = fitted
    on_cluster = ResultsStore.create(tmp_path / "cluster", model=backbone.record, dataset=dataset.source)
    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        with pytest.raises(Cancelled, match="cancelled"):
            compute_features(dataset, backbone, on_cluster, client=client, should_stop=lambda: True)
    assert not on_cluster.has("features")
    assert not [path for path in on_cluster.root.iterdir() if path.name.startswith(".features")]


def test_cli_features_names_an_unreachable_dask_scheduler(fitted, tmp_path, capsys):
    world = fitted[0].source["root"]
    assert cli.main(["features", str(world), "--out", str(tmp_path / "results"), "--dask", "tcp://127.0.0.1:1"]) == 2
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:1" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()
