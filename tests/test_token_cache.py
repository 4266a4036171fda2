"""The token cache's storage type: float32 (exact, the default) or float16 (half the size, small stated error).

float16 keeps 11 significant bits per stored term, so the decomposition sums to the encoder's prediction only
within the tolerances below (docs/benchmarks.md measures them: ~1e-4 median, ≤ 1e-2 worst case on the demo
world); the features and `rest` stay float32, so the prediction itself does not change.
"""

import numpy as np
import pytest
import torch

from napari_mine import cli
from napari_mine.decompose import create_cache_arrays, decompose_to_store
from napari_mine.errors import MineInputError
from napari_mine.pipeline import compute_features
from napari_mine.results import Results
from napari_mine.store import ResultsStore

PER_IMAGE_TOLERANCE = 1e-2  # ‖Δ_i‖ / ‖ŷ_i‖ over all targets of an image
SPREAD_TOLERANCE = 2e-2  # |Δ| over the target's prediction spread (std over images)


def _tiny_tower():
    from open_clip.transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(image_size=32, patch_size=8, width=64, layers=3, heads=4, mlp_ratio=2.0,
                             output_dim=24).eval()


@pytest.fixture(scope="module")
def stores(tmp_path_factory, fit_synthetic_world):
    """A fitted float32 store (the default) and the same world's features as a float16 cache."""
    root = tmp_path_factory.mktemp("token_cache")
    dataset, backbone, exact, _ = fit_synthetic_world(root, n_images=200)
    half = ResultsStore.create(root / "float16", model=backbone.record, dataset=dataset.source)
    compute_features(dataset, backbone, half, token_dtype="float16")
    return Results.open(exact.root), Results.open(half.root)


def test_the_default_cache_is_exact_float32(stores, tmp_path):
    exact, _ = stores
    assert exact.manifest.settings("features")["token_dtype"] == "float32"
    assert exact.group("features")["tokens"].dtype == np.float32
    import zarr

    arrays = create_cache_arrays(zarr.open_group(tmp_path / "c.zarr", mode="w"), 3, 5, 4)
    assert {name: str(array.dtype) for name, array in arrays.items()} == \
        {"tokens": "float32", "rest": "float32", "features": "float32"}
    assert cli.build_parser().parse_args(["features", "data", "--out", "o"]).token_dtype == "float32"


def test_float16_cache_round_trips_as_float32_with_the_same_features(stores):
    exact, half = stores
    group = half.group("features")
    assert half.manifest.settings("features")["token_dtype"] == "float16"
    assert group["tokens"].dtype == np.float16 and group["rest"].dtype == group["features"].dtype == np.float32
    rows = np.arange(0, exact.n_images, 7)
    tokens16, tokens32 = half.tokens(rows), exact.tokens(rows)
    assert tokens16.dtype == np.float32
    np.testing.assert_array_equal(tokens16, tokens32.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(half.features(), exact.features())
    np.testing.assert_array_equal(half.rest(), exact.rest())


def test_float16_terms_sum_to_the_prediction_within_tolerance(stores):
    exact, half = stores
    weights, bias = (np.asarray(a, np.float64) for a in exact.weights())
    predicted = exact.predict()
    decomposed = (half.tokens(np.arange(half.n_images)).sum(1, dtype=np.float64) + half.rest()) @ weights + bias
    per_image = np.linalg.norm(decomposed - predicted, axis=1) / np.linalg.norm(predicted, axis=1)
    over_spread = np.abs(decomposed - predicted) / predicted.std(axis=0)
    assert per_image.max() < PER_IMAGE_TOLERANCE and over_spread.max() < SPREAD_TOLERANCE
    assert np.median(over_spread) < 1e-3  # most terms lose far less than the worst case


def test_decompose_to_store_casts_only_the_tokens(tmp_path):
    import zarr

    model, images = _tiny_tower(), torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    exact, half = (zarr.open_group(tmp_path / f"{name}.zarr", mode="w") for name in ("f32", "f16"))
    decompose_to_store(model, images, exact, batch_size=2)
    decompose_to_store(model, images, half, batch_size=2, token_dtype="float16")
    assert half["tokens"].dtype == np.float16 and half.attrs["complete"] is True
    np.testing.assert_array_equal(half["tokens"][...], exact["tokens"][...].astype(np.float16))
    np.testing.assert_array_equal(half["features"][...], exact["features"][...])


def test_an_unknown_token_dtype_is_refused_in_one_sentence(tmp_path):
    import zarr

    with pytest.raises(MineInputError, match="token_dtype 'float64' is not a token cache type; use 'float32'"):
        decompose_to_store(_tiny_tower(), torch.zeros(1, 3, 32, 32), zarr.open_group(tmp_path / "x.zarr", mode="w"),
                           token_dtype="float64")


def test_the_fit_dock_offers_the_cache_type_and_passes_it_to_the_job(stores, make_napari_viewer, monkeypatch):
    from napari_mine._reader import read_store
    from napari_mine._widgets import FitWidget
    from napari_mine._widgets._fit import fit_steps

    exact, _ = stores
    viewer = make_napari_viewer()
    for data, kwargs, kind in read_store(exact.root, stimuli=False):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    widget = FitWidget(viewer)
    choices = [widget.token_dtype.itemText(i) for i in range(widget.token_dtype.count())]
    assert choices == ["float32", "float16"] and widget.token_dtype.currentText() == "float32"
    started = []
    monkeypatch.setattr(widget, "run_staged", lambda description, job, *args: started.append((job, args)))
    widget.token_dtype.setCurrentText("float16")
    widget.run()
    assert started == [(fit_steps, (str(exact.root.resolve()), None, False, "float16", False, None, False, False))]
