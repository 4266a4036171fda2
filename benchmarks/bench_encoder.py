"""Encoder fit speed: napari_mine.encoding.fit_encoder against scikit-learn's and himalaya's RidgeCV.

Data: a random low-rank model + noise, shaped like the real task (L2-normalised, correlated 512-d features;
voxels with a wide range of signal-to-noise, so the best α really differs between voxels). Every option gets
the same standardised features and the same α grid. Timings are wall-clock on a shared machine: each option
runs --repeats times and the best and median are printed. Afterwards the α's and held-out r of our 5-fold fit
are compared with scikit-learn's efficient leave-one-out on the voxels scikit-learn was run on.

    .venv/bin/python benchmarks/bench_encoder.py                      # 10,000 × 512 → 20,000 voxels
    .venv/bin/python benchmarks/bench_encoder.py --voxels 2000 --sklearn-voxels 2000 --himalaya-voxels 500
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from napari_mine.encoding import DEFAULT_ALPHAS, fit_encoder, pearson_r, resolve_backend


def make_data(n_train: int, n_test: int, n_features: int, n_voxels: int, seed: int = 0):
    """Correlated unit-norm features and voxels driven by a rank-32 subspace, with log-uniform SNR."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    latent = rng.standard_normal((n, 64)).astype(np.float32)
    mixing = rng.standard_normal((64, n_features)).astype(np.float32)
    features = latent @ mixing + 0.5 * rng.standard_normal((n, n_features)).astype(np.float32) + 3.0
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    tuning = rng.standard_normal((n_features, 32)).astype(np.float32) @ \
        rng.standard_normal((32, n_voxels)).astype(np.float32)
    signal = features @ tuning
    signal = (signal - signal.mean(0)) / signal.std(0)
    noise_sd = np.exp(rng.uniform(np.log(0.3), np.log(10.0), n_voxels)).astype(np.float32)
    responses = signal + noise_sd * rng.standard_normal((n, n_voxels)).astype(np.float32)
    return (features[:n_train], responses[:n_train], features[n_train:], responses[n_train:], signal[n_train:],
            noise_sd)


def seconds(fit):
    """(wall seconds, result) of one call."""
    start = time.perf_counter()
    result = fit()
    return time.perf_counter() - start, result


def sklearn_fit(features, responses, alphas):
    from sklearn.linear_model import RidgeCV

    scaled = (features - features.mean(0)) / features.std(0)
    return RidgeCV(alphas=alphas, alpha_per_target=True).fit(scaled, responses)


def himalaya_fit(features, responses, alphas, cv):
    from himalaya.backend import get_backend, set_backend
    from himalaya.ridge import RidgeCV

    previous = get_backend().name
    set_backend("torch")
    scaled = ((features - features.mean(0)) / features.std(0)).astype(np.float32)
    model = RidgeCV(alphas=alphas, fit_intercept=True, cv=cv).fit(scaled, responses.astype(np.float32))
    set_backend(previous)
    return model


