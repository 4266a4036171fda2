"""The voxelwise encoder: per-voxel α by CV, exact effective weights, accuracy against the noise ceiling."""

import numpy as np
import pytest
import scipy.stats
from sklearn.model_selection import ShuffleSplit

from napari_mine.encoding import (
    VoxelEncoder,
    evaluate,
    fit_encoder,
    noise_ceiling,
    normalized_r,
    pearson_r,
    project_terms,
    resolve_backend,
)
from napari_mine.errors import MineInputError

# From where α starts to matter against the Gram's eigenvalues (~n): below, float32 cannot rank the CV losses
# of the quietest voxels (they differ by < 1e-7 relative, and so do the weights), so exact α comparisons flip.
ALPHAS = np.logspace(0, 6, 13)


def synthetic(n_images=400, n_features=16, n_voxels=24, seed=0):
    """Offset features of unequal scales; voxels with known weights and noise growing from voxel 0 to the last."""
    rng = np.random.default_rng(seed)
    scales = rng.uniform(0.02, 0.1, n_features)
    features = rng.standard_normal((n_images, n_features)) * scales + rng.uniform(-1, 1, n_features)
    true_weights = rng.standard_normal((n_features, n_voxels))
    true_bias = rng.standard_normal(n_voxels)
    clean = features @ true_weights + true_bias
    noise_sd = np.logspace(-2, 1, n_voxels) * clean.std(axis=0)
    responses = clean + noise_sd * rng.standard_normal((n_images, n_voxels))
    return features.astype(np.float32), responses.astype(np.float32), true_weights, true_bias


@pytest.fixture(scope="module")
def fitted():
    features, responses, true_weights, true_bias = synthetic()
    encoder = fit_encoder(features, responses, alphas=ALPHAS, cv=5, backend="numpy")
    return encoder, features, responses, true_weights, true_bias


def test_recovers_known_weights_with_alpha_growing_with_noise(fitted):
    encoder, _, _, true_weights, true_bias = fitted
    weights, bias = encoder.effective_weights()
    quiet = slice(0, 8)
    error = np.linalg.norm(weights[:, quiet] - true_weights[:, quiet], axis=0) / np.linalg.norm(
        true_weights[:, quiet], axis=0
    )
    assert np.all(error < 0.05)
    np.testing.assert_allclose(bias[quiet], true_bias[quiet], atol=0.05)
    assert np.median(encoder.alphas[:8]) < np.median(encoder.alphas[-8:])
    assert scipy.stats.spearmanr(np.arange(encoder.n_voxels), encoder.alphas).statistic > 0.8


@pytest.mark.parametrize(
    "backend, cv",
    [("numpy", 4), ("torch", ShuffleSplit(n_splits=1, test_size=0.25, random_state=0))],
    ids=["numpy-4-fold", "torch-one-split"],
)
def test_same_alphas_and_weights_as_himalaya_ridgecv(backend, cv):
    from himalaya.ridge import RidgeCV

    features, responses, _, _ = synthetic(seed=1)
    encoder = fit_encoder(features, responses, alphas=ALPHAS, cv=cv, backend=backend, voxel_batch=10)
    features64 = features.astype(np.float64)
    standardised = (features64 - features64.mean(0)) / features64.std(0)
    reference = RidgeCV(alphas=ALPHAS, fit_intercept=True, cv=cv).fit(standardised, responses.astype(np.float64))
    np.testing.assert_allclose(encoder.alphas, reference.best_alphas_, rtol=1e-6)
    np.testing.assert_allclose(encoder.weights, reference.coef_, atol=1e-5 * np.abs(reference.coef_).max())
    np.testing.assert_allclose(encoder.intercept, reference.intercept_, rtol=1e-5, atol=1e-5)


def test_backend_choice_and_restoring_himalaya_backend(fitted):
    import torch
    from himalaya.backend import get_backend

    encoder, features, responses, _, _ = fitted
    assert resolve_backend("auto") == ("torch_cuda" if torch.cuda.is_available() else "numpy")
    if not torch.cuda.is_available():
        with pytest.raises(MineInputError, match="CUDA"):
            resolve_backend("torch_cuda")
    before = get_backend().name
    fit_encoder(features[:, :4], responses[:, :2], alphas=ALPHAS, backend="torch")
    assert get_backend().name == before


def test_voxel_batches_give_the_same_fit_and_report_progress(fitted):
    encoder, features, responses, _, _ = fitted
    calls = []
    batched = fit_encoder(features, responses, alphas=ALPHAS, cv=5, backend="numpy", voxel_batch=7,
                          on_progress=lambda done, total: calls.append((done, total)))
    assert calls == [(7, 24), (14, 24), (21, 24), (24, 24)]
    np.testing.assert_array_equal(batched.alphas, encoder.alphas)
    np.testing.assert_allclose(batched.weights, encoder.weights, atol=1e-4 * np.abs(encoder.weights).max())


def test_effective_weights_reproduce_the_standardised_model(fitted):
    encoder, features, _, _, _ = fitted
    weights, bias = encoder.effective_weights()
    prediction = encoder.predict(features)
    np.testing.assert_array_equal(prediction, features @ weights + bias)
    standardised = (features.astype(np.float64) - encoder.feature_mean) / encoder.feature_scale
    reference = standardised @ encoder.weights.astype(np.float64) + encoder.intercept
    np.testing.assert_allclose(prediction, reference, rtol=1e-5, atol=1e-5 * np.abs(reference).max())


