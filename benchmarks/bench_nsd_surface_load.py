"""Peak memory of ``load_nsd_surface`` at NSD's real fsaverage size, against the per-image-mean array it returns.

Writes (once, into a cache folder reused by later runs) an NSD subject on fsaverage: ``{lh,rh}.betas_sessionNN.mgh``
of (163842, 1, 1, ``--trials``) float32 for ``--sessions`` sessions (about 0.5 GB per file, as NSD's), with the
medial wall (8 % of each hemisphere) constant, an ``nsdgeneral`` fsaverage label of ``--fraction`` of the
vertices, ncsnr, and an NSD-like design (10,000 images shown 3 times in a random order, so the first sessions
hold each image once or twice). Then loads it in a fresh subprocess, with the nsdgeneral mask and with every
vertex (the medial wall then dropped), and reports that process's peak resident memory (``ru_maxrss``) against
the float32 per-image-mean array. Aim: peak < 1.5 × means + 500 MB. Results go to
``benchmarks/results/nsd_surface_load.json``.

    python benchmarks/bench_nsd_surface_load.py [--cache-dir DIR] [--sessions 6] [--trials 750] [--fraction 0.25]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

N_VERTICES = 163_842  # fsaverage (fsaverage7) per hemisphere
MEDIAL_WALL = 0.08
SUBJECT = "subj01"
RESULTS = Path(__file__).resolve().parent / "results" / "nsd_surface_load.json"


def write_mgh_streamed(path: Path, n_trials: int, wall: np.ndarray, rng) -> None:
    """A (n, 1, 1, n_trials) float32 MGH written trial by trial (MGH is Fortran order: a trial's vertices are
    contiguous), so writing never holds a session in memory."""
    from nibabel.freesurfer.mghformat import MGHHeader

    header = MGHHeader()
    header.set_data_shape((N_VERTICES, 1, 1, n_trials))
    header.set_data_dtype(np.float32)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as handle:
        header.writehdr_to(handle)
        handle.write(b"\x00" * (header.get_data_offset() - handle.tell()))  # the header is padded to 284 bytes
        for _ in range(n_trials):
            trial = rng.normal(0.25, 1.75, N_VERTICES).astype(">f4")  # NSD's sd on subj01 session 1
            trial[wall] = 0.0
            handle.write(trial.tobytes())
        header.writeftr_to(handle)
    os.replace(partial, path)


def write_vertex_file(path: Path, values: np.ndarray) -> None:
    import nibabel as nib

    nib.save(nib.MGHImage(values.reshape(-1, 1, 1), np.eye(4)), str(path))


def write_subject(root: Path, n_sessions: int, n_trials: int, fraction: float, seed: int = 0) -> None:
    import h5py
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    betas_dir = root / f"nsddata_betas/ppdata/{SUBJECT}/fsaverage/betas_fithrf_GLMdenoise_RR"
    label_dir = root / "nsddata/freesurfer/fsaverage/label"
    design_dir = root / "nsddata/experiments/nsd"
    stimuli_dir = root / "nsddata_stimuli/stimuli/nsd"
    for folder in (betas_dir, label_dir, design_dir, stimuli_dir):
        folder.mkdir(parents=True, exist_ok=True)

    n_images, n_stimuli = 10_000, 73_000
    masterordering = rng.permutation(np.tile(np.arange(1, n_images + 1), 3))[None, :]
    subjectim = np.stack([rng.permutation(n_stimuli)[:n_images] + 1 for _ in range(8)])
    savemat(design_dir / "nsd_expdesign.mat", {"masterordering": masterordering, "subjectim": subjectim,
                                                "sharedix": np.sort(subjectim[0, :1000])[None, :]})
    with h5py.File(stimuli_dir / "nsd_stimuli.hdf5", "w") as handle:  # tiny images: only the shape is read
        handle.create_dataset("imgBrick", shape=(n_stimuli, 4, 4, 3), dtype=np.uint8)
    (label_dir / "nsdgeneral.mgz.ctab").write_text("0 Unknown 0 0 0 0\n1 nsdgeneral 255 0 0 0\n")
    walls = {}
    for hemi in ("lh", "rh"):
        walls[hemi] = rng.random(N_VERTICES) < MEDIAL_WALL
        general = (~walls[hemi] & (rng.random(N_VERTICES) < fraction / (1 - MEDIAL_WALL))).astype(np.int32)
        write_vertex_file(label_dir / f"{hemi}.nsdgeneral.mgz", general)
        write_vertex_file(betas_dir / f"{hemi}.ncsnr.mgh", rng.random(N_VERTICES).astype(np.float32))
    for session in range(1, n_sessions + 1):
        started = time.perf_counter()
        for hemi in ("lh", "rh"):
            write_mgh_streamed(betas_dir / f"{hemi}.betas_session{session:02d}.mgh", n_trials, walls[hemi], rng)
        print(f"  wrote session {session:02d} (both hemispheres) in {time.perf_counter() - started:.1f} s",
              flush=True)


def measure_in_subprocess(root: Path, mask: str | None) -> dict:
    """Load in a fresh interpreter; report its peak RSS after imports and after loading."""
    script = f"""
