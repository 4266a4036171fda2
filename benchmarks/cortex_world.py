"""Where the synthetic world's ROIs lie on the cortex: a picture and a table to check them by eye.

Builds the demo's simulated brain (seed 0 unless told), lays it out on fsaverage5 as ``write_world(...,
space="fsaverage")`` does, and writes the flat maps of both hemispheres (sulcal depth shaded, each ROI patch in
its own colour, labelled at its centroid) and each patch's requested MNI305 centre, nearest vertex, nearest
patch vertex and centroid (JSON), plus how well the pRFs follow the cortex (eccentricity against distance from
the occipital pole, hemifield of each hemisphere's early visual vertices) and how well sampling the volume through
the NSD transforms the world writes gives each vertex its own voxel's signal.

    python benchmarks/cortex_world.py [--seed 0] [--figure docs/cortex_world.png]
                                      [--json benchmarks/results/cortex_world.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from napari_mine.surfaces import HEMISPHERES, fsaverage_mesh
from napari_mine.synthetic.brain import ROI_FILES, make_brain
from napari_mine.synthetic.cortex import _geometry, brain_on_sites, native_voxel_coordinates, place_on_cortex

EVC = ROI_FILES["prf-visualrois"]


def retinotopy(brain, cortex_map) -> dict:
    """Spearman ρ of pRF eccentricity with distance from the occipital pole, and the share of each hemisphere's
    early visual vertices whose pRF lies in the contralateral field."""
    surface = brain_on_sites(brain, cortex_map, cortex_map.mask)
    tuning, sites = surface.tuning, np.flatnonzero(cortex_map.mask)
    eccentricity = np.hypot(tuning.prf_x - 0.5, tuning.prf_y - 0.5)
    out = {}
    for hemi in HEMISPHERES:
        span = cortex_map.sites(hemi)
        in_hemi = (sites >= span.start) & (sites < span.stop)
        pole = _geometry(hemi).pole_distance[sites[in_hemi] - span.start]
        rho = {}
        for area in EVC:
            members = tuning.roi[in_hemi] == area
            rho[area] = round(float(spearmanr(pole[members], eccentricity[in_hemi][members])[0]), 3)
        evc = np.isin(tuning.roi[in_hemi], EVC)
        prf_x = tuning.prf_x[in_hemi][evc]
        out[hemi] = {"eccentricity_vs_pole_distance_rho": rho,
                     "contralateral_fraction": round(float(np.mean(prf_x >= 0.5 if hemi == "lh" else prf_x <= 0.5)), 3)}
    return out


def transform_sampling(brain, cortex_map, n_scenes: int = 100) -> dict:
    """Correlation of each surface-mask vertex's own noiseless signal with the volume's sampled through the NSD
    transforms (the three depths averaged), by nearest-neighbour and by linear interpolation."""
    from scipy.ndimage import map_coordinates

    from napari_mine.synthetic import scenes as S
    from napari_mine.synthetic.brain import true_response
    from napari_mine.synthetic.write_fsaverage import INVALID

    rng = np.random.default_rng(1)
    clean = true_response(brain, [S.sample_scene(rng) for _ in range(n_scenes)])
    volume = np.zeros(brain.shape + (n_scenes,), np.float32)
    volume[brain.mask] = clean.T
    coordinates = native_voxel_coordinates(brain, cortex_map, np.random.default_rng(2), INVALID)
    out = {}
    for order, name in ((0, "nearest"), (1, "linear")):
        r = []
        for hemi in HEMISPHERES:
            voxel = cortex_map.voxel_of_site[cortex_map.sites(hemi)]
            inside = voxel >= 0
            points = coordinates[hemi][inside] - 1  # (n, depths, 3), 0-based
            sampled = np.mean([np.stack([map_coordinates(volume[..., i], points[:, d].T, order=order)
                                         for i in range(n_scenes)]) for d in range(points.shape[1])], axis=0)
            target = clean[:, voxel[inside]]
            for j in np.flatnonzero(target.std(0) > 1e-3):
                r.append(np.corrcoef(sampled[:, j], target[:, j])[0, 1])
        out[name] = {"median_r": round(float(np.median(r)), 4), "p5_r": round(float(np.percentile(r, 5)), 4),
                     "n_vertices": len(r)}
    return out


def draw(brain, cortex_map, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(cortex_map.places)
    colours = np.vstack([plt.get_cmap("tab20")(np.arange(20)), plt.get_cmap("tab20b")(np.arange(20))])
    figure, axes = plt.subplots(1, 2, figsize=(16, 7.5))
    regions = site_regions(brain, cortex_map)
    for axis, hemi in zip(axes, HEMISPHERES):
        flat = fsaverage_mesh(hemi, "flat")
        span = cortex_map.sites(hemi)
        sulc = cortex_map.anatomy[span]
        x, y = flat.vertices[:, 0], flat.vertices[:, 1]
        axis.tripcolor(x, y, flat.faces, sulc, cmap="Greys", shading="gouraud", vmin=-2.5, vmax=3)
        roi = regions[span]
        in_general = cortex_map.mask[span]
        axis.tricontour(x, y, flat.faces, in_general.astype(float), levels=[0.5], colors="k", linewidths=0.8)
        for name, colour in zip(names, colours):
            members = roi == name
            if members.any():
                axis.scatter(x[members], y[members], s=9, color=colour, linewidths=0)
                axis.text(x[members].mean(), y[members].mean(), name, fontsize=7, ha="center", va="center",
                          bbox={"facecolor": "white", "alpha": 0.6, "pad": 0.5, "linewidth": 0})
        axis.set_title(f"{hemi} (fsaverage5 flat map; black line: surface nsdgeneral)")
        axis.set_aspect("equal")
        axis.axis("off")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def site_regions(brain, cortex_map) -> np.ndarray:
    """The ROI or category-patch name of every site ("" elsewhere), from the world's own tuning."""
    voxel = cortex_map.voxel_of_site
    return np.where(voxel >= 0, brain.tuning.roi[np.maximum(voxel, 0)], "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--figure", type=Path, default=Path("docs/cortex_world.png"))
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/cortex_world.json"))
    args = parser.parse_args()
    brain = make_brain(args.seed)
    cortex_map = place_on_cortex(brain)
    draw(brain, cortex_map, args.figure)
    report = {"seed": args.seed, "n_voxels": brain.n_voxels,
              "surface_nsdgeneral": {hemi: int(cortex_map.mask[cortex_map.sites(hemi)].sum()) for hemi in HEMISPHERES},
              "retinotopy": retinotopy(brain, cortex_map), "transform_sampling": transform_sampling(brain, cortex_map),
              "places": cortex_map.places}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "places"}, indent=1))


if __name__ == "__main__":
    main()