def test_projected_terms_sum_to_the_prediction(fitted):
    encoder, features, _, _, _ = fitted
    rng = np.random.default_rng(3)
    terms = rng.standard_normal((10, 7, encoder.n_features)).astype(np.float32)
    terms[:, -1] = features[:10] - terms[:, :-1].sum(axis=1)
    _, bias = encoder.effective_weights()
    summed = project_terms(terms, encoder).sum(axis=1) + bias
    np.testing.assert_allclose(summed, encoder.predict(features[:10]), rtol=1e-4, atol=1e-4)
    chosen = [2, 5, 11]
    np.testing.assert_allclose(project_terms(terms, encoder, voxels=chosen), project_terms(terms, encoder)[..., chosen],
                               rtol=1e-5, atol=1e-5)


def test_constant_features_and_voxels_are_harmless():
    features, responses, _, _ = synthetic(seed=2)
    features[:, 3] = 0.25
    responses[:, 0] = 1.5
    encoder = fit_encoder(features, responses, alphas=ALPHAS, backend="numpy")
    assert encoder.feature_scale[3] == 1.0
    assert np.all(np.isfinite(encoder.weights))
    np.testing.assert_allclose(encoder.predict(features)[:, 0], 1.5, atol=1e-5)


def test_noise_ceiling_single_and_mixed_repeats():
    ncsnr = np.array([0.0, 1.0, 2.0])
    np.testing.assert_allclose(noise_ceiling(ncsnr, 3), [0.0, 75.0, 100 * 4 / (4 + 1 / 3)])
    np.testing.assert_allclose(noise_ceiling(ncsnr, np.array([3, 3, 3])), noise_ceiling(ncsnr, 3))
    # A = 2 images seen 3 times, B = 1 seen twice, C = 1 seen once: 1/n -> (2/3 + 1/2 + 1) / 4 = 13/24.
    np.testing.assert_allclose(noise_ceiling(np.array([2.0]), np.array([3, 1, 3, 2])), [9600 / 109])


def test_normalized_r_divides_by_the_ceiling_correlation():
    result = normalized_r(np.array([0.5, 0.3, 0.2]), np.array([25.0, 100.0, 0.0]))
    np.testing.assert_allclose(result[:2], [1.0, 0.3])
    assert np.isnan(result[2])


def test_pearson_r_matches_scipy_and_is_nan_for_constant_columns():
    rng = np.random.default_rng(4)
    y_true = rng.standard_normal((50, 5))
    y_pred = y_true + rng.standard_normal((50, 5))
    y_pred[:, 4] = 2.0
    with np.errstate(all="raise"):
        r = pearson_r(y_true, y_pred)
    expected = [scipy.stats.pearsonr(y_true[:, v], y_pred[:, v]).statistic for v in range(4)]
    np.testing.assert_allclose(r[:4], expected, rtol=1e-12)
    assert np.isnan(r[4])


def test_evaluate_scores_against_the_ceiling(fitted):
    encoder, features, responses, _, _ = fitted
    ncsnr = np.full(encoder.n_voxels, 1.0)
    scores = evaluate(encoder, features, responses, ncsnr, np.array([1, 2] * 200))
    np.testing.assert_allclose(scores["r"], pearson_r(responses, encoder.predict(features)))
    np.testing.assert_allclose(scores["noise_ceiling"], 100 / (1 + 0.75))
    np.testing.assert_allclose(scores["normalized_r"], scores["r"] / np.sqrt(1 / 1.75))
    without = evaluate(encoder, features, responses)
    assert np.all(np.isnan(without["noise_ceiling"])) and np.all(np.isnan(without["normalized_r"]))


def test_round_trip_through_arrays_and_the_store(fitted, tmp_path):
    import zarr

    from napari_mine.store import write_arrays

    encoder, features, _, _, _ = fitted
    group = zarr.open_group(tmp_path / "encoder.zarr", mode="w")
    write_arrays(group, encoder.to_arrays())
    restored = VoxelEncoder.from_arrays(zarr.open_group(tmp_path / "encoder.zarr", mode="r"))
    for name, values in encoder.to_arrays().items():
        np.testing.assert_array_equal(getattr(restored, name), values)
    np.testing.assert_array_equal(restored.predict(features), encoder.predict(features))


def test_bad_inputs_raise_clear_errors(fitted):
    encoder, features, responses, _, _ = fitted
    nan_features = features.copy()
    nan_features[3, 2] = np.nan
    cases = [
        (lambda: fit_encoder(features[:-1], responses), "rows"),
        (lambda: fit_encoder(nan_features, responses), "NaN"),
        (lambda: fit_encoder(features, np.where(responses > 3, np.inf, responses)), "NaN"),
        (lambda: fit_encoder(features[:, 0], responses), "2-D"),
        (lambda: fit_encoder(features, responses, alphas=[1.0, -1.0]), "positive"),
        (lambda: fit_encoder(features, responses, backend="jax"), "backend"),
        (lambda: fit_encoder(features[:3], responses[:3], cv=5), "fewer folds"),
        (lambda: fit_encoder(features, responses, cv=ShuffleSplit(1, test_size=0.2, train_size=0.5)), "partition"),
        (lambda: encoder.predict(features[:, :5]), "dimensions"),
        (lambda: project_terms(np.ones((2, 3)), encoder), "feature dimensions"),
        (lambda: VoxelEncoder.from_arrays({"weights": encoder.weights}), "lacks"),
        (lambda: noise_ceiling(np.array([1.0, np.nan]), 3), "ncsnr"),
        (lambda: noise_ceiling(np.array([1.0]), np.array([0, 2])), "n_repeats"),
        (lambda: pearson_r(np.ones((4, 2)), np.ones((4, 3))), "same shape"),
        (lambda: evaluate(encoder, features[:5], responses[:6]), "rows"),
    ]
    for call, words in cases:
        with pytest.raises(MineInputError, match=words):
            call()