import json, resource, time, warnings
import numpy, nibabel, h5py, scipy.io
from napari_mine.data import load_nsd_surface
after_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
started = time.perf_counter()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    dataset = load_nsd_surface({str(root)!r}, subject=1, mask={mask!r})
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({{"peak": peak, "after_imports": after_imports, "seconds": seconds,
                   "shape": list(dataset.responses.shape), "means_bytes": dataset.responses.nbytes,
                   "repeats": numpy.bincount(dataset.n_repeats).tolist(),
                   "dropped": dataset.source["dropped_vertices"], "warnings": [str(w.message) for w in caught]}}))
"""
    output = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_cache = Path(__file__).resolve().parents[1] / ".scratch" / "bench_nsd_surface_load"
    parser.add_argument("--cache-dir", type=Path, default=default_cache)
    parser.add_argument("--sessions", type=int, default=6)
    parser.add_argument("--trials", type=int, default=750)
    parser.add_argument("--fraction", type=float, default=0.25, help="share of the vertices in nsdgeneral")
    args = parser.parse_args()

    root = args.cache_dir / f"s{args.sessions}_t{args.trials}_f{args.fraction}"
    done = root / "complete.json"
    if done.is_file():
        print(f"reusing {root}")
    else:
        print(f"writing an NSD subject on fsaverage to {root} (reused by later runs)")
        write_subject(root, args.sessions, args.trials, args.fraction)
        done.write_text(json.dumps(vars(args), default=str))

    mb = 2**20
    report = {"vertices_per_hemisphere": N_VERTICES, "sessions": args.sessions, "trials_per_session": args.trials,
              "file_mb": round((N_VERTICES * args.trials * 4) / mb), "runs": {}}
    for label, mask in (("nsdgeneral", "nsdgeneral"), ("every vertex", None)):
        result = measure_in_subprocess(root, mask)
        means, peak = result["means_bytes"], result["peak"]
        budget = 1.5 * means + 500 * mb
        run = {"mask": label, "shape": result["shape"], "means_mb": round(means / mb), "peak_mb": round(peak / mb),
               "after_imports_mb": round(result["after_imports"] / mb), "peak_over_means": round(peak / means, 2),
               "peak_minus_means_mb": round((peak - means) / mb), "budget_mb": round(budget / mb),
               "met": bool(peak < budget), "seconds": round(result["seconds"], 1),
               "images_by_repeats": result["repeats"], "dropped_vertices": result["dropped"]}
        report["runs"][label] = run
        print(f"{label}: per-image means {tuple(result['shape'])} float32 = {run['means_mb']} MB; "
              f"load {run['seconds']} s; peak RSS {run['peak_mb']} MB = {run['peak_over_means']}x means, means + "
              f"{run['peak_minus_means_mb']} MB (after imports {run['after_imports_mb']} MB); aim < 1.5x + 500 MB = "
              f"{run['budget_mb']} MB -> {'met' if run['met'] else 'NOT met'}; dropped {result['dropped']}", flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=1) + "\n")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
