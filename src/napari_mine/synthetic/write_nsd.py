"""Write a synthetic world in the Natural Scenes Dataset layout, so the demo runs through the real loaders.

Everything NSD has that the pipeline reads is written the way NSD writes it: int16 betas (% signal change
× 300) per session, a 1-based experimental design in a .mat file, an ``imgBrick`` of stimuli, ROI volumes
with label tables, anatomy, a brain mask and an ncsnr volume computed from the simulated betas with NSD's
own recipe. With ``space="fsaverage"`` the same subject is written on the cortex as well, in NSD's fsaverage
layout (:mod:`.write_fsaverage`). The ground truth goes to ``ground_truth/``. The world is built in a sibling
temp folder and renamed into place, so an interrupted run never leaves a half-written world.

With ``n_subjects > 1`` it is a study (:mod:`.study`): subjects subj01..subjNN at NSD's subject paths, one
expdesign (one ``masterordering``, ``subjectim`` with a row per subject, the shared images first in every row)
and one ``imgBrick`` of every unique stimulus.
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
from . import study as ST
from .brain import SimulatedBrain, general_volume, make_brain, measured_betas, true_response
from .noise_ceiling import nsd_ncsnr
from .truth import (TRUTH_DIR, StudyTruth, WorldTruth, load_study_truth, load_truth, save_study_truth, save_truth,
                    subject_folder)
from .write_fsaverage import write_fsaverage, write_labels, write_surface_subject

__all__ = ["WorldInfo", "SubjectInfo", "write_world", "load_truth", "load_study_truth", "nsd_ncsnr", "BETA_SCALE"]

BETA_SCALE = 300.0
EXPDESIGN = "nsddata/experiments/nsd/nsd_expdesign.mat"
STIMULI = "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"
SPACES = ("volume", "fsaverage")


def func_folder(subject: int = 1) -> str:
    return f"nsddata/ppdata/subj{subject:02d}/func1pt8mm"


def betas_folder(subject: int = 1) -> str:
    return f"nsddata_betas/ppdata/subj{subject:02d}/func1pt8mm/betas_fithrf_GLMdenoise_RR"


def labels_folder(subject: int = 1) -> str:
    return f"nsddata/freesurfer/subj{subject:02d}/label"


FUNC, BETAS, LABELS = func_folder(1), betas_folder(1), labels_folder(1)  # a one-subject world's (subj01)


@dataclass(frozen=True)
class SubjectInfo:
    """What was written for one subject."""

    subject: int
    n_sessions: int
    n_trials: int
    n_images_shown: int  # distinct images in its trials (fewer sessions: fewer of its own images)
    n_voxels: int  # nsdgeneral voxels
    shape: tuple[int, int, int]
    n_vertices: int = 0  # surface nsdgeneral vertices (both hemispheres)


@dataclass(frozen=True)
class WorldInfo:
    """What ``write_world`` wrote; a study's ``n_trials`` … ``n_vertices`` are subject 1's, ``subjects`` has all."""

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
    n_subjects: int = 1
    subjects: tuple[SubjectInfo, ...] = ()

    @property
    def n_stimuli(self) -> int:
        """Unique stimuli in ``imgBrick``: the shared images and every subject's own."""
        return self.n_shared + self.n_subjects * (self.n_images - self.n_shared)


@dataclass
class Design:
    """Subject images (0-based stimulus indices), the shared test images, and the trial sequence."""

    subject_images: np.ndarray  # (n_images,) stimulus index of each subject image column
    n_shared: int  # the first n_shared columns are the shared images
    trial_columns: np.ndarray  # (n_trials,) subject image column shown on each trial
    sessions: np.ndarray  # (n_trials,) 0-based session of each trial


