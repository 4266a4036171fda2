"""Peak memory of ``load_nsd`` on a subject at NSD's real 1.8 mm grid, against the masked array it returns.

Writes (once, into a cache folder reused by later runs) an NSD-layout subject: 81×104×83 grid, int16 betas
(% signal change × 300) inside an ellipsoid brain, ``--sessions`` × ``--trials`` trials, an nsdgeneral mask
of ``--voxels`` voxels. Then loads it in a fresh subprocess and reports that process's peak resident memory
(``ru_maxrss``) as "peak / masked float32 size" and "peak − masked size". Aim: peak < 1.5 × masked + 500 MB.

    python benchmarks/bench_nsd_load.py [--cache-dir DIR] [--sessions 6] [--trials 750] [--voxels 15000]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

GRID = (81, 104, 83)
AFFINE = np.array([[-1.8, 0, 0, 72.0], [0, 1.8, 0, -93.6], [0, 0, 1.8, -74.7], [0, 0, 0, 1]])
SUBJECT = "subj01"


def write_betas_nifti(path: Path, brain: np.ndarray, n_trials: int, rng) -> None:
    """Stream a gzip (level 1) int16 4-D NIfTI trial by trial, so writing never holds a session in memory."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(GRID + (n_trials,))
    header.set_data_dtype(np.int16)
    header.set_sform(AFFINE, code=1)
    header.set_qform(AFFINE, code=1)
    header.set_data_offset(352)
    volume = np.zeros(GRID, dtype=np.int16)
    partial = path.with_name(path.name + ".partial")
    with gzip.open(partial, "wb", compresslevel=1) as handle:
        header.write_to(handle)
        handle.write(b"\x00" * (352 - 348))  # no extensions
        for _ in range(n_trials):
            volume[brain] = np.clip(rng.normal(0, 600, size=int(brain.sum())), -32768, 32767)
            handle.write(volume.tobytes(order="F"))
    os.replace(partial, path)


def write_volume(path: Path, volume: np.ndarray) -> None:
    import nibabel as nib

    partial = path.with_name(path.name + ".partial.nii.gz")
    nib.save(nib.Nifti1Image(volume, AFFINE), partial)
    os.replace(partial, path)


def write_subject(root: Path, n_sessions: int, n_trials: int, n_voxels: int, seed: int = 0) -> None:
    """Write the NSD layout (design, small image brick, betas, ROIs, ncsnr) under ``root``."""
    import h5py
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    betas_dir = root / f"nsddata_betas/ppdata/{SUBJECT}/func1pt8mm/betas_fithrf_GLMdenoise_RR"
    roi_dir = root / f"nsddata/ppdata/{SUBJECT}/func1pt8mm/roi"
    design_dir = root / "nsddata/experiments/nsd"
    stimuli_dir = root / "nsddata_stimuli/stimuli/nsd"
    for folder in (betas_dir, roi_dir, design_dir, stimuli_dir):
        folder.mkdir(parents=True, exist_ok=True)

    axes = np.meshgrid(*[np.linspace(-1, 1, n) for n in GRID], indexing="ij")
    brain = sum(a**2 for a in axes) < 0.85**2
    posterior_first = np.argsort(np.argwhere(brain)[:, 1], kind="stable")[:n_voxels]
    mask = np.zeros(GRID, dtype=bool)
    mask[tuple(np.argwhere(brain)[posterior_first].T)] = True
    nsdgeneral = np.where(brain, 0, -1).astype(np.int16)
    nsdgeneral[mask] = 1
    write_volume(roi_dir / "nsdgeneral.nii.gz", nsdgeneral)
    write_volume(betas_dir / "ncsnr.nii.gz", rng.random(GRID, dtype=np.float32))

    n_images, n_stimuli = 10_000, 73_000
    masterordering = rng.permutation(np.tile(np.arange(1, n_images + 1), 3))[None, :]
    subjectim = np.stack([rng.permutation(n_stimuli)[:n_images] + 1 for _ in range(8)])
    savemat(design_dir / "nsd_expdesign.mat", {"masterordering": masterordering, "subjectim": subjectim,
                                                "sharedix": np.sort(subjectim[0, :1000])[None, :]})
    with h5py.File(stimuli_dir / "nsd_stimuli.hdf5", "w") as handle:  # tiny images: only the shape is read
        handle.create_dataset("imgBrick", shape=(n_stimuli, 4, 4, 3), dtype=np.uint8)
    for session in range(1, n_sessions + 1):
        started = time.perf_counter()
        write_betas_nifti(betas_dir / f"betas_session{session:02d}.nii.gz", brain, n_trials, rng)
        print(f"  wrote session {session:02d} in {time.perf_counter() - started:.1f} s", flush=True)
    print(f"  brain {int(brain.sum())} voxels, mask {int(mask.sum())} voxels")


def measure_in_subprocess(root: Path) -> dict:
    """Load in a fresh interpreter; report its peak RSS after imports and after loading."""
    script = f"""
import json, resource, time
import numpy, nibabel, h5py, scipy.io
from napari_mine.data import load_nsd
after_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
started = time.perf_counter()
dataset = load_nsd({str(root)!r}, subject=1, mask="nsdgeneral")
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({{"peak": peak, "after_imports": after_imports, "seconds": seconds,
                   "shape": list(dataset.responses.shape), "masked_bytes": dataset.responses.nbytes}}))
"""
    output = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_cache = Path(__file__).resolve().parents[1] / ".scratch" / "bench_nsd_load"
    parser.add_argument("--cache-dir", type=Path, default=default_cache)
    parser.add_argument("--sessions", type=int, default=6)
    parser.add_argument("--trials", type=int, default=750)
    parser.add_argument("--voxels", type=int, default=15_000)
    args = parser.parse_args()

    root = args.cache_dir / f"s{args.sessions}_t{args.trials}_v{args.voxels}"
    done = root / "complete.json"
    if done.is_file():
        print(f"reusing {root}")
    else:
        print(f"writing an NSD-layout subject to {root} (gzip level 1; reused by later runs)")
        write_subject(root, args.sessions, args.trials, args.voxels)
        done.write_text(json.dumps(vars(args), default=str))

    result = measure_in_subprocess(root)
    mb = 2**20
    masked, peak = result["masked_bytes"], result["peak"]
    unmasked_session = int(np.prod(GRID)) * args.trials * 2
    budget = 1.5 * masked + 500 * mb
    print(f"responses {tuple(result['shape'])} float32 = {masked / mb:.0f} MB masked "
          f"(one unmasked int16 session alone: {unmasked_session / mb:.0f} MB)")
    print(f"load time            {result['seconds']:.1f} s")
    print(f"peak RSS             {peak / mb:.0f} MB (after imports: {result['after_imports'] / mb:.0f} MB)")
    print(f"peak / masked size   {peak / masked:.2f}")
    beyond_imports = peak - result["after_imports"] - masked
    print(f"peak - masked size   {(peak - masked) / mb:.0f} MB (imports excluded: {beyond_imports / mb:.0f} MB)")
    print(f"aim: peak < 1.5 × masked + 500 MB = {budget / mb:.0f} MB -> {'met' if peak < budget else 'NOT met'}")


if __name__ == "__main__":
    main()
