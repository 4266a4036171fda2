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

SUBJECT = "subj01"
BETAS = f"nsddata_betas/ppdata/{SUBJECT}/fsaverage/betas_fithrf_GLMdenoise_RR"
LABELS = "nsddata/freesurfer/fsaverage/label"
TRANSFORMS = f"nsddata/ppdata/{SUBJECT}/transforms"
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
    cortex_map = place_on_cortex(brain)
    rng = np.random.default_rng([int(seed), 303])
    mask = cortex_map.mask
    surface = brain_on_sites(brain, cortex_map, mask)
    signal = measured_betas(surface, responses[:, cortex_map.voxel_of_site[mask]][stimulus_of_trial], sessions, rng)
    column = np.cumsum(mask) - 1
    noise_sd = rng.uniform(0.5, 1.5, cortex_map.n_sites).astype(np.float32) * np.median(brain.tuning.noise_sd)
    out = folder / BETAS
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
    _write_labels(folder, cortex_map)
    _write_transforms(folder, brain, cortex_map, rng)
    return cortex_map


def _write_labels(folder: Path, cortex_map: CortexMap) -> None:
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


def _write_transforms(folder: Path, brain: SimulatedBrain, cortex_map: CortexMap, rng) -> None:
    out = folder / TRANSFORMS
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