def write_world(root, *, seed: int = 0, n_images: int = 2500, n_shared: int = 250, repeats: int = 3,
                trials_per_session: int = 750, image_size: int = S.IMAGE_SIZE,
                brain_shape: tuple[int, int, int] = (40, 48, 40), n_general: int = 3000, n_subjects: int = 1,
                space: str = "volume", overwrite: bool = False) -> WorldInfo:
    """Simulate a subject, or a study of several, and write the whole world in the NSD layout under ``root``.

    Parameters
    ----------
    root : path
        Folder to create (must not exist unless ``overwrite``).
    seed : int
        Everything written follows from it.
    n_images, n_shared : int
        Images of each subject, of which ``n_shared`` are the test set (shared by all subjects); the others are
        shown once.
    repeats : int
        Presentations of each shared image.
    trials_per_session : int
        Trials per betas file; the last session may be partial.
    image_size : int
        Side of the stored stimuli in pixels.
    brain_shape : tuple of int
        Volume grid (1.8 mm voxels); a study's subjects vary it by up to ``study.SHAPE_JITTER`` voxels per axis.
    n_general : int
        Voxels in the nsdgeneral mask (the simulated visual cortex), in every subject: so that on fsaverage all
        subjects share one surface layout, hence NSD's one set of fsaverage label files.
    n_subjects : int
        1: one subject, written exactly as before studies existed; more: a study (see :mod:`.study`).
    space : str
        "volume" (the volume files only) or "fsaverage" (every subject on fsaverage5 as well).
    overwrite : bool
        Replace an existing ``root``.

    Returns
    -------
    WorldInfo
    """
    root = Path(root)
    _check_request(root, n_images, n_shared, repeats, trials_per_session, space, overwrite)
    ST.check_study(n_subjects)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{root.name}.tmp-", dir=root.parent))
    try:
        if n_subjects == 1:
            info = _write_into(staging, root, seed, n_images, n_shared, repeats, trials_per_session, image_size,
                               brain_shape, n_general, space)
        else:
            info = _write_study_into(staging, root, seed, n_images, n_shared, repeats, trials_per_session,
                                     image_size, brain_shape, n_general, n_subjects, space)
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
    _write_subject_volume(folder, 1, brain, responses, stimulus_of_trial, design.sessions, rng)
    shared = np.sort(design.subject_images[:n_shared])
    _write_expdesign(folder / EXPDESIGN, design.trial_columns, design.subject_images[None], shared)
    _write_stimuli(folder / STIMULI, scenes, image_size)
    cortex = None
    if space == "fsaverage":
        cortex = write_fsaverage(folder, brain, responses, stimulus_of_trial, design.sessions, seed)
    save_truth(folder / TRUTH_DIR, WorldTruth(brain, scenes, design.subject_images, shared, repeats, cortex))
    subject = _subject_info(1, brain, stimulus_of_trial, design.sessions, cortex)
    return WorldInfo(root, int(seed), n_images, n_shared, repeats, subject.n_trials, subject.n_sessions,
                     brain.n_voxels, brain.shape, space, subject.n_vertices, 1, (subject,))


def _write_study_into(folder, root, seed, n_images, n_shared, repeats, trials_per_session, image_size,
                      brain_shape, n_general, n_subjects, space) -> WorldInfo:
    """Simulate every subject of a study and write the world into ``folder`` (see :mod:`.study`)."""
    rng = np.random.default_rng([int(seed), 0, 202])
    design = ST.make_study_design(rng, n_subjects, n_images, n_shared, repeats, trials_per_session)
    scenes = [S.sample_scene(rng) for _ in range(design.subject_images.max() + 1)]
    shared = np.sort(design.subject_images[0, :n_shared])
    study = ST.draw_study_traits(seed)
    truths, infos, records, labels = [], [], {}, None
    for subject in range(1, n_subjects + 1):
        shape, traits = ST.draw_subject(seed, subject, brain_shape, study)
        brain = make_brain(seed, shape=shape, n_general=n_general, traits=traits)
        images = design.subject_images[subject - 1]
        trials = design.trials(subject)
        columns, sessions = design.trial_columns[trials], design.sessions[trials]
        responses = true_response(brain, [scenes[i] for i in images])
        _write_subject_volume(folder, subject, brain, responses, columns, sessions,
                              np.random.default_rng([int(seed), subject, 202]))
        cortex = None
        if space == "fsaverage":
            cortex = write_surface_subject(folder, brain, responses, columns, sessions,
                                           np.random.default_rng([int(seed), subject, 303]), subject)
            labels = _shared_labels(folder, cortex, labels, subject)
        truths.append(WorldTruth(brain, scenes, images, shared, repeats, cortex))
        infos.append(_subject_info(subject, brain, images[columns], sessions, cortex))
        records[subject_folder(subject)] = {**ST.subject_record(traits, study), "n_sessions": infos[-1].n_sessions,
                                         "n_trials": infos[-1].n_trials, "n_images_shown": infos[-1].n_images_shown,
                                         "shape": list(shape), "n_voxels": brain.n_voxels}
    _write_expdesign(folder / EXPDESIGN, design.trial_columns, design.subject_images, shared)
    _write_stimuli(folder / STIMULI, scenes, image_size)
    record = {"n_subjects": n_subjects, "seed": int(seed), "n_images": n_images, "n_shared": n_shared,
              "n_stimuli": len(scenes), "repeats": repeats, "trials_per_session": trials_per_session,
              "n_design_sessions": int(design.sessions.max()) + 1, "keep_probability": ST.KEEP_PROBABILITY,
              "study": ST.study_record(study), "subjects": records,
              "note": "stimulus ids in ground_truth/subjNN/stimuli.json are 0-based rows of imgBrick"}
    save_study_truth(folder / TRUTH_DIR, StudyTruth(truths, record))
    first = infos[0]
    return WorldInfo(root, int(seed), n_images, n_shared, repeats, first.n_trials, first.n_sessions, first.n_voxels,
                     first.shape, space, first.n_vertices, n_subjects, tuple(infos))


