"""How hard is the synthetic world? An oracle linear read-out against the noise ceiling.

Writes a world (or reads one given with --root), reads its NSD-layout files back, and fits ridge regression
from *oracle* features — one-hot category × colour × position bin, with an intercept and a size slope per
cell, summed over a scene's objects — to the single-trial training betas. On the shared (test) images it
reports, per category ROI, the median noise-ceiling-normalised correlation r / sqrt(NC/100) with
NC = 100·ncsnr²/(ncsnr² + 1/n_repeats). A world that a good image embedding can learn sits near but below 1.
It also fits the same features to the noiseless truth, which shows how much of the response is non-linear
in the scene content.

    python benchmarks/world_difficulty.py [--root PATH] [--n-images 2500] [--n-shared 250] [--seed 0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import scipy.io
from sklearn.linear_model import RidgeCV

from napari_mine.synthetic import scenes as S
from napari_mine.synthetic.brain import ROI_FILES
from napari_mine.synthetic.write_nsd import BETAS, BETA_SCALE, EXPDESIGN, FUNC, load_truth, write_world

CATEGORY_FILES = ("floc-faces", "floc-places", "floc-bodies", "floc-words")


def oracle_features(scenes) -> np.ndarray:
    """Per (category, colour, left/centre/right) cell: object count and summed size, over a scene's objects."""
    shape = (len(S.CATEGORIES), len(S.COLORS), 3)
    positions = ("on the left", "in the centre", "on the right")
    features = np.zeros((len(scenes), int(np.prod(shape)), 2))
    for i, scene in enumerate(scenes):
        for obj in scene.objects:
            cell = np.ravel_multi_index((S.CATEGORIES.index(obj.category), list(S.COLORS).index(obj.color),
                                         positions.index(S.position_phrase(obj.x))), shape)
            features[i, cell] += (1.0, obj.size / S.LARGE_SIZE)
    return features.reshape(len(scenes), -1)


def read_world(root: Path):
    """Betas inside nsdgeneral (z-scored per session), trial stimulus ids, ncsnr and ROI labels per voxel."""
    design = scipy.io.loadmat(root / EXPDESIGN)
    subject_images = design["subjectim"][0].astype(int) - 1
    trial_stimuli = subject_images[design["masterordering"][0].astype(int) - 1]
    general = nib.load(root / FUNC / "roi" / "nsdgeneral.nii.gz").get_fdata() == 1
    sessions = sorted((root / BETAS).glob("betas_session*.nii.gz"))
    blocks = []
    for path in sessions:
        block = np.asarray(nib.load(path).dataobj)[general].T.astype(np.float32) / BETA_SCALE
        blocks.append((block - block.mean(0)) / block.std(0))
    ncsnr = nib.load(root / BETAS / "ncsnr.nii.gz").get_fdata()[general]
    labels = {}
    for file_name in ROI_FILES:
        volume = nib.load(root / FUNC / "roi" / f"{file_name}.nii.gz").get_fdata()[general].astype(int)
        labels[file_name] = volume
    return np.concatenate(blocks), trial_stimuli, ncsnr, labels


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path)
    parser.add_argument("--n-images", type=int, default=2500)
    parser.add_argument("--n-shared", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root
        if root is None:
            root = Path(tmp) / "world"
            start = time.perf_counter()
            info = write_world(root, seed=args.seed, n_images=args.n_images, n_shared=args.n_shared)
            print(f"wrote {info.n_images} images, {info.n_trials} trials, {info.n_voxels} voxels "
                  f"in {time.perf_counter() - start:.1f} s")
        report(root)


def report(root: Path):
    truth = load_truth(root)
    betas, trial_stimuli, ncsnr, labels = read_world(root)
    shared = np.isin(trial_stimuli, truth.shared_images)
    train_x = oracle_features([truth.scenes[i] for i in trial_stimuli[~shared]])
    test_ids = truth.shared_images
    test_x = oracle_features([truth.scenes[i] for i in test_ids])
    test_y = np.stack([betas[trial_stimuli == i].mean(0) for i in test_ids])
    model = RidgeCV(alphas=np.logspace(-1, 4, 11), alpha_per_target=True).fit(train_x, betas[~shared])
    r = _pearson(test_y, model.predict(test_x))
    ceiling = np.sqrt(ncsnr**2 / (ncsnr**2 + 1 / truth.repeats))
    normalised = r / np.maximum(ceiling, 1e-6)
    clean = truth.true_response()
    train_clean = np.setdiff1d(np.arange(len(truth.scenes)), test_ids)
    clean_model = RidgeCV(alphas=np.logspace(-3, 3, 13), alpha_per_target=True).fit(
        oracle_features([truth.scenes[i] for i in train_clean]), clean[train_clean])
    r_clean = _pearson(clean[test_ids], clean_model.predict(test_x))
    print(f"{'region':<14}{'voxels':>7}{'median ncsnr':>14}{'median r':>10}{'median r/ceil':>15}"
          f"{'linear r on truth':>19}")
    for file_name in CATEGORY_FILES + ("prf-visualrois",):
        for k, name in truth.brain.roi_labels[file_name].items():
            members = labels[file_name] == k
            _row(name, members, ncsnr, r, normalised, r_clean)
    kinds = truth.brain.tuning.kind
    for kind in ("category", "retinotopic", "mixed", "noise"):
        _row(f"all {kind}", kinds == kind, ncsnr, r, normalised, r_clean)
    category = kinds == "category"
    print(f"category voxels: median normalised r {np.median(normalised[category]):.3f}, "
          f"fraction above 1: {np.mean(normalised[category] > 1):.3f}")


def _row(name, members, ncsnr, r, normalised, r_clean):
    clean = r_clean[members]
    clean_text = f"{np.median(clean[np.isfinite(clean)]):.3f}" if np.isfinite(clean).any() else "constant"
    print(f"{name:<14}{members.sum():>7}{np.median(ncsnr[members]):>14.2f}{np.median(r[members]):>10.3f}"
          f"{np.median(normalised[members]):>15.3f}{clean_text:>19}")


def _pearson(a, b):
    a, b = a - a.mean(0), b - b.mean(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(0) / np.sqrt((a**2).sum(0) * (b**2).sum(0))


if __name__ == "__main__":
    main()
