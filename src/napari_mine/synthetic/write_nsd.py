"""Write a synthetic world in the Natural Scenes Dataset layout, so the demo runs through the real loaders.

Everything NSD has that the pipeline reads is written the way NSD writes it: int16 betas (% signal change
× 300) per session, a 1-based experimental design in a .mat file, an ``imgBrick`` of stimuli, ROI volumes
with label tables, anatomy, a brain mask and an ncsnr volume computed from the simulated betas with NSD's
own recipe. With ``space="fsaverage"`` the same subject is written on the cortex as well, in NSD's fsaverage
layout (:mod:`.write_fsaverage`). The ground truth goes to ``ground_truth/``. The world is built in a sibling
temp folder and renamed into place, so an interrupted run never leaves a half-written world.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import scipy.io

from ..errors import MineInputError
from . import scenes as S
from .brain import SimulatedBrain, general_volume, make_brain, measured_betas, true_response
from .noise_ceiling import nsd_ncsnr
from .truth import TRUTH_DIR, WorldTruth, load_truth, save_truth
from .write_fsaverage import write_fsaverage

__all__ = ["WorldInfo", "write_world", "load_truth", "nsd_ncsnr", "BETA_SCALE"]

BETA_SCALE = 300.0
SUBJECT = "subj01"
FUNC = f"nsddata/ppdata/{SUBJECT}/func1pt8mm"
BETAS = f"nsddata_betas/ppdata/{SUBJECT}/func1pt8mm/betas_fithrf_GLMdenoise_RR"
EXPDESIGN = "nsddata/experiments/nsd/nsd_expdesign.mat"
STIMULI = "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"
LABELS = f"nsddata/freesurfer/{SUBJECT}/label"
SPACES = ("volume", "fsaverage")


@dataclass(frozen=True)
class WorldInfo:
    """What ``write_world`` wrote."""

    root: Path
    seed: int
    n_images: int
    n_shared: int
    repeats: int
    n_trials: int
    n_sessions: int
    n_voxels: int  # nsdgeneral voxels
    shape: tuple[int, int, int]
    space: str = "volume"  # "fsaverage": the surface files were written too
    n_vertices: int = 0  # surface nsdgeneral vertices (both hemispheres)


@dataclass
class Design:
    """Subject images (0-based stimulus indices), the shared test images, and the trial sequence."""

    subject_images: np.ndarray  # (n_images,) stimulus index of each subject image column
    n_shared: int  # the first n_shared columns are the shared images
    trial_columns: np.ndarray  # (n_trials,) subject image column shown on each trial
    sessions: np.ndarray  # (n_trials,) 0-based session of each trial


def write_world(root, *, seed: int = 0, n_images: int = 2500, n_shared: int = 250, repeats: int = 3,
                trials_per_session: int = 750, image_size: int = S.IMAGE_SIZE,
                brain_shape: tuple[int, int, int] = (40, 48, 40), n_general: int = 3000,
                space: str = "volume", overwrite: bool = False) -> WorldInfo:
    """Simulate a subject and write the whole world in the NSD layout under ``root``.

    Parameters
    ----------
    root : path
        Folder to create (must not exist unless ``overwrite``).
    seed : int
        Everything written follows from it.
    n_images, n_shared : int
        Subject images, of which ``n_shared`` are the test set; the others are shown once.
    repeats : int
        Presentations of each shared image.
    trials_per_session : int
        Trials per betas file; the last session may be partial.
    image_size : int
        Side of the stored stimuli in pixels.
    brain_shape : tuple of int
        Volume grid (1.8 mm voxels).
    n_general : int
        Voxels in the nsdgeneral mask (the simulated visual cortex).
    space : str
        "volume" (the volume files only) or "fsaverage" (the same subject on fsaverage5 as well).
    overwrite : bool
        Replace an existing ``root``.

    Returns
    -------
    WorldInfo
    """
    root = Path(root)
    _check_request(root, n_images, n_shared, repeats, trials_per_session, space, overwrite)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{root.name}.tmp-", dir=root.parent))
    try:
        info = _write_into(staging, root, seed, n_images, n_shared, repeats, trials_per_session, image_size,
                           brain_shape, n_general, space)
        _move_into_place(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return info


def _check_request(root, n_images, n_shared, repeats, trials_per_session, space, overwrite):
    if space not in SPACES:
        raise MineInputError(f"space={space!r} is not a world space; choose one of {SPACES}.")
    if root.exists() and not overwrite:
        raise MineInputError(f"{root} already exists; choose a new folder or pass overwrite=True.")
    if not 0 < n_shared < n_images:
        raise MineInputError(f"n_shared={n_shared} must be between 1 and n_images - 1 ({n_images - 1}).")
    if repeats < 2:
        raise MineInputError(f"repeats={repeats} leaves no repeated images for the noise ceiling; use 2 or more.")
    if trials_per_session < 2:
        raise MineInputError(f"trials_per_session={trials_per_session} is too small; use at least 2 (NSD uses 750).")


def _move_into_place(staging: Path, root: Path) -> None:
    """Rename the finished world onto ``root`` (an old world is moved aside first, then deleted)."""
    old = None
    if root.exists():
        old = Path(tempfile.mkdtemp(prefix=f"{root.name}.old-", dir=root.parent))
        os.replace(root, old / root.name)
    os.replace(staging, root)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_into(folder, root, seed, n_images, n_shared, repeats, trials_per_session, image_size, brain_shape,
                n_general, space) -> WorldInfo:
    """Simulate the subject and write every file of the world into ``folder``."""
    rng = np.random.default_rng([int(seed), 202])
    brain = make_brain(seed, shape=brain_shape, n_general=n_general)
    scenes = [S.sample_scene(rng) for _ in range(n_images)]
    design = make_design(rng, n_images, n_shared, repeats, trials_per_session)
    stimulus_of_trial = design.subject_images[design.trial_columns]
    responses = true_response(brain, scenes)
    betas = measured_betas(brain, responses[stimulus_of_trial], design.sessions, rng)
    cortex_betas = _cortex_betas(brain, betas, rng)
    ncsnr = nsd_ncsnr(cortex_betas.astype(np.float32) / BETA_SCALE, stimulus_of_trial, design.sessions)
    _write_betas(folder, brain, cortex_betas, design.sessions, ncsnr)
    _write_rois_and_anatomy(folder, brain)
    _write_expdesign(folder, design)
    _write_stimuli(folder / STIMULI, scenes, image_size)
    cortex = None
    if space == "fsaverage":
        cortex = write_fsaverage(folder, brain, responses, stimulus_of_trial, design.sessions, seed)
    shared = np.sort(design.subject_images[:n_shared])
    save_truth(folder / TRUTH_DIR, WorldTruth(brain, scenes, design.subject_images, shared, repeats, cortex))
    return WorldInfo(root, int(seed), n_images, n_shared, repeats, len(design.sessions),
                     int(design.sessions.max()) + 1, brain.n_voxels, brain.shape, space,
                     0 if cortex is None else int(cortex.mask.sum()))


def make_design(rng, n_images, n_shared, repeats, trials_per_session) -> Design:
    """Shuffle stimulus ids into subject columns (shared ones first, as in NSD) and trials into sessions."""
    subject_images = rng.permutation(n_images)
    columns = np.concatenate([np.arange(n_shared, n_images), np.repeat(np.arange(n_shared), repeats)])
    trial_columns = rng.permutation(columns)
    sessions = np.arange(len(trial_columns)) // trials_per_session
    return Design(subject_images, n_shared, trial_columns, sessions)


def _cortex_betas(brain: SimulatedBrain, general_betas: np.ndarray, rng) -> np.ndarray:
    """int16 betas for every cortex voxel: simulated ones inside nsdgeneral, pure noise elsewhere."""
    inside = brain.mask[brain.cortex]
    n_trials = len(general_betas)
    noise_sd = rng.uniform(0.5, 1.5, int((~inside).sum())).astype(np.float32) * np.median(brain.tuning.noise_sd)
    cortex = np.empty((n_trials, len(inside)), np.float32)
    cortex[:, inside] = general_betas
    cortex[:, ~inside] = rng.standard_normal((n_trials, int((~inside).sum())), dtype=np.float32) * noise_sd
    return np.clip(np.round(cortex * BETA_SCALE), -32768, 32767).astype(np.int16)


def _write_betas(folder, brain, cortex_betas, sessions, ncsnr):
    """One 4-D int16 volume per session (Fortran order, so nibabel writes it without a transposed copy)."""
    out = folder / BETAS
    out.mkdir(parents=True)
    for session in range(int(sessions.max()) + 1):
        rows = np.flatnonzero(sessions == session)
        volume = np.zeros(brain.shape + (len(rows),), np.int16, order="F")
        volume[brain.cortex] = cortex_betas[rows].T
        _save_nifti(out / f"betas_session{session + 1:02d}.nii.gz", volume, brain.affine)
    _save_nifti(out / "ncsnr.nii.gz", _in_volume(brain.cortex, ncsnr, np.float32), brain.affine)


def _in_volume(mask, values, dtype):
    volume = np.zeros(mask.shape, dtype)
    volume[mask] = values
    return volume


def _write_rois_and_anatomy(folder, brain):
    roi_dir, label_dir = folder / FUNC / "roi", folder / LABELS
    roi_dir.mkdir(parents=True)
    label_dir.mkdir(parents=True)
    volumes = dict(brain.roi_volumes, nsdgeneral=general_volume(brain))
    labels = dict(brain.roi_labels, nsdgeneral={1: "nsdgeneral"})
    for name, volume in volumes.items():
        _save_nifti(roi_dir / f"{name}.nii.gz", volume.astype(np.int16), brain.affine)
        table = "".join(f"{k} {label}\n" for k, label in {0: "Unknown", **labels[name]}.items())
        (label_dir / f"{name}.mgz.ctab").write_text(table)
    _save_nifti(folder / FUNC / "T1_to_func1pt8mm.nii.gz", brain.anatomy.astype(np.float32), brain.affine)
    _save_nifti(folder / FUNC / "brainmask.nii.gz", brain.brainmask.astype(np.int16), brain.affine)


def _write_expdesign(folder, design: Design):
    path = folder / EXPDESIGN
    path.parent.mkdir(parents=True)
    shared_ids = np.sort(design.subject_images[: design.n_shared]) + 1
    scipy.io.savemat(path, {
        "masterordering": (design.trial_columns + 1)[None].astype(np.float64),
        "subjectim": (design.subject_images + 1)[None].astype(np.float64),
        "sharedix": shared_ids[None].astype(np.float64),
    })


def _write_stimuli(path: Path, scenes, image_size: int, batch: int = 256):
    """imgBrick, one gzip chunk per image (a quarter of the raw size; h5py reads it transparently)."""
    path.parent.mkdir(parents=True)
    with h5py.File(path, "w") as f:
        brick = f.create_dataset("imgBrick", (len(scenes), image_size, image_size, 3), np.uint8,
                                 chunks=(1, image_size, image_size, 3), compression="gzip", compression_opts=1)
        for start in range(0, len(scenes), batch):
            brick[start : start + batch] = S.render_scenes(scenes[start : start + batch], image_size)


def _save_nifti(path: Path, volume: np.ndarray, affine: np.ndarray):
    image = nib.Nifti1Image(volume, affine)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, path)
