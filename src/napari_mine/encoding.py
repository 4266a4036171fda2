"""The voxelwise encoder: ridge regression from image features to voxel responses, α chosen per voxel by CV.

Why a solver of our own on himalaya's backends rather than `himalaya.ridge.RidgeCV`: with many more images
than features (NSD: ~9,000 images, 512 features) and many voxels, himalaya's CV multiplies an
(alphas × validation × train images) matrix by the responses of every voxel, and its refit solves every
selected α for every voxel: 20–40× slower than this module at 10,000 images × 20,000 voxels. Ridge needs
only D × D and D × V statistics: each fold's train Gram is diagonalised once, and the held-out squared
error of every α follows from D × D × V products, never from per-α predictions. Array work runs on
himalaya's backend (numpy, torch, torch_cuda), picked in `resolve_backend` and nothing else, in float32 and
in voxel batches; the small D × D geometry is done once per fold on the host in float64 and reused by
every batch, so responses can stream from a chunked store on disk (`napari_mine.responses`) a batch at a
time (`fit_encoder_blocks`): 327,684 surface targets fit in the memory of one batch.
benchmarks/bench_encoder.py measures this against himalaya's RidgeCV and scikit-learn's RidgeCV.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from napari_mine.errors import Cancelled, MineInputError

DEFAULT_ALPHAS = np.logspace(0, 6, 13)  # on standardised features: from negligible next to the Gram (~n) to heavy
BACKENDS = ("auto", "numpy", "torch", "torch_cuda")
ENCODER_ARRAYS = ("weights", "intercept", "alphas", "feature_mean", "feature_scale")


@dataclass(frozen=True)
class VoxelEncoder:
    """A fitted ridge encoder: ``y = ((f - feature_mean) / feature_scale) @ weights + intercept``."""

    weights: np.ndarray  # (D, V) float32, on standardised features
    intercept: np.ndarray  # (V,) float32
    alphas: np.ndarray  # (V,) the α chosen for each voxel
    feature_mean: np.ndarray  # (D,) training mean of the features
    feature_scale: np.ndarray  # (D,) training standard deviation (1 for constant features)

    @property
    def n_features(self) -> int:
        return self.weights.shape[0]

    @property
    def n_voxels(self) -> int:
        return self.weights.shape[1]

    def effective_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """Fold the standardisation into the weights: the model is affine in the raw features.

        This is what makes a prediction decompose: a feature vector that is a sum of terms (DESIGN.md §2)
        predicts the sum of the terms' projections on W̃ plus b̃ once.

        Returns
        -------
        weights : float32 (D, V)
            W̃ = weights / feature_scale, acting on the L2-normalised embeddings themselves.
        bias : float32 (V,)
            b̃ = intercept − (feature_mean / feature_scale) @ weights, so ``predict(f) == f @ W̃ + b̃``.
        """
        weights = self.weights.astype(np.float64) / self.feature_scale.astype(np.float64)[:, None]
        bias = self.intercept.astype(np.float64) - self.feature_mean.astype(np.float64) @ weights
        return weights.astype(np.float32), bias.astype(np.float32)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Predicted responses float32 (n, V) for features (n, D), computed as ``f @ W̃ + b̃``."""
        features = _as_finite_matrix(features, "features")
        if features.shape[1] != self.n_features:
            raise MineInputError(
                f"features have {features.shape[1]} dimensions but the encoder was fitted on "
                f"{self.n_features}; use features from the same model as the fit."
            )
        weights, bias = self.effective_weights()
        return features.astype(np.float32) @ weights + bias

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The arrays that define the encoder, by name, for the results store."""
        return {name: np.asarray(getattr(self, name)) for name in ENCODER_ARRAYS}

    @classmethod
    def from_arrays(cls, arrays) -> "VoxelEncoder":
        """Rebuild an encoder from `to_arrays` output (a dict or a zarr group)."""
        missing = [name for name in ENCODER_ARRAYS if name not in arrays]
        if missing:
            raise MineInputError(f"the stored encoder lacks {', '.join(missing)}; refit it with `napari-mine fit`.")
        values = {name: np.asarray(arrays[name][...]) for name in ENCODER_ARRAYS}
        n_features, n_voxels = values["weights"].shape
        if values["intercept"].shape != (n_voxels,) or values["alphas"].shape != (n_voxels,) or \
                values["feature_mean"].shape != (n_features,) or values["feature_scale"].shape != (n_features,):
            raise MineInputError("the stored encoder's arrays have inconsistent shapes; refit it with "
                                 "`napari-mine fit`.")
        return cls(**values)


def resolve_backend(backend: str = "auto") -> str:
    """The himalaya backend to compute on: "auto" is torch_cuda when CUDA is available, else numpy.

    On the CPU, numpy (OpenBLAS) float32 fitted 1.4× faster than torch's CPU backend in
    benchmarks/bench_encoder.py (9 s vs 13 s, 10,000 images × 8,192 voxels, 2 cores, 3 alternating runs).
    """
    if backend not in BACKENDS:
        raise MineInputError(f"unknown encoder backend {backend!r}; use one of {', '.join(BACKENDS)}.")
    if backend in ("auto", "torch_cuda"):
        import torch

        if torch.cuda.is_available():
            return "torch_cuda"
        if backend == "torch_cuda":
            raise MineInputError("backend 'torch_cuda' needs a CUDA GPU and none is available; use backend='auto'.")
        return "numpy"
    return backend


@contextlib.contextmanager
def _himalaya_backend(name: str) -> Iterator:
    """Switch himalaya's global backend for one fit and restore the caller's afterwards."""
    from himalaya.backend import get_backend, set_backend

    previous = get_backend().name
    try:
        yield set_backend(name)
    finally:
        set_backend(previous)


def fit_encoder(
    features_train: np.ndarray,
    responses_train,
    *,
    alphas: np.ndarray = DEFAULT_ALPHAS,
    cv=5,
    backend: str = "auto",
    voxel_batch: int = 4096,
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> VoxelEncoder:
    """Fit a ridge encoder with one α per voxel chosen by cross-validated held-out squared error.

    Parameters
    ----------
    features_train : (n, D) array
        Image features (the L2-normalised embeddings); standardised with their training mean and scale.
    responses_train : (n, V) array or :class:`napari_mine.responses.ResponseColumns`
        Voxel responses to the same images (e.g. averaged over repeats); a `ResponseColumns` over a chunked
        store on disk is read one voxel batch at a time.
    alphas : 1-D array
        Candidate ridge penalties (on standardised features).
    cv : int, scikit-learn splitter or iterable of (train, validation) index pairs
        An int k means k contiguous folds (scikit-learn KFold, no shuffling: neighbouring trials are
        correlated in fMRI, so contiguous blocks keep validation honest). Each split must partition the
        images into train and validation (KFold, ShuffleSplit with default train_size, …).
    backend : {"auto", "numpy", "torch", "torch_cuda"}
        himalaya backend for the voxel-sized products, in float32; see `resolve_backend`.
    voxel_batch : int
        Voxels processed at once; bounds memory to about ``n × voxel_batch`` floats on the device.
    on_progress : callable(done_voxels, total_voxels), optional
        Called after each voxel batch.
    should_stop : callable() -> bool, optional
        Checked after each fold's eigendecomposition and each voxel batch; True ends the fit by raising
        :class:`napari_mine.errors.Cancelled`.

    Returns
    -------
    VoxelEncoder
    """
    blocks = list(fit_encoder_blocks(features_train, responses_train, alphas=alphas, cv=cv, backend=backend,
                                     voxel_batch=voxel_batch, on_progress=on_progress, should_stop=should_stop))
    first = blocks[0][1]
    return VoxelEncoder(
        weights=np.concatenate([block.weights for _, block in blocks], axis=1),
        intercept=np.concatenate([block.intercept for _, block in blocks]),
        alphas=np.concatenate([block.alphas for _, block in blocks]),
        feature_mean=first.feature_mean,
        feature_scale=first.feature_scale,
    )


def fit_encoder_blocks(features_train, responses_train, *, alphas: np.ndarray = DEFAULT_ALPHAS, cv=5,
                       backend: str = "auto", voxel_batch: int = 4096,
                       on_progress: Callable[[int, int], None] | None = None,
                       should_stop: Callable[[], bool] | None = None) -> Iterator[tuple[slice, VoxelEncoder]]:
    """`fit_encoder` one voxel batch at a time: yields ``(voxels, encoder of those voxels)``.

    The feature side (standardisation, every fold's eigendecomposition) is computed once, before the first
    batch, and reused by all; each batch reads only its own responses. A caller that writes each batch
    away (`pipeline.fit_encoder_step`) holds one batch of responses and weights at a time, whatever the
    number of voxels. Arguments as for `fit_encoder`.
    """
    from napari_mine.responses import ResponseColumns

    features = _as_finite_matrix(features_train, "features_train").astype(np.float64)
    responses = responses_train if isinstance(responses_train, ResponseColumns) else \
        ResponseColumns(_as_finite_matrix(responses_train, "responses_train"))
    if features.shape[0] != responses.shape[0]:
        raise MineInputError(
            f"features_train has {features.shape[0]} rows but responses_train has {responses.shape[0]}; "
            "pass one row of each per training image."
        )
    n_voxels = responses.shape[1]
    if n_voxels == 0:
        raise MineInputError("responses_train has no voxels (columns); give at least one voxel's responses.")
    alphas = _check_alphas(alphas)
    splits = _cv_splits(cv, len(features))
    feature_mean, feature_scale = _standardisation(features)
    standardised = (features - feature_mean) / feature_scale
    gram = standardised.T @ standardised
    batch_size = max(1, int(voxel_batch))
    covers_all = _validation_covers_all(splits, len(features))
    with _himalaya_backend(resolve_backend(backend)) as hb:
        folds = []
        for train, test in splits:
            folds.append(_fold_geometry(hb, standardised, gram, train, test))
            _stop_if_asked(should_stop)
        full = _fold_geometry(hb, standardised, gram, np.arange(len(features)), np.arange(0))
        design = hb.asarray(standardised, dtype=hb.float32)
        for start in range(0, n_voxels, batch_size):
            batch = slice(start, min(start + batch_size, n_voxels))
            values = _as_finite_matrix(responses.block(batch), "responses_train")
            response_mean = values.mean(axis=0, dtype=np.float64)
            centred = hb.asarray(values - response_mean.astype(np.float32), dtype=hb.float32)
            del values
            alpha_index, weights = _fit_voxel_batch(hb, folds, full, design, centred, alphas, covers_all)
            del centred
            yield batch, VoxelEncoder(weights=weights, intercept=response_mean.astype(np.float32),
                                      alphas=alphas[alpha_index], feature_mean=feature_mean.astype(np.float32),
                                      feature_scale=feature_scale.astype(np.float32))
            if on_progress is not None:
                on_progress(batch.stop, n_voxels)
            _stop_if_asked(should_stop)


def _stop_if_asked(should_stop) -> None:
    if should_stop is not None and should_stop():
        raise Cancelled("the encoder fit was cancelled; nothing was written.")


def _fit_voxel_batch(hb, folds, full, design, centred, alphas: np.ndarray, validation_covers_all: bool):
    """Choose each voxel's α by its summed validation error over folds, then refit on all images.

    Returns the α indices (B,) and the weights float32 (D, B) on the host.
    """
    device_alphas = hb.asarray(alphas, dtype=hb.float32)
    test_crosses = [design[fold.test].T @ centred[fold.test] for fold in folds]
    # with k folds the validation blocks partition the images: Zᵀy is the sum of theirs, at no extra cost
    cross = sum(test_crosses) if validation_covers_all else design.T @ centred
    losses = sum(_fold_losses(hb, fold, centred, cross, test_cross, device_alphas)
                 for fold, test_cross in zip(folds, test_crosses))
    alpha_index = hb.to_numpy(losses).argmin(axis=0)
    return alpha_index, hb.to_numpy(_ridge_weights(full, cross, device_alphas[alpha_index]))


def _as_finite_matrix(values, name: str) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim != 2:
        raise MineInputError(f"{name} must be a 2-D array (rows = images), got shape {values.shape}; reshape it.")
    if not np.issubdtype(values.dtype, np.number) or not np.all(np.isfinite(values)):
        raise MineInputError(f"{name} contains NaN, infinite or non-numeric values; remove or fill them first.")
    return values


def _check_alphas(alphas) -> np.ndarray:
    alphas = np.asarray(alphas, dtype=np.float64)
    if alphas.ndim != 1 or alphas.size == 0 or not np.all(np.isfinite(alphas)) or np.any(alphas <= 0):
        raise MineInputError("alphas must be a non-empty 1-D array of positive penalties, e.g. np.logspace(0, 6, 13).")
    return alphas


def _standardisation(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Training mean and standard deviation; constant features keep scale 1 (they standardise to 0)."""
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    return mean, np.where(scale > 0, scale, 1.0)


def _cv_splits(cv, n_samples: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import check_cv

    try:
        splits = [(np.asarray(train), np.asarray(test)) for train, test in check_cv(cv).split(np.empty(n_samples))]
    except (ValueError, TypeError) as error:
        raise MineInputError(f"cannot cross-validate {n_samples} training images with cv={cv!r} ({error}); "
                             "use more images or fewer folds.") from None
    if not splits or any(len(train) < 2 or len(test) == 0 for train, test in splits):
        raise MineInputError(f"cv={cv!r} gives an empty train or validation set; use more images or fewer folds.")
    if any(not np.array_equal(np.sort(np.concatenate([train, test])), np.arange(n_samples)) for train, test in splits):
        raise MineInputError(f"cv={cv!r} has a split that does not use every training image exactly once (in train "
                             "or validation); use KFold-like splits that partition the images.")
    return splits


def _validation_covers_all(splits, n_samples: int) -> bool:
    """Whether the validation sets together hold every image exactly once (k-fold, not a single split)."""
    return np.array_equal(np.sort(np.concatenate([test for _, test in splits])), np.arange(n_samples))


@dataclass(frozen=True)
class _Fold:
    """One fold's D × D geometry: the train Gram's eigenbasis and the validation Gram expressed in it."""

    test: np.ndarray  # validation indices
    n_train: int
    train_mean: np.ndarray  # (D,) mean of the train features
    test_offset: np.ndarray  # (D,) Σ_validation (z − train_mean)
    eigenvalues: np.ndarray  # (D,) of the centred train Gram
    eigenvectors: np.ndarray  # (D, D)
    test_root: np.ndarray  # (D, D) R with Rᵀ R = the centred validation Gram in the eigenbasis


def _fold_geometry(hb, standardised: np.ndarray, gram: np.ndarray, train: np.ndarray, test: np.ndarray) -> _Fold:
    """Diagonalise the fold's centred train Gram (host float64, once per fold), handed to `hb` in float32.

    The train Gram is the full Gram minus the validation rows' (splits partition the images), so a fold
    costs a pass over its validation rows only.
    """
    test_rows = standardised[test]
    train_mean = (standardised.sum(axis=0) - test_rows.sum(axis=0)) / len(train)
    train_gram = gram - test_rows.T @ test_rows - len(train) * np.outer(train_mean, train_mean)
    eigenvalues, eigenvectors = _eigh_one_thread(train_gram)
    centred_test = test_rows - train_mean
    test_values, test_vectors = _eigh_one_thread(eigenvectors.T @ (centred_test.T @ centred_test) @ eigenvectors)
    arrays = {
        "train_mean": train_mean,
        "test_offset": centred_test.sum(axis=0),
        "eigenvalues": np.clip(eigenvalues, 0, None),
        "eigenvectors": eigenvectors,
        "test_root": np.sqrt(np.clip(test_values, 0, None))[:, None] * test_vectors.T,
    }
    return _Fold(test=hb.asarray(test), n_train=len(train),
                 **{name: hb.asarray(values, dtype=hb.float32) for name, values in arrays.items()})


def _eigh_one_thread(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`np.linalg.eigh` on one BLAS thread: a D × D eigendecomposition gains little from threads and stalls
    when the cores are busy (512 × 512 on 2 shared cores: 0.04–0.1 s on one thread, 0.2–2 s on two)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return np.linalg.eigh(matrix)


def _fold_losses(hb, fold: _Fold, responses, cross, test_cross, alphas):
    """Validation squared error (minus its α-independent part ‖y_val − ȳ_train‖²) for every α, (A, B).

    With z, y centred by the fold's train means, the α-ridge weights are w = Q (Λ + α)⁻¹ Qᵀ b with
    b = Σ_train z yᵀ, and the validation error is ‖y‖² − 2 wᵀc + ‖R Qᵀw‖² with c = Σ_val z yᵀ and
    RᵀR = Qᵀ(Σ_val z zᵀ)Q: all from D × B products, whatever the number of validation images. Train
    sums are totals minus validation sums (`cross` = Σ_all z yᵀ, `test_cross` = Σ_val z yᵀ, uncentred).
    """
    test_sum = responses[fold.test].sum(0)
    train_sum = responses.sum(0) - test_sum
    train_cross = cross - test_cross - fold.train_mean[:, None] * train_sum[None, :]
    test_cross = (test_cross - fold.train_mean[:, None] * test_sum[None, :]
                  - fold.test_offset[:, None] * (train_sum / fold.n_train)[None, :])
    rotated_train = fold.eigenvectors.T @ train_cross
    shrinkage = 1 / (fold.eigenvalues[None, :] + alphas[:, None])  # (A, D): (Λ + α)⁻¹ for every α
    fit_terms = shrinkage @ (rotated_train * (fold.eigenvectors.T @ test_cross))  # wᵀc
    norm_terms = hb.stack([hb.norm((fold.test_root * inverse[None, :]) @ rotated_train, ord=2, axis=0) ** 2
                           for inverse in shrinkage])  # ‖R Qᵀw‖²
    return norm_terms - 2 * fit_terms


def _ridge_weights(full: _Fold, cross, voxel_alphas):
    """Refit on all training images: W = Q (Λ + α_v)⁻¹ Qᵀ Zᵀy, one α per voxel (Z, y centred on all)."""
    rotated = (full.eigenvectors.T @ cross) / (full.eigenvalues[:, None] + voxel_alphas[None, :])
    return full.eigenvectors @ rotated


def project_terms(terms: np.ndarray, encoder: VoxelEncoder, voxels=None) -> np.ndarray:
    """Project additive feature terms (tokens, heads, …) on the effective weights of the chosen voxels.

    If the terms sum to a feature vector f, their projections sum to ``predict(f) − b̃``: add b̃ once.

    Parameters
    ----------
    terms : (..., D) array
        Contributions in the L2-normalised embedding space (e.g. `Decomposition.tokens`).
    encoder : VoxelEncoder
    voxels : index, slice or boolean mask over the encoder's voxels, optional
        Default: all voxels.

    Returns
    -------
    float32 (..., V_selected)
    """
    terms = np.asarray(terms)
    if terms.ndim == 0 or terms.shape[-1] != encoder.n_features:
        raise MineInputError(
            f"terms must end in the encoder's {encoder.n_features} feature dimensions, got shape {terms.shape}; "
            "use contributions from the model the encoder was fitted on."
        )
    weights, _ = encoder.effective_weights()
    if voxels is not None:
        weights = weights[:, voxels]
    return terms.astype(np.float32) @ weights


def pearson_r(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Per-voxel Pearson correlation over images; NaN for voxels where either column is constant.

    Parameters
    ----------
    y_true, y_pred : (n, V) arrays (a 1-D array is one voxel)

    Returns
    -------
    float64 (V,)
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if y_true.shape != y_pred.shape or y_true.ndim not in (1, 2) or len(y_true) < 2:
        raise MineInputError(f"pearson_r needs two arrays of the same shape (images, voxels) with at least 2 images, "
                             f"got {y_true.shape} and {y_pred.shape}.")
    y_true = (y_true - y_true.mean(axis=0)).reshape(len(y_true), -1)
    y_pred = (y_pred - y_pred.mean(axis=0)).reshape(len(y_pred), -1)
    norms = np.sqrt((y_true ** 2).sum(axis=0) * (y_pred ** 2).sum(axis=0))
    covariance = (y_true * y_pred).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(norms > 0, covariance / np.where(norms > 0, norms, 1.0), np.nan)


def noise_ceiling(ncsnr: np.ndarray, n_repeats) -> np.ndarray:
    """Noise ceiling in percent of variance for responses averaged over repeats (NSD's formula).

    ``NC = 100 · ncsnr² / (ncsnr² + 1/n)``; with per-image repeat counts that differ (A images seen 3 times,
    B twice, C once), 1/n becomes the mean of 1/n over images, ``(A/3 + B/2 + C/1) / (A + B + C)``.

    Parameters
    ----------
    ncsnr : (V,) array
        Noise-ceiling signal-to-noise ratio per voxel (NSD's ``ncsnr``).
    n_repeats : int or (n_images,) int array
        Repeats averaged per evaluated image.

    Returns
    -------
    float64 (V,) in [0, 100]
    """
    ncsnr = np.asarray(ncsnr, dtype=np.float64)
    repeats = np.atleast_1d(np.asarray(n_repeats))
    if not np.all(np.isfinite(ncsnr)) or np.any(ncsnr < 0):
        raise MineInputError("ncsnr must be finite and non-negative; mask out voxels without a valid ncsnr.")
    if repeats.size == 0 or repeats.ndim != 1 or not np.issubdtype(repeats.dtype, np.number) or \
            np.any(repeats < 1) or np.any(repeats != np.round(repeats)):
        raise MineInputError("n_repeats must be a positive integer or an array of per-image repeat counts (>= 1).")
    mean_inverse_repeats = np.mean(1.0 / repeats)
    signal = ncsnr ** 2
    return 100.0 * signal / (signal + mean_inverse_repeats)


def normalized_r(r: np.ndarray, nc: np.ndarray, min_ceiling: float = 1e-6) -> np.ndarray:
    """Correlation as a fraction of the noise ceiling's correlation: ``r / sqrt(nc / 100)``.

    sqrt(nc/100) is the highest r a perfect model can reach against noisy averaged responses, so 1 means
    "at the ceiling" (noise can push it above 1). NaN where the ceiling is at most `min_ceiling` percent.
    """
    r = np.asarray(r, dtype=np.float64)
    nc = np.asarray(nc, dtype=np.float64)
    if r.shape != nc.shape:
        raise MineInputError(f"r {r.shape} and noise ceiling {nc.shape} must have one value per voxel each.")
    ceiling_r = np.sqrt(np.where(nc > min_ceiling, nc, np.nan) / 100.0)
    return r / ceiling_r


def evaluate(encoder: VoxelEncoder, features_test, responses_test, ncsnr=None, n_repeats=1) -> dict[str, np.ndarray]:
    """Score an encoder on held-out images against the noise ceiling.

    Parameters
    ----------
    encoder : VoxelEncoder
    features_test : (n, D) array
    responses_test : (n, V) array
        Measured responses, averaged over each image's repeats.
    ncsnr : (V,) array or None
        Without it the ceiling and the normalised r are NaN.
    n_repeats : int or (n,) int array
        Repeats behind each test image's response.

    Returns
    -------
    dict with float64 (V,) arrays "r", "noise_ceiling" (percent) and "normalized_r".
    """
    responses_test = _as_finite_matrix(responses_test, "responses_test")
    if len(responses_test) != len(features_test):
        raise MineInputError(f"features_test has {len(features_test)} rows but responses_test has "
                             f"{len(responses_test)}; pass one row of each per test image.")
    if responses_test.shape[1] != encoder.n_voxels:
        raise MineInputError(f"responses_test has {responses_test.shape[1]} voxels but the encoder has "
                             f"{encoder.n_voxels}; use the same voxel mask as the fit.")
    r = pearson_r(responses_test, encoder.predict(features_test))
    if ncsnr is None:
        nc = np.full(encoder.n_voxels, np.nan)
        return {"r": r, "noise_ceiling": nc, "normalized_r": nc.copy()}
    nc = noise_ceiling(ncsnr, n_repeats)
    return {"r": r, "noise_ceiling": nc, "normalized_r": normalized_r(r, nc)}
