"""Where the ground-truth scores fall short, pair by pair, on the worlds of an evaluation.

For each seed folder of ``napari-mine evaluate`` this redraws the scoring's own seeded pairs
(``synthetic.scoring``) and breaks the misses down by what the truth knows: the pointing game and the
description by ROI, by the number of objects in the scene and by whether the driving object is the scene's
largest; clusters by ROI size and by the k chosen against the true number of sub-populations; faithfulness
(exact against integrated gradients, from ``summary.json``'s per-pair values) by the share of the prediction
the patch terms carry. It prints a table per seed and, with ``--json``, writes the numbers.

    .venv/bin/python benchmarks/evaluation_shortfalls.py /tmp/eval --seeds 101 102 103 104 105
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def pair_breakdown(seed_dir: Path, seed: int) -> dict:
    from napari_mine.data import load_nsd
    from napari_mine.results import Results
    from napari_mine.synthetic import scoring
    from napari_mine.synthetic.truth import load_truth
    from napari_mine.vocabulary import concept_space, synthetic_vocabulary

    results = Results.open(seed_dir)
    truth = load_truth(seed_dir / "world")
    dataset = load_nsd(seed_dir / "world", subject=1)
    backbone = results.backbone(device="cpu")
    rng = np.random.default_rng(seed)  # as score_interpretation draws them
    voxels = scoring.scored_voxels(results, dataset, truth)
    pairs = scoring.sample_pairs(results, dataset, truth, voxels, rng, scoring.DEFAULT_N_VOXELS,
                                 scoring.DEFAULT_N_IMAGES_PER_VOXEL)
    hits = scoring.pointing_game_hits(pairs.tokens, pairs.weights, pairs.masks)
    space = concept_space(synthetic_vocabulary(), backbone)
    described = scoring.description_categories(pairs.tokens, pairs.weights, space) == pairs.categories
    scenes = [truth.scenes[i] for i in np.asarray(dataset.images.ids)[pairs.rows]]
    drivers = scoring.driving_objects(truth.brain, scenes, pairs.voxels)
    n_objects = np.array([len(scene.objects) for scene in scenes])
    largest = np.array([scene.objects[d].size >= max(o.size for o in scene.objects) for scene, d in zip(scenes, drivers)])
    visible = np.array([mask.mean() for mask in pairs.masks])
    rois = truth.brain.tuning.roi[pairs.voxels]

    def rates(values, groups) -> dict:
        return {str(g): [float(values[groups == g].mean()), int((groups == g).sum())] for g in np.unique(groups)}

    small = visible < np.median(visible)
    return {
        "pointing_game": float(hits.mean()), "description": float(described.mean()),
        "pointing_by_roi": rates(hits, rois), "description_by_roi": rates(described, rois),
        "pointing_by_n_objects": rates(hits, n_objects), "pointing_by_driver_largest": rates(hits, largest),
        "pointing_by_small_visible_driver": rates(hits, small),
        "description_by_driver_largest": rates(described, largest),
    }


def cluster_breakdown(seed_dir: Path, seed: int) -> dict:
    from napari_mine.data import load_nsd
    from napari_mine.describe import cluster_voxels, weight_features
    from napari_mine.results import Results
    from napari_mine.synthetic import scoring
    from napari_mine.synthetic.truth import load_truth
    from napari_mine.vocabulary import concept_space, synthetic_vocabulary

    results = Results.open(seed_dir)
    space = concept_space(synthetic_vocabulary(), results.backbone(device="cpu"))
    truth = load_truth(seed_dir / "world")
    dataset = load_nsd(seed_dir / "world", subject=1)
    voxels = scoring.scored_voxels(results, dataset, truth)
    tuning = truth.brain.tuning
    weights = weight_features(results.weights()[0][:, voxels].T, space.directions)  # as the scoring clusters
    rows = {}
    for roi in scoring.CATEGORY_ROIS:
        members = tuning.roi[voxels] == roi
        if members.sum() >= scoring.MIN_CLUSTER_VOXELS:
            clustering = cluster_voxels(weights[members], seed=seed)
            true = tuning.subpopulation[voxels][members]
            kinds = {label.split(":")[0] if ":" in label else ("hemifield" if "field" in label else "size")
                     for label in np.unique(true)}
            rows[roi] = {"n_voxels": int(members.sum()), "k_chosen": int(clustering.k), "kind": "/".join(sorted(kinds)),
                         "k_true": int(len(np.unique(true))),
                         "smallest_true_group": int(np.bincount(np.unique(true, return_inverse=True)[1]).min())}
    return rows


def faithfulness_breakdown(seed_dir: Path, summary: dict) -> dict:
    """Exact against integrated gradients, pair by pair: deletion AUC difference (exact − IG; > 0 where IG is
    more faithful) by the share of |terms| the patches carry and by the number of objects in the scene."""
    from napari_mine.results import Results
    from napari_mine.synthetic.truth import load_truth

    pairs = summary["attribution"].get("faithfulness_pairs")
    if not pairs:
        return {}
    truth = load_truth(seed_dir / "world")
    ids = Results.open(seed_dir).image_ids[np.asarray(pairs["row"])]
    n_objects = np.array([len(truth.scenes[int(i)].objects) for i in ids])
    difference = np.asarray(pairs["exact"]["deletion_auc"]) - np.asarray(pairs["integrated_gradients"]["deletion_auc"])
    fraction = np.asarray(pairs["spatial_fraction"])
    low = fraction < np.median(fraction)
    several = n_objects > 1
    return {"n_pairs": int(len(difference)), "n_one_object": int((~several).sum()), "n_several_objects": int(several.sum()),
            "n_low_spatial_fraction": int(low.sum()), "n_high_spatial_fraction": int((~low).sum()),
            "ig_lower": float((difference > 0).mean()),
            "mean_difference": float(difference.mean()),
            "difference_low_spatial_fraction": float(difference[low].mean()),
            "difference_high_spatial_fraction": float(difference[~low].mean()),
            "median_spatial_fraction": float(np.median(fraction)),
            "corr_difference_spatial_fraction": float(np.corrcoef(difference, fraction)[0, 1]),
            "difference_one_object": float(difference[~several].mean()) if (~several).any() else None,
            "difference_several_objects": float(difference[several].mean()) if several.any() else None,
            "ig_lower_one_object": float((difference[~several] > 0).mean()) if (~several).any() else None,
            "ig_lower_several_objects": float((difference[several] > 0).mean()) if several.any() else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("evaluation", type=Path, help="the --out folder of napari-mine evaluate")
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    report = {}
    for seed in args.seeds:
        folder = args.evaluation / f"seed_{seed}"
        summary = json.loads((folder / "summary.json").read_text())
        report[seed] = {"pairs": pair_breakdown(folder, seed), "clusters": cluster_breakdown(folder, seed),
                        "faithfulness": faithfulness_breakdown(folder, summary),
                        "encoder_body_rois": {roi: summary["encoder"]["median_nc_r_by_roi"].get(roi)
                                              for roi in ("EBA", "FBA-1", "FBA-2", "mTL-bodies")},
                        "cluster_ari": summary["clusters"]["ari"]}
        print(f"seed {seed}: " + json.dumps(report[seed], indent=1))
    report["pooled"] = pooled(report)
    print("pooled: " + json.dumps(report["pooled"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def pooled(report: dict) -> dict:
    """Pair-weighted rates over the seeds: the breakdowns that recur, not one world's."""
    out = {}
    for key in ("pointing_by_roi", "description_by_roi", "pointing_by_n_objects", "pointing_by_driver_largest",
                "pointing_by_small_visible_driver", "description_by_driver_largest"):
        groups: dict[str, list[float]] = {}
        for seed in report.values():
            for group, (rate, n) in seed["pairs"][key].items():
                hits, total = groups.get(group, [0.0, 0])
                groups[group] = [hits + rate * n, total + n]
        out[key] = {group: [hits / total, total] for group, (hits, total) in sorted(groups.items())}
    by_kind: dict[str, list[float]] = {}
    for seed in report.values():
        for roi, row in seed["clusters"].items():
            by_kind.setdefault(row["kind"], []).append(seed["cluster_ari"][roi])
    out["cluster_ari_by_subpopulation_kind"] = {kind: [float(np.mean(v)), float(np.min(v)), len(v),
                                                       int(np.sum(np.asarray(v) < 0.5))]
                                                for kind, v in sorted(by_kind.items())}
    faithful = [seed["faithfulness"] for seed in report.values() if seed["faithfulness"]]
    if faithful:
        count_of = {"difference_low_spatial_fraction": "n_low_spatial_fraction",
                    "difference_high_spatial_fraction": "n_high_spatial_fraction",
                    "difference_one_object": "n_one_object", "ig_lower_one_object": "n_one_object",
                    "difference_several_objects": "n_several_objects", "ig_lower_several_objects": "n_several_objects"}
        for key in ("ig_lower", "mean_difference", *count_of):
            values = [(f[key], f[count_of.get(key, "n_pairs")]) for f in faithful if f[key] is not None]
            out[f"faithfulness_{key}"] = float(sum(v * w for v, w in values) / sum(w for _, w in values))
        out["faithfulness_n_pairs"] = int(sum(f["n_pairs"] for f in faithful))
    return out


if __name__ == "__main__":
    main()