def _shared_labels(folder, cortex, labels, subject):
    """Write the fsaverage labels with the first subject; every later one must lay out on the same vertices."""
    if labels is None:
        write_labels(folder, cortex)
        return cortex.labels
    if any(not np.array_equal(labels[name], values) for name, values in cortex.labels.items()):
        raise MineInputError(f"Subject {subject}'s ROIs do not fill the same fsaverage vertices as subject 1's, as "
                             "the one set of fsaverage labels needs; enlarge brain_shape so each ROI reaches its size.")
    return labels


def _subject_info(subject, brain, stimulus_of_trial, sessions, cortex) -> SubjectInfo:
    return SubjectInfo(subject, int(sessions.max()) + 1, len(sessions), len(np.unique(stimulus_of_trial)),
                       brain.n_voxels, brain.shape, 0 if cortex is None else int(cortex.mask.sum()))


def make_design(rng, n_images, n_shared, repeats, trials_per_session) -> Design:
    """Shuffle stimulus ids into subject columns (shared ones first, as in NSD) and trials into sessions."""
    subject_images = rng.permutation(n_images)
    columns = np.concatenate([np.arange(n_shared, n_images), np.repeat(np.arange(n_shared), repeats)])
    trial_columns = rng.permutation(columns)
    sessions = np.arange(len(trial_columns)) // trials_per_session
    return Design(subject_images, n_shared, trial_columns, sessions)


def _write_subject_volume(folder, subject, brain, responses, image_of_trial, sessions, rng) -> None:
    """Simulate a subject's single-trial betas (``responses[image_of_trial]`` plus noise from ``rng``) and write
    its betas, ncsnr, ROIs and anatomy at its NSD paths."""
    betas = measured_betas(brain, responses[image_of_trial], sessions, rng)
    cortex_betas = _cortex_betas(brain, betas, rng)
    ncsnr = nsd_ncsnr(cortex_betas.astype(np.float32) / BETA_SCALE, image_of_trial, sessions)
    _write_betas(folder / betas_folder(subject), brain, cortex_betas, sessions, ncsnr)
    _write_rois_and_anatomy(folder, subject, brain)


def _cortex_betas(brain: SimulatedBrain, general_betas: np.ndarray, rng) -> np.ndarray:
    """int16 betas for every cortex voxel: simulated ones inside nsdgeneral, pure noise elsewhere."""
    inside = brain.mask[brain.cortex]
    n_trials = len(general_betas)
    noise_sd = rng.uniform(0.5, 1.5, int((~inside).sum())).astype(np.float32) * np.median(brain.tuning.noise_sd)
    cortex = np.empty((n_trials, len(inside)), np.float32)
    cortex[:, inside] = general_betas
    cortex[:, ~inside] = rng.standard_normal((n_trials, int((~inside).sum())), dtype=np.float32) * noise_sd
    return np.clip(np.round(cortex * BETA_SCALE), -32768, 32767).astype(np.int16)


def _write_betas(out, brain, cortex_betas, sessions, ncsnr):
    """One 4-D int16 volume per session (Fortran order, so nibabel writes it without a transposed copy)."""
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


def _write_rois_and_anatomy(folder, subject, brain):
    func = folder / func_folder(subject)
    roi_dir, label_dir = func / "roi", folder / labels_folder(subject)
    roi_dir.mkdir(parents=True)
    label_dir.mkdir(parents=True)
    volumes = dict(brain.roi_volumes, nsdgeneral=general_volume(brain))
    labels = dict(brain.roi_labels, nsdgeneral={1: "nsdgeneral"})
    for name, volume in volumes.items():
        _save_nifti(roi_dir / f"{name}.nii.gz", volume.astype(np.int16), brain.affine)
        table = "".join(f"{k} {label}\n" for k, label in {0: "Unknown", **labels[name]}.items())
        (label_dir / f"{name}.mgz.ctab").write_text(table)
    _save_nifti(func / "T1_to_func1pt8mm.nii.gz", brain.anatomy.astype(np.float32), brain.affine)
    _save_nifti(func / "brainmask.nii.gz", brain.brainmask.astype(np.int16), brain.affine)


def _write_expdesign(path, trial_columns, subject_images, shared):
    """NSD's 1-based design: ``masterordering`` (1, trials), ``subjectim`` (subjects, images), ``sharedix``."""
    path.parent.mkdir(parents=True)
    scipy.io.savemat(path, {
        "masterordering": (trial_columns + 1)[None].astype(np.float64),
        "subjectim": (subject_images + 1).astype(np.float64),
        "sharedix": (shared + 1)[None].astype(np.float64),
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