def line(name: str, times: list[float], note: str = "") -> None:
    print(f"{name:<46s} best {min(times):8.1f} s  median {np.median(times):8.1f} s  over {len(times)}{note}",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--test-images", type=int, default=1_000)
    parser.add_argument("--features", type=int, default=512)
    parser.add_argument("--voxels", type=int, default=20_000)
    parser.add_argument("--sklearn-voxels", type=int, default=20_000, help="fewer = extrapolated, said so")
    parser.add_argument("--himalaya-voxels", type=int, default=1_000, help="himalaya's RidgeCV is slow here")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    alphas = DEFAULT_ALPHAS
    print(f"{args.images} train images × {args.features} features → {args.voxels} voxels; {len(alphas)} alphas "
          f"{alphas[0]:g}…{alphas[-1]:g}; torch threads {torch.get_num_threads()}", flush=True)
    x_train, y_train, x_test, y_test, clean_test, noise_sd = make_data(
        args.images, args.test_images, args.features, args.voxels
    )

    from sklearn.model_selection import ShuffleSplit

    fit_encoder(x_train[:200], y_train[:200, :10], backend="torch")  # warm torch up outside the timings
    auto = resolve_backend("auto")
    default = f"ours, {auto} float32, 5-fold (auto)"
    holdout = ShuffleSplit(n_splits=1, test_size=0.2, random_state=0)
    options = {
        default: dict(backend=auto, cv=5),
        f"ours, {auto} float32, 3-fold": dict(backend=auto, cv=3),
        f"ours, {auto} float32, one 80/20 split": dict(backend=auto, cv=holdout),
        **{f"ours, {other} float32, 5-fold": dict(backend=other, cv=5) for other in ("numpy", "torch")
           if other != auto},
    }
    times = {name: [] for name in options}
    fits = {}
    for _ in range(args.repeats):  # round-robin, so that every option sees the same changing load
        for name, kwargs in options.items():
            elapsed, fits[name] = seconds(lambda: fit_encoder(x_train, y_train, alphas=alphas, **kwargs))
            times[name].append(elapsed)
    for name in options:
        line(name, times[name])
    encoder = fits[default]

    himalaya_fit(x_train, y_train[:, :5], alphas, cv=5)  # its first call pays a one-off start-up: not timed
    him_counts = (max(1, args.himalaya_voxels // 4), args.himalaya_voxels)
    him_times = [seconds(lambda: himalaya_fit(x_train, y_train[:, :count], alphas, cv=5))[0] for count in him_counts]
    per_voxel = max(0.0, (him_times[1] - him_times[0]) / (him_counts[1] - him_counts[0]))
    himalaya_seconds = him_times[0] + per_voxel * (args.voxels - him_counts[0])
    line("himalaya RidgeCV, torch float32, 5-fold", [himalaya_seconds],
         f"  (extrapolated linearly from {him_counts[0]} voxels: {him_times[0]:.1f} s, "
         f"{him_counts[1]}: {him_times[1]:.1f} s)")

    n_sk = min(args.sklearn_voxels, args.voxels)
    sklearn_seconds, sk_model = seconds(lambda: sklearn_fit(x_train, y_train[:, :n_sk], alphas))
    sklearn_seconds *= args.voxels / n_sk
    line("scikit-learn RidgeCV, float64, leave-one-out", [sklearn_seconds],
         "" if n_sk == args.voxels else f"  (ran on {n_sk} voxels, ×{args.voxels / n_sk:.1f} extrapolated)")
    adjacent, _ = seconds(lambda: fit_encoder(x_train, y_train, alphas=alphas, **options[default]))
    line("  the same, right after scikit-learn", [adjacent])
    sk_alphas = np.asarray(sk_model.alpha_)

    ours_seconds = float(np.median(times[default] + [adjacent]))
    print(f"\nspeed-up of ours ({auto}, 5-fold, median of {args.repeats + 1}) over scikit-learn: "
          f"×{sklearn_seconds / ours_seconds:.1f} (×{sklearn_seconds / adjacent:.1f} against the run right after "
          f"it); "
          f"over himalaya RidgeCV: ×{himalaya_seconds / ours_seconds:.0f}")

    grid_steps = np.abs(np.log(encoder.alphas[:n_sk] / sk_alphas)) / np.log(alphas[1] / alphas[0])
    scaled_test = (x_test - x_train.mean(0)) / x_train.std(0)
    r_ours = pearson_r(y_test[:, :n_sk], encoder.predict(x_test)[:, :n_sk])
    r_sklearn = pearson_r(y_test[:, :n_sk], sk_model.predict(scaled_test))
    r_truth = pearson_r(y_test[:, :n_sk], clean_test[:, :n_sk])
    print(f"\nagreement with scikit-learn on {n_sk} voxels:")
    print(f"  same α: {np.mean(grid_steps < 0.5):.1%}; within one grid step: {np.mean(grid_steps < 1.5):.1%}")
    print(f"  held-out r: median ours {np.median(r_ours):.4f}, scikit-learn {np.median(r_sklearn):.4f}, "
          f"true model {np.median(r_truth):.4f}; max |Δr| {np.max(np.abs(r_ours - r_sklearn)):.4f}")
    noise_order = np.argsort(noise_sd[:n_sk])
    quiet, loud = noise_order[: n_sk // 4], noise_order[-n_sk // 4:]
    print(f"  median α, quietest quarter vs loudest quarter of voxels: ours {np.median(encoder.alphas[quiet]):.3g} "
          f"vs {np.median(encoder.alphas[loud]):.3g}; scikit-learn {np.median(sk_alphas[quiet]):.3g} vs "
          f"{np.median(sk_alphas[loud]):.3g}")
    for name, other in fits.items():
        steps = np.abs(np.log(other.alphas / encoder.alphas)) / np.log(alphas[1] / alphas[0])
        r_other = pearson_r(y_test, other.predict(x_test))
        print(f"  {name:<40s} α equal to the default's: {np.mean(steps < 0.5):.1%}; median held-out r "
              f"{np.median(r_other):.4f}")


if __name__ == "__main__":
    main()
