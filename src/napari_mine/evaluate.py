"""Every ground-truth score across synthetic worlds (DESIGN.md §11): the demo pipeline on several world seeds.

A score of one seed says little: the figures a reader should trust are the mean, the spread and the worst
world, on seeds nobody tuned on. :data:`SEED_SPLIT` names the roles once: the demo's seed, the seeds any
tuning may look at, and the seeds only reported on. :func:`evaluate` runs :func:`demo.run_demo` per seed
(skipping seeds whose summary is complete, so an interrupted evaluation resumes), on a Dask local cluster
when there are cores for more than one run at a time; :func:`aggregate` turns the per-seed ``summary.json``
files into ``evaluation.json`` (mean, standard deviation, minimum, maximum and per-seed values of every
score, the aims checked on the worst report-only seed) and ``evaluation.md``.
"""

from __future__ import annotations

import json
import math
import operator
import os
from pathlib import Path
from typing import Callable

import numpy as np

from napari_mine.errors import MineInputError
from napari_mine.store import write_json_atomic

SEED_SPLIT = {
    "demo": (0,),  # the embedded demo's world; its figures are the README's "one world" column
    "tuning": (1, 2, 3),  # model, method and threshold choices may look at these
    "report": (101, 102, 103, 104, 105),  # never used for a choice: the aims are judged here
}
COMPARISONS = {"<": operator.lt, ">": operator.gt, ">=": operator.ge}
CORES_PER_RUN = 2  # one demo keeps two cores busy (torch and BLAS threads)
BODY_ROIS = ("EBA", "FBA-1", "FBA-2", "mTL-bodies")
METHODS = ("exact", "exact_contrast", "integrated_gradients", "occlusion", "gradient_x_input")
# (score, comparison, threshold): judged on the worst report-only seed (DESIGN.md §11)
AIMS = (
    ("attribution/pointing_game", ">=", 0.9),
    ("description/top1_accuracy", ">=", 0.85),
    ("profile/top1_accuracy", ">=", 0.9),
    ("profile/roi_category_recovered", ">=", 1.0),
    ("clusters/lowest_ari", ">=", 0.5),
    ("encoder/lowest_body_roi", ">=", 0.8),
    ("validation/true/removal_sign_accuracy", ">=", 0.9),
    ("validation/true/insertion_sign_accuracy", ">=", 0.9),
    ("validation/true/profile_vs_image_delta_ratio", ">", 1.0),
    ("validation/true/sufficiency_p_vs_random", "<", 0.01),
    ("validation/true/sufficiency_p_vs_low_attribution", "<", 0.01),
)


def seed_dir(out: Path, seed: int) -> Path:
    return Path(out) / f"seed_{int(seed)}"


def is_complete(summary_path: Path) -> bool:
    """A seed's run is complete when its summary has the validation marked complete."""
    try:
        summary = json.loads(Path(summary_path).read_text())
    except (OSError, ValueError):
        return False
    return bool(summary.get("validation", {}).get("complete"))


def run_seed(out: str, seed: int, n_images: int | None, log: Callable[[str], None] | None = None) -> str:
    """One world's demo (a Dask task or a plain call); returns its summary.json path."""
    from napari_mine.demo import run_demo

    path = seed_dir(Path(out), seed) / "summary.json"
    if not is_complete(path):
        run_demo(seed_dir(Path(out), seed), seed=seed, n_images=n_images,
                 log=(lambda message: log(f"seed {seed}: {message}")) if log else (lambda message: None))
    return str(path)


