"""The demo on vertices against the demo on voxels of the same world: per-ROI median nc-r and every score.

Runs ``run_demo`` twice for one seed (a run whose summary.json is already there is reused): the volume demo, and
the fsaverage demo on the same world's subject on the cortex (every vertex copies a voxel's neurons, with its own
noise). Writes ``benchmarks/results/surface_vs_volume.json`` (and prints a table): the per-ROI median
noise-ceiling-normalised r of both, each scalar ground-truth score of both, and whether the two summary.json
files have the same keys.

    python benchmarks/surface_vs_volume.py [--out .scratch/surface_vs_volume] [--seed 0] [--images N]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "surface_vs_volume.json"
SPACES = ("volume", "fsaverage")


def keys_of(tree, prefix: str = "") -> set[str]:
    """Every key path of a summary, except the per-ROI and per-label maps whose labels are data."""
    if not isinstance(tree, dict):
        return set()
    paths = set()
    for key, value in tree.items():
        path = f"{prefix}{key}"
        paths.add(path)
        if key not in ("timings",) and not key.endswith(("_by_roi", "ari")) and isinstance(value, dict):
            paths |= keys_of(value, path + "/")
    return paths


def scalars(tree, prefix: str = "") -> dict[str, float]:
    """The numbers of a summary by key path (timings left out)."""
    found = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if key == "timings":
            continue
        if isinstance(value, dict):
            found.update(scalars(value, path + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found[path] = float(value)
    return found


def main() -> None:
    from napari_mine.demo import run_demo

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / ".scratch" /
                        "surface_vs_volume")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=None)
    args = parser.parse_args()

    summaries = {}
    for space in SPACES:
        folder = args.out / f"seed_{args.seed}_{space}"
        path = folder / "summary.json"
        if not path.is_file() or "timings" not in json.loads(path.read_text()):
            run_demo(folder, seed=args.seed, n_images=args.images, space=space, log=print)
        summaries[space] = json.loads(path.read_text())

    volume, surface = (summaries[space] for space in SPACES)
    by_roi = {space: summaries[space]["encoder"]["median_nc_r_by_roi"] for space in SPACES}
    rois = sorted(set(by_roi["volume"]) | set(by_roi["fsaverage"]))
    table = {roi: {space: by_roi[space].get(roi) for space in SPACES} for roi in rois}
    volume_scores, surface_scores = scalars(volume), scalars(surface)
    report = {
        "seed": args.seed,
        "same_keys": keys_of(volume) == keys_of(surface),
        "keys_only_in_volume": sorted(keys_of(volume) - keys_of(surface)),
        "keys_only_in_fsaverage": sorted(keys_of(surface) - keys_of(volume)),
        "targets": {"volume": volume["encoder"]["n_voxels"], "fsaverage": surface["encoder"]["n_voxels"]},
        "median_nc_r_all": {space: summaries[space]["encoder"]["median_nc_r_all"] for space in SPACES},
        "median_nc_r_by_roi": table,
        "scores": {key: {"volume": volume_scores[key], "fsaverage": surface_scores.get(key)}
                   for key in sorted(volume_scores) if not key.startswith("encoder/")},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=1) + "\n")
    print(f"same summary keys: {report['same_keys']}; targets {report['targets']}")
    print(f"{'ROI':>12}  {'volume':>7}  {'fsaverage':>9}")
    for roi, row in table.items():
        cells = [f"{row[s]:.3f}" if row[s] is not None else "-" for s in SPACES]
        print(f"{roi:>12}  {cells[0]:>7}  {cells[1]:>9}")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
