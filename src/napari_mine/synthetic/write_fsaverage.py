"""The synthetic subject on fsaverage5, written as NSD ships its surface data (DESIGN.md §4).

Per hemisphere: ``{lh,rh}.betas_sessionNN.mgh`` of shape (10242, 1, 1, trials) in float32 percent signal change
— NSD's fsaverage betas are float32 and carry no int16 ×300 scaling, unlike its volumes — with the volume
sessions' trial order (one expdesign for both), and ``{lh,rh}.ncsnr.mgh`` beside them computed with NSD's recipe;
fsaverage label files ``{lh,rh}.NAME.mgz`` (int32: -1 medial wall, 0 unlabelled, k the k-th name) with
``NAME.mgz.ctab`` (``value name r g b a``); and the transforms that tie the volume to the surface:
``{lh,rh}.func1pt8-to-layerB{1,2,3}.mgz`` ((n, 1, 1, 3) float32, 1-based decimal voxel coordinates of each native
vertex, 9999 on the medial wall) and ``{lh,rh}.white-to-fsaverage.mgz`` ((10242, 1, 1) int32, the 1-based native
vertex of each fsaverage vertex: the identity, since the subject's native surface *is* fsaverage5).

A surface-nsdgeneral vertex carries its voxel's noiseless response plus its own noise at that voxel's level
(:func:`brain.measured_betas`, so also a shared trial-wise fluctuation and session offsets); every other cortex
vertex carries noise only, as the volume's cortex outside nsdgeneral does, and the medial wall holds zeros (no
data). Vertex noise is drawn from its own random stream, so writing the surface leaves every volume file as it was.

In a study of several subjects every subject has its betas and transforms in its own folders and all share the
fsaverage label files, as NSD's fsaverage labels are shared, so their surface layouts must agree
(:func:`write_surface_subject` places each subject, :func:`write_labels` writes the labels once).
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import nibabel as nib
import numpy as np

from ..surfaces import HEMISPHERES
from .brain import ROI_FILES, SimulatedBrain, measured_betas
from .cortex import CortexMap, brain_on_sites, native_voxel_coordinates, place_on_cortex
from .noise_ceiling import nsd_ncsnr

LABELS = "nsddata/freesurfer/fsaverage/label"


def betas_folder(subject: int = 1) -> str:
    return f"nsddata_betas/ppdata/subj{subject:02d}/fsaverage/betas_fithrf_GLMdenoise_RR"


def transforms_folder(subject: int = 1) -> str:
    return f"nsddata/ppdata/subj{subject:02d}/transforms"


BETAS, TRANSFORMS = betas_folder(1), transforms_folder(1)  # a one-subject world's (subj01)
DEPTHS = ("layerB1", "layerB2", "layerB3")
INVALID = 9999.0
NCSNR_CHUNK = 2048  # vertices per ncsnr block (NSD's recipe works in float64 over all trials)


def write_fsaverage(folder: Path, brain: SimulatedBrain, responses: np.ndarray, stimulus_of_trial: np.ndarray,
                    sessions: np.ndarray, seed: int) -> CortexMap:
    """Lay the brain out on fsaverage5 and write its NSD surface files into ``folder``; returns the map.

    Parameters
    ----------
    folder : Path
        The world's (staging) root.
    brain : SimulatedBrain
    responses : float32 (n_stimuli, n_voxels)
        Noiseless response of every nsdgeneral voxel to every stimulus.
    stimulus_of_trial, sessions : int arrays (n_trials,)
        The volume world's trial sequence.
    seed : int
        The world's seed (the vertex noise has a stream of its own).
    """
    cortex_map = write_surface_subject(folder, brain, responses, stimulus_of_trial, sessions,
                                       np.random.default_rng([int(seed), 303]))
    write_labels(folder, cortex_map)
    return cortex_map


def write_surface_subject(folder: Path, brain: SimulatedBrain, responses: np.ndarray, stimulus_of_trial: np.ndarray,
                          sessions: np.ndarray, rng: np.random.Generator, subject: int = 1) -> CortexMap:
    """Lay one subject's brain out on fsaverage5 and write its betas and transforms (not the shared labels).

    ``stimulus_of_trial`` indexes the rows of ``responses`` (and groups the trials for the ncsnr); ``rng`` is the
    subject's vertex-noise stream. Returns the subject's map.
    """
    cortex_map = place_on_cortex(brain)
    mask = cortex_map.mask
    surface = brain_on_sites(brain, cortex_map, mask)
    signal = measured_betas(surface, responses[:, cortex_map.voxel_of_site[mask]][stimulus_of_trial], sessions, rng)
    column = np.cumsum(mask) - 1
    noise_sd = rng.uniform(0.5, 1.5, cortex_map.n_sites).astype(np.float32) * np.median(brain.tuning.noise_sd)
    out = folder / betas_folder(subject)
    out.mkdir(parents=True)
    for hemi in HEMISPHERES:
        sites = cortex_map.sites(hemi)
        betas = rng.standard_normal((len(stimulus_of_trial), sites.stop - sites.start), dtype=np.float32)
        betas *= noise_sd[sites]
        inside = np.flatnonzero(mask[sites])
        betas[:, inside] = signal[:, column[sites][inside]]
        betas[:, ~cortex_map.cortex[sites]] = 0.0
        ncsnr = np.concatenate([nsd_ncsnr(betas[:, start:start + NCSNR_CHUNK], stimulus_of_trial, sessions)
                                for start in range(0, betas.shape[1], NCSNR_CHUNK)])
        for session in range(int(sessions.max()) + 1):
            block = np.ascontiguousarray(betas[sessions == session].T)
            save_mgh(out / f"{hemi}.betas_session{session + 1:02d}.mgh", block[:, None, None, :])
        save_mgh(out / f"{hemi}.ncsnr.mgh", ncsnr[:, None, None])
    _write_transforms(folder / transforms_folder(subject), brain, cortex_map, rng)
    return cortex_map


def write_labels(folder: Path, cortex_map: CortexMap) -> None:
    """The fsaverage label files (``{lh,rh}.NAME.mgz`` and ``NAME.mgz.ctab``) of a surface layout."""
    out = folder / LABELS
    out.mkdir(parents=True)
    names = dict(ROI_FILES, nsdgeneral=("nsdgeneral",))
    for name, values in cortex_map.labels.items():
        for hemi in HEMISPHERES:
            save_mgh(out / f"{hemi}.{name}.mgz", values[cortex_map.sites(hemi)].astype(np.int32)[:, None, None])
        (out / f"{name}.mgz.ctab").write_text(color_table(names[name]))


def color_table(names) -> str:
    """FreeSurfer's ``.ctab`` lines ``value name r g b a``: 0 Unknown, then one evenly spaced hue per name."""
    lines = ["0 Unknown 0 0 0 0"]
    for k, name in enumerate(names, start=1):
        r, g, b = (round(255 * c) for c in colorsys.hsv_to_rgb((k - 1) / len(names), 0.75, 0.95))
        lines.append(f"{k} {name} {r} {g} {b} 0")
    return "\n".join(lines) + "\n"


def _write_transforms(out: Path, brain: SimulatedBrain, cortex_map: CortexMap, rng) -> None:
    out.mkdir(parents=True)
    coordinates = native_voxel_coordinates(brain, cortex_map, rng, INVALID)
    for hemi in HEMISPHERES:
        for depth, name in enumerate(DEPTHS):
            save_mgh(out / f"{hemi}.func1pt8-to-{name}.mgz", coordinates[hemi][:, depth][:, None, None, :])
        native = np.arange(1, cortex_map.hemispheres[hemi] + 1, dtype=np.int32)
        save_mgh(out / f"{hemi}.white-to-fsaverage.mgz", native[:, None, None])


def save_mgh(path: Path, data: np.ndarray) -> None:
    """An MGH/MGZ file (gzip by the .mgz suffix) with an identity vox2ras: surface data are not on a grid."""
    nib.save(nib.MGHImage(np.asarray(data), np.eye(4)), str(path))