def evaluate(out: str | os.PathLike, seeds, *, n_images: int | None = None, workers: int | None = None,
             log: Callable[[str], None] = lambda message: None) -> Path:
    """Run the demo pipeline on each world seed, then write ``evaluation.json`` and ``evaluation.md``.

    ``workers`` runs at once (default: one per ``CORES_PER_RUN`` cores); more than one run at a time uses a
    Dask local cluster of processes. Returns the path of ``evaluation.json``.
    """
    seeds = sorted({int(seed) for seed in seeds})
    if not seeds:
        raise MineInputError("give at least one world seed, e.g. --seeds 101 102 103 104 105.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    workers = workers or max(1, (os.cpu_count() or 1) // CORES_PER_RUN)
    todo = [seed for seed in seeds if not is_complete(seed_dir(out, seed) / "summary.json")]
    log(f"{len(seeds) - len(todo)} of {len(seeds)} seeds already complete; running {todo or 'none'} "
        f"({min(workers, max(len(todo), 1))} at a time)")
    if len(todo) > 1 and workers > 1:
        from napari_mine.errors import require_extra

        require_extra("dask")
        from distributed import Client, LocalCluster, as_completed

        threads = max(1, (os.cpu_count() or 1) // workers)
        with LocalCluster(n_workers=min(workers, len(todo)), threads_per_worker=threads, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            futures = [client.submit(run_seed, str(out), seed, n_images, pure=False) for seed in todo]
            for done in as_completed(futures):
                log(f"finished {done.result()}")
    else:
        for seed in todo:
            run_seed(str(out), seed, n_images, log)
    summaries = {seed: json.loads((seed_dir(out, seed) / "summary.json").read_text()) for seed in seeds}
    evaluation = aggregate(summaries)
    write_json_atomic(out / "evaluation.json", evaluation)
    (out / "evaluation.md").write_text(evaluation_markdown(evaluation))
    return out / "evaluation.json"


# ------------------------------------------------------------------------------------------------ scores


def seed_scores(summary: dict) -> dict[str, float]:
    """The ground-truth scores of one seed's summary.json, flattened to ``{"section/name": value}``."""
    scores: dict[str, float] = {}
    by_roi = summary["encoder"]["median_nc_r_by_roi"]
    profile = summary["profile"]
    for roi in profile["roi_category"]:
        if by_roi.get(roi) is not None:
            scores[f"encoder/{roi}"] = by_roi[roi]
    category = [scores[f"encoder/{roi}"] for roi in profile["roi_category"] if f"encoder/{roi}" in scores]
    if category:
        scores["encoder/lowest_category_roi"] = min(category)
        scores["encoder/category_rois_at_0.8"] = float(np.mean(np.asarray(category) >= 0.8))
    bodies = [by_roi[roi] for roi in BODY_ROIS if by_roi.get(roi) is not None]
    if bodies:
        scores["encoder/lowest_body_roi"] = min(bodies)
    scores["decomposition/max_rel_error"] = summary["decomposition_max_rel_error"]
    attribution = summary["attribution"]
    scores["attribution/pointing_game"] = attribution["pointing_game"]
    for method, values in attribution["faithfulness"].items():
        for kind in ("deletion_auc", "insertion_auc"):
            scores[f"faithfulness/{method}/{kind}"] = values[kind]
    scores["description/top1_accuracy"] = summary["description"]["top1_accuracy"]
    scores["profile/top1_accuracy"] = profile["top1_accuracy"]
    scores["profile/baseline_top1_accuracy"] = profile["baseline_top1_accuracy"]
    correct = profile["roi_category_correct"]
    scores["profile/roi_category_recovered"] = sum(map(bool, correct.values())) / max(len(correct), 1)
    ari = summary["clusters"]["ari"]
    scores["clusters/mean_ari"] = summary["clusters"]["mean_ari"]
    scores["clusters/lowest_ari"] = min(ari.values())
    scores.update(validation_scores(summary["validation"]))
    return scores


def validation_scores(validation: dict) -> dict[str, float]:
    """Every validation figure, on the true brain and on the encoder (``validation/<brain>/<figure>``)."""
    scores = {}
    for brain in ("true", "predicted"):
        prefix = f"validation/{brain}"
        for name in ("removal_sign_accuracy", "insertion_sign_accuracy"):
            if brain in validation[name]:
                scores[f"{prefix}/{name}"] = validation[name][brain]["value"]
                scores[f"{prefix}/{name.replace('sign_accuracy', 'mean_delta')}"] = validation[name][brain]["mean_delta"]
        ratio = validation["profile_vs_image_insertion_delta_ratio"].get(brain)
        if ratio is not None:
            scores[f"{prefix}/profile_vs_image_delta_ratio"] = ratio["value"]
        sufficiency = validation["sufficiency"].get(brain)
        if sufficiency is None:
            continue
        for condition, figures in sufficiency.items():
            for figure in ("correlation", "correlation_within_voxel", "mae"):
                scores[f"{prefix}/sufficiency_{condition}_{figure}"] = figures[figure]
        for control in ("random", "low_attribution"):
            scores[f"{prefix}/sufficiency_p_vs_{control}"] = max(sufficiency[control]["p_correlation"],
                                                                 sufficiency[control]["p_mae"])
    return scores


def aggregate(summaries: dict[int, dict]) -> dict:
    """Mean, standard deviation (ddof 1), minimum, maximum and per-seed values of every score, per seed role.

    The aims are judged on the worst report-only seed (the minimum, or the maximum for "<" aims).
    """
    per_seed = {seed: seed_scores(summary) for seed, summary in summaries.items()}
    names = sorted({name for scores in per_seed.values() for name in scores})
    groups = {"all": sorted(per_seed)}
    for role, seeds in SEED_SPLIT.items():
        present = [seed for seed in seeds if seed in per_seed]
        if present:
            groups[role] = present
    table = {role: {name: _stats([per_seed[seed].get(name) for seed in seeds], seeds) for name in names}
             for role, seeds in groups.items()}
    judged = "report" if "report" in groups else "all"
    aims = []
    for name, comparison, threshold in AIMS:
        stats = table[judged].get(name)
        if stats is None or stats["n"] == 0:
            continue
        worst = stats["max"] if comparison == "<" else stats["min"]
        met = COMPARISONS[comparison](worst, threshold)
        worst_seed = next(seed for seed, value in stats["per_seed"].items() if value == worst)
        aims.append({"score": name, "aim": f"{comparison} {threshold}", "worst": worst, "worst_seed": int(worst_seed),
                     "mean": stats["mean"], "met": bool(met)})
    faithfulness = pooled_faithfulness({seed: summaries[seed] for seed in groups[judged]})
    lowest_rois = {str(seed): min(summary["clusters"]["ari"], key=summary["clusters"]["ari"].get)
                   for seed, summary in summaries.items()}
    return {"seed_split": {role: list(seeds) for role, seeds in SEED_SPLIT.items()}, "seeds": sorted(per_seed),
            "judged_on": judged, "aims": aims, "scores": table, "lowest_ari_roi": lowest_rois,
            "faithfulness_pooled": faithfulness}


def pooled_faithfulness(summaries: dict[int, dict], n_boot: int = 2000, seed: int = 0) -> dict:
    """Deletion and insertion AUC per method pooled over the pairs of several worlds, with 95 % CIs that
    resample worlds and then pairs within them; and the exact map against integrated gradients pair by pair."""
    per_seed = {s: summary["attribution"]["faithfulness_pairs"] for s, summary in summaries.items()
                if "faithfulness_pairs" in summary["attribution"]}
    if not per_seed:
        return {}
    rng = np.random.default_rng([seed, 41])
    worlds = list(per_seed)
    picks = [rng.choice(worlds, len(worlds)) for _ in range(n_boot)]  # the worlds of each resample, drawn first

    def boot(values_of) -> list[float]:
        arrays = {world: values_of(world) for world in worlds}
        means = [np.concatenate([rng.choice(arrays[world], len(arrays[world])) for world in chosen]).mean()
                 for chosen in picks]
        return [float(v) for v in np.percentile(means, [2.5, 97.5])]

    methods = [m for m in next(iter(per_seed.values())) if m not in ("row", "voxel", "spatial_fraction")]
    pooled = {}
    for method in methods:
        pooled[method] = {}
        for key in ("deletion_auc", "insertion_auc"):
            def values_of(world, method=method, key=key):
                return np.asarray(per_seed[world][method][key])
            pooled[method][key] = float(np.concatenate([values_of(w) for w in worlds]).mean())
            pooled[method][f"{key}_ci"] = boot(values_of)
    if "integrated_gradients" in methods:
        def difference(world):
            scores = per_seed[world]
            return np.asarray(scores["exact"]["deletion_auc"]) - np.asarray(scores["integrated_gradients"]["deletion_auc"])
        differences = np.concatenate([difference(w) for w in worlds])
        fractions = np.concatenate([per_seed[w]["spatial_fraction"] for w in worlds])
        beats = differences > 0
        pooled["exact_minus_integrated_gradients_deletion"] = {
            "mean": float(differences.mean()), "ci": boot(difference), "n_pairs": int(len(differences)),
            "ig_lower_fraction": float(beats.mean()),
            "spatial_fraction_where_ig_lower": float(fractions[beats].mean()) if beats.any() else None,
            "spatial_fraction_where_exact_lower": float(fractions[~beats].mean()) if (~beats).any() else None,
        }
    return pooled


def _stats(values, seeds) -> dict:
    pairs = [(seed, float(value)) for seed, value in zip(seeds, values) if value is not None and math.isfinite(value)]
    array = np.array([value for _, value in pairs])
    return {"n": len(pairs),
            "mean": float(array.mean()) if len(array) else None,
            "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0 if len(array) else None,
            "min": float(array.min()) if len(array) else None,
            "max": float(array.max()) if len(array) else None,
            "per_seed": {str(seed): value for seed, value in pairs}}


# ------------------------------------------------------------------------------------------------ output


def evaluation_markdown(evaluation: dict) -> str:
    """``evaluation.md``: the aims on the worst report-only seed, then every score by seed role."""
    split = evaluation["seed_split"]
    lines = ["# Scores across synthetic worlds", "",
             f"Seeds: demo {split['demo']}, tuning {split['tuning']}, report-only {split['report']}; "
             f"evaluated: {evaluation['seeds']}. Aims are judged on the worst "
             f"{'report-only' if evaluation['judged_on'] == 'report' else ''} seed.", "",
             "| score | aim | worst (seed) | mean | met |", "| --- | --- | --- | --- | --- |"]
    for aim in evaluation["aims"]:
        lines.append(f"| {aim['score']} | {aim['aim']} | {_fmt(aim['worst'])} ({aim['worst_seed']}) | "
                     f"{_fmt(aim['mean'])} | {'yes' if aim['met'] else '**no**'} |")
    for role, table in evaluation["scores"].items():
        lines += ["", f"## {role} seeds", "", "| score | mean | std | min | max | per seed |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for name, stats in table.items():
            if stats["n"]:
                per_seed = ", ".join(f"{seed}: {_fmt(value)}" for seed, value in stats["per_seed"].items())
                lines.append(f"| {name} | {_fmt(stats['mean'])} | {_fmt(stats['std'])} | {_fmt(stats['min'])} | "
                             f"{_fmt(stats['max'])} | {per_seed} |")
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    if value is None:
        return "–"
    return f"{value:.2e}" if value != 0 and abs(value) < 1e-3 else f"{value:.3f}"
