"""The statistics of validation, with the voxel as the unit: pairs that share a voxel are not independent.

Every interval is a bootstrap that resamples voxels with all their pairs, and every test compares per-voxel
means (Wilcoxon's signed-rank test on per-voxel mean errors; a voxel bootstrap on a correlation gain), so a
voxel sampled with many images cannot make a result look surer than it is. Everything here is array in,
dict of floats out, and seeded.
"""

from __future__ import annotations

import numpy as np

N_BOOT = 2000


def edit_summary(deltas, voxels, sign: int, n_boot: int, seed: int) -> dict:
    """Sign accuracy (share of Δ with ``sign``) and mean Δ of an edit experiment, with 95 % CIs."""
    if deltas is None or not len(deltas):
        return {"value": None, "ci": [None, None], "n": 0, "mean_delta": None, "mean_delta_ci": [None, None]}
    correct = (np.sign(deltas) == sign).astype(float)
    accuracy_ci = ci(bootstrap(lambda i: correct[i].mean(), voxels, n_boot, seed))
    return {"value": float(correct.mean()), "ci": accuracy_ci,
            "n": int(len(deltas)), "mean_delta": float(deltas.mean()),
            "mean_delta_ci": ci(bootstrap(lambda i: deltas[i].mean(), voxels, n_boot, seed))}


def sufficiency_summary(original, conditions: dict, voxels, n_boot: int, seed: int) -> dict:
    """Correlation and MAE of each condition against the originals, the correlation within voxels, CIs, and
    paired tests of MINE against each control (voxels as the unit: Wilcoxon on per-voxel mean errors, a
    voxel bootstrap on the correlation)."""
    from scipy.stats import wilcoxon

    errors = {name: np.abs(values - original) for name, values in conditions.items()}
    original_within = within_voxel(original, voxels)
    summary = {}
    for name, values in conditions.items():
        within = within_voxel(values, voxels)
        entry = {"correlation": pearson(original, values),
                 "correlation_ci": ci(bootstrap(lambda i: pearson(original[i], values[i]), voxels, n_boot, seed)),
                 "correlation_within_voxel": pearson(original_within, within),
                 "correlation_within_voxel_ci": ci(bootstrap(lambda i: pearson(original_within[i], within[i]),
                                                             voxels, n_boot, seed)),
                 "mae": float(errors[name].mean()),
                 "mae_ci": ci(bootstrap(lambda i: errors[name][i].mean(), voxels, n_boot, seed))}
        if name != "mine":
            difference = voxel_means(errors["mine"] - errors[name], voxels)
            entry["p_mae"] = (float(wilcoxon(difference, alternative="less").pvalue)
                              if np.any(difference != 0) else 1.0)
            gain = bootstrap(lambda i: pearson(original[i], conditions["mine"][i])
                             - pearson(original[i], values[i]), voxels, n_boot, seed)
            gain = gain[np.isfinite(gain)]
            entry["p_correlation"] = float((np.sum(gain <= 0) + 1) / (len(gain) + 1))
        summary[name] = entry
    return summary


def delta_ratio(numerator: dict, denominator: dict, kind: str = "predicted", n_boot: int = N_BOOT,
                seed: int = 0) -> dict:
    """Ratio of mean Δ of two insertion results on the same pairs (e.g. profile over per-image), with a
    paired bootstrap 95 % CI (resampling voxels); the ratio is undefined (None) when the denominator's mean Δ
    is not positive.

    Only pairs both results edited count.
    """
    a, b, voxels = paired_deltas(numerator, denominator, kind)
    if a is None or not len(a):
        return {"value": None, "ci": [None, None], "n": 0}
    value = ratio(a, b)
    samples = bootstrap(lambda i: ratio(a[i], b[i]), voxels, n_boot, seed)
    return {"value": value, "ci": ci(samples), "n": int(len(a)), "mean_delta_numerator": float(a.mean()),
            "mean_delta_denominator": float(b.mean())}


def paired_deltas(numerator: dict, denominator: dict, kind: str):
    """Deltas of two edit results on the pairs both edited (matched by pair position), and those pairs' voxels."""
    a, b = numerator["conditions"]["edited"][kind], denominator["conditions"]["edited"][kind]
    if a is None or b is None:
        return None, None, None
    key_a = list(zip(numerator["voxel"], numerator["row"], numerator["target_row"]))
    key_b = {key: i for i, key in enumerate(zip(denominator["voxel"], denominator["row"], denominator["target_row"]))}
    both = [(i, key_b[key]) for i, key in enumerate(key_a) if key in key_b]
    return (np.array([a[i] for i, _ in both]), np.array([b[j] for _, j in both]),
            np.array([numerator["voxel"][i] for i, _ in both], int))


def within_voxel(values, voxels) -> np.ndarray:
    """Values minus their voxel's mean over the pairs: what is left is how a voxel's images differ."""
    _, inverse = np.unique(voxels, return_inverse=True)
    return values - voxel_means(values, voxels)[inverse]


def voxel_means(values, voxels) -> np.ndarray:
    _, inverse = np.unique(voxels, return_inverse=True)
    return np.bincount(inverse, values) / np.bincount(inverse)


def bootstrap(statistic, voxels, n_boot: int, seed: int) -> np.ndarray:
    """``statistic(indices)`` over ``n_boot`` resamples (seeded) of the items' voxels with replacement, each
    drawn voxel bringing all its items: pairs of one voxel are not independent draws."""
    rng = np.random.default_rng([int(seed), 51])
    _, inverse = np.unique(voxels, return_inverse=True)
    members = [np.flatnonzero(inverse == k) for k in range(inverse.max() + 1)]
    return np.array([statistic(np.concatenate([members[k] for k in rng.integers(0, len(members), len(members))]))
                     for _ in range(int(n_boot))], float)


def ci(samples: np.ndarray) -> list:
    """The 95 % percentile interval of the finite samples ([None, None] when there are none)."""
    samples = samples[np.isfinite(samples)]
    if not len(samples):
        return [None, None]
    return [float(np.percentile(samples, 2.5)), float(np.percentile(samples, 97.5))]


def pearson(a, b) -> float:
    a, b = np.asarray(a, float) - np.mean(a), np.asarray(b, float) - np.mean(b)
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else float("nan")


def ratio(a, b) -> float:
    return float(a.mean() / b.mean()) if b.mean() > 0 else float("nan")
