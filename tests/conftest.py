"""Shared test fixtures: small, seeded data written to disk in the formats the loaders read.

Fixtures here are generic (any module's tests may use them); each documents what it writes and what it
returns. Keep them small (tests run on 2 CPU cores) and deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import open_clip  # noqa: F401  (torch, torchvision, triton) before any napari canvas: see models.backbone.import_torch
import pytest

SMALL_GRID = (10, 12, 9)
SMALL_AFFINE = np.array([[1.8, 0, 0, -9.0], [0, 1.8, 0, -10.8], [0, 0, 1.8, -8.1], [0, 0, 0, 1]])


def write_nifti(path, array, affine=SMALL_AFFINE, dtype=None) -> Path:
    """Write ``array`` as a NIfTI file (dtype kept unless given), creating parent folders."""
    import nibabel as nib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(np.asarray(array), affine)
    image.header.set_data_dtype(dtype or np.asarray(array).dtype)
    nib.save(image, path)
    return path


@dataclass
class NsdSubject:
    """What :func:`write_nsd_subject` wrote: the root and the exact arrays behind every file (the truth)."""

    root: Path
    betas: list[np.ndarray]  # per session, int16 (X, Y, Z, trials) as stored (÷300 = % signal change)
    masterordering: np.ndarray  # (n_design_trials,) 1-based into subjectim's columns
    subjectim: np.ndarray  # (n_subjects, n_subject_images) 1-based stimulus ids
    sharedix: np.ndarray  # (n_shared,) 1-based stimulus ids
    stimuli: np.ndarray  # (n_stimuli, H, W, 3) uint8
    rois: dict[str, np.ndarray]  # ROI name → int16 volume (-1 outside cortex, 0 unlabelled)
    ncsnr: np.ndarray  # float32 (X, Y, Z)
    anatomy: np.ndarray | None  # float32 (X, Y, Z)
    affine: np.ndarray = field(default_factory=lambda: SMALL_AFFINE.copy())

    @property
    def mask(self) -> np.ndarray:
        """The nsdgeneral mask (voxels > 0)."""
        return self.rois["nsdgeneral"] > 0

    def paths(self, subject: int = 1) -> dict[str, Path]:
        """NSD's relative locations of this subject's files, under ``root``."""
        subj = f"subj{subject:02d}"
        func = self.root / "nsddata" / "ppdata" / subj / "func1pt8mm"
        return {
            "expdesign": self.root / "nsddata/experiments/nsd/nsd_expdesign.mat",
            "stimuli": self.root / "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5",
            "betas": self.root / f"nsddata_betas/ppdata/{subj}/func1pt8mm/betas_fithrf_GLMdenoise_RR",
            "roi": func / "roi",
            "func": func,
            "labels": self.root / f"nsddata/freesurfer/{subj}/label",
        }


def write_nsd_subject(
    root,
    *,
    grid=SMALL_GRID,
    n_sessions: int = 2,
    trials_per_session: int = 30,
    last_session_trials: int | None = None,
    n_design_sessions: int = 3,
    n_subject_images: int = 24,
    n_stimuli: int = 60,
    n_shared: int = 6,
    image_size: int = 8,
    betas_format: str = "nifti",
    with_label_tables: bool = True,
    with_anatomy: bool = True,
    seed: int = 0,
) -> NsdSubject:
    """Write a small NSD-layout subject 1 (two subjects in the design) and return the truth.

    The design holds ``n_design_sessions`` sessions but only ``n_sessions`` beta files are written (like a
    partial download); ``last_session_trials`` makes the last file shorter (a partial last session). Images repeat (each subject image ~3 times in the design). ROI volumes
    ``nsdgeneral``, ``prf-visualrois`` and ``floc-faces`` are written; label tables for the first two only
    when ``with_label_tables`` (``floc-faces`` never has one, to exercise NSD's known names).
    ``betas_format`` is "nifti", "hdf5" (NSD's (trials, Z, Y, X) variant) or "both".
    """
    import h5py
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    root = Path(root)
    n_design_trials = n_design_sessions * trials_per_session
    reps = -(-n_design_trials // n_subject_images)
    masterordering = rng.permutation(np.tile(np.arange(1, n_subject_images + 1), reps))[:n_design_trials]
    subjectim = np.stack([rng.permutation(n_stimuli)[:n_subject_images] + 1 for _ in range(2)])
    subjectim[1, :n_shared] = subjectim[0, :n_shared]  # the first images are shared by both subjects
    sharedix = np.sort(subjectim[0, :n_shared])
    stimuli = rng.integers(0, 256, size=(n_stimuli, image_size, image_size, 3), dtype=np.uint8)

    rois = _small_rois(grid, rng)
    lengths = [trials_per_session] * (n_sessions - 1) + [last_session_trials or trials_per_session]
    betas = [rng.integers(-3000, 3000, size=grid + (n,), dtype=np.int16) for n in lengths]
    ncsnr = rng.random(grid, dtype=np.float32)
    anatomy = (rng.random(grid, dtype=np.float32) * 1000) if with_anatomy else None
    subject = NsdSubject(root, betas, masterordering, subjectim, sharedix, stimuli, rois, ncsnr, anatomy)
    paths = subject.paths()

    paths["expdesign"].parent.mkdir(parents=True, exist_ok=True)
    design = {"masterordering": masterordering[None, :], "subjectim": subjectim, "sharedix": sharedix[None, :]}
    savemat(paths["expdesign"], design)
    paths["stimuli"].parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(paths["stimuli"], "w") as handle:
        handle["imgBrick"] = stimuli
    for session, volume in enumerate(betas, start=1):
        if betas_format in ("nifti", "both"):
            write_nifti(paths["betas"] / f"betas_session{session:02d}.nii.gz", volume)
        if betas_format in ("hdf5", "both"):
            paths["betas"].mkdir(parents=True, exist_ok=True)
            with h5py.File(paths["betas"] / f"betas_session{session:02d}.hdf5", "w") as handle:
                handle["betas"] = volume.transpose(3, 2, 1, 0)
    write_nifti(paths["betas"] / "ncsnr.nii.gz", ncsnr)
    for name, volume in rois.items():
        write_nifti(paths["roi"] / f"{name}.nii.gz", volume)
    write_nifti(paths["func"] / "brainmask.nii.gz", (rois["nsdgeneral"] >= 0).astype(np.int16))
    if anatomy is not None:
        write_nifti(paths["func"] / "T1_to_func1pt8mm.nii.gz", anatomy)
    if with_label_tables:
        paths["labels"].mkdir(parents=True, exist_ok=True)
        (paths["labels"] / "nsdgeneral.mgz.ctab").write_text("0 Unknown\n1 nsdgeneral\n")
        names = ["Unknown", "V1v", "V1d", "V2v", "V2d", "V3v", "V3d", "hV4"]
        table = "".join(f"{k} {name} 0 0 0 0\n" for k, name in enumerate(names))
        (paths["labels"] / "prf-visualrois.mgz.ctab").write_text(table)
    return subject


def _small_rois(grid, rng) -> dict[str, np.ndarray]:
    """nsdgeneral (a block of cortex, -1 outside, a few 0s inside), retinotopic and face labels within it."""
    nsdgeneral = np.full(grid, -1, dtype=np.int16)
    nsdgeneral[2:8, 2:10, 2:7] = 1
    nsdgeneral[2, 2, 2:4] = 0
    inside = nsdgeneral > 0
    visual = np.where(inside, rng.integers(0, 8, size=grid), -1).astype(np.int16)
    faces = np.where(inside, rng.integers(0, 6, size=grid), -1).astype(np.int16)
    return {"nsdgeneral": nsdgeneral, "prf-visualrois": visual, "floc-faces": faces}


@pytest.fixture(scope="session")
def nsd_subject(tmp_path_factory) -> NsdSubject:
    """A small NSD-layout subject (NIfTI betas, 2 of 3 design sessions × 30 trials, 10×12×9 grid); read-only."""
    return write_nsd_subject(tmp_path_factory.mktemp("nsd"))


@pytest.fixture
def make_nsd_subject(tmp_path):
    """Factory: ``make_nsd_subject(**options)`` writes a fresh subject (options of ``write_nsd_subject``)."""

    def make(**options) -> NsdSubject:
        return write_nsd_subject(tmp_path / f"nsd{len(list(tmp_path.iterdir()))}", **options)

    return make


@pytest.fixture(scope="session")
def fit_synthetic_world():
    """A builder: ``build(root, n_images=)`` writes a synthetic world in the NSD layout to ``root / "world"``
    (seed 3, 40 shared images, 120 trials per session, 2,300 voxels in nsdgeneral) and runs the real
    pipeline on it (NSD loader → shipped mine-small → features → encoder) into ``root / "results"``.

    Returns ``(dataset, backbone, store, encoder summary)``.
    """

    def build(root: Path, *, n_images: int):
        from napari_mine.data import load_nsd
        from napari_mine.models.backbone import load_backbone
        from napari_mine.pipeline import compute_features, fit_encoder_step
        from napari_mine.store import ResultsStore
        from napari_mine.synthetic.write_nsd import write_world

        write_world(root / "world", seed=3, n_images=n_images, n_shared=40, trials_per_session=120, n_general=2300)
        dataset = load_nsd(root / "world", subject=1)
        backbone = load_backbone("mine-small")
        store = ResultsStore.create(root / "results", model=backbone.record, dataset=dataset.source)
        compute_features(dataset, backbone, store)
        return dataset, backbone, store, fit_encoder_step(dataset, store)

    return build


@pytest.fixture(scope="session")
def study_world(tmp_path_factory) -> Path:
    """A synthetic study of 3 subjects in the NSD layout (seed 5, 160 images each of which 40 shared, 60 trials
    per session, so subj03 completes fewer sessions; each subject its own grid near 36×44×36); read-only."""
    from napari_mine.synthetic.write_nsd import write_world

    root = tmp_path_factory.mktemp("study") / "world"
    write_world(root, seed=5, n_images=160, n_shared=40, n_subjects=3, trials_per_session=60,
                brain_shape=(36, 44, 36), n_general=2600)
    return root


@pytest.fixture(scope="session")
def fitted_study(study_world) -> Path:
    """``study_world`` made into a study through the CLI: features of every subject (``--subject all``), fits,
    and profiles with the place ROIs' analysis, which also compares the subjects and writes the study report.
    Read-only: copy it before writing into it."""
    from napari_mine.cli import main

    root = study_world.parent / "study"
    for argv in (["features", str(study_world), "--subject", "all", "--out", str(root)], ["fit", str(root)],
                 ["profile", str(root), "--roi", "floc-places"]):
        assert main(argv) == 0, argv
    return root.resolve()
