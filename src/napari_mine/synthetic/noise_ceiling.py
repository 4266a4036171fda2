"""NSD's noise-ceiling SNR (ncsnr), computed the way NSD computes it, for the volume and the surface writers."""

from __future__ import annotations

import numpy as np

from ..errors import MineInputError


def nsd_ncsnr(betas: np.ndarray, trial_images: np.ndarray, sessions: np.ndarray) -> np.ndarray:
    """NSD's noise-ceiling SNR from single-trial betas.

    Betas are z-scored per session; the noise variance is the mean over repeated images of the variance
    across their repeats; the signal sd is ``sqrt(max(total variance − noise variance, 0))``.

    Parameters
    ----------
    betas : float array (n_trials, n_voxels)
    trial_images : int array (n_trials,)
        Image shown on each trial.
    sessions : int array (n_trials,)

    Returns
    -------
    float32 (n_voxels,)
    """
    z = np.empty_like(betas, dtype=np.float64)
    for session in np.unique(sessions):
        rows = sessions == session
        block = betas[rows].astype(np.float64)
        z[rows] = (block - block.mean(0)) / np.maximum(block.std(0), 1e-12)
    _, image_of_trial, counts = np.unique(trial_images, return_inverse=True, return_counts=True)
    repeated = np.flatnonzero(counts[image_of_trial] >= 2)
    if len(repeated) == 0:
        raise MineInputError("No image was shown twice, so the noise ceiling cannot be estimated; add repeats.")
    repeated = repeated[np.argsort(image_of_trial[repeated], kind="stable")]
    starts = np.flatnonzero(np.diff(image_of_trial[repeated], prepend=-1))
    n = np.diff(np.append(starts, len(repeated)))[:, None]
    sums = np.add.reduceat(z[repeated], starts)
    squares = np.add.reduceat(z[repeated] ** 2, starts)
    noise_var = ((squares - sums**2 / n) / (n - 1)).mean(0)
    signal_sd = np.sqrt(np.maximum(z.var(0) - noise_var, 0))
    ncsnr = np.divide(signal_sd, np.sqrt(noise_var), out=np.zeros_like(signal_sd), where=noise_var > 0)
    return ncsnr.astype(np.float32)
