"""The whole validation run: one study, one sample of pairs, every experiment, and what summary.json keeps.

The summary is rewritten after each experiment, marked incomplete until the last, so a failure (a generator
that breaks, a cancelled run) keeps what finished and leaves the rest of summary.json as it was. Only plain
JSON goes there (numpy scalars to Python, NaN to None); the example strips go beside it as PNGs.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from napari_mine.validate.experiments import insertion, removal, sufficiency
from napari_mine.validate.pairs import CATEGORY_ROIS, IMAGES_PER_VOXEL, N_VOXELS, TOP_K, sample_pairs
from napari_mine.validate.stats import N_BOOT, delta_ratio
from napari_mine.validate.study import open_study


def run_validation(results, generator, truth=None, *, backbone=None, space=None, images=None,
                   n_voxels: int = N_VOXELS, images_per_voxel: int = IMAGES_PER_VOXEL, top_k: int = TOP_K,
                   min_nc_r: float = 0.5, rois=CATEGORY_ROIS, n_boot: int = N_BOOT, n_examples: int = 4,
                   seed: int = 0, on_progress: Callable[[int, int], None] | None = None) -> dict:
    """Run every experiment on one seeded sample of pairs and write ``summary.json["validation"]``.

    The summary is rewritten after each experiment with ``"complete": False`` until the last, so a failure
    keeps the experiments already done (and leaves the rest of summary.json as it was); the example strips
    go to ``<results>/figures/validation_*.png``.

    Parameters
    ----------
    results, generator, truth, images, backbone
        See :func:`~napari_mine.validate.open_study` (opened once, shared by every experiment).
    space : vocabulary.ConceptSpace, optional
    n_voxels, images_per_voxel, top_k, min_nc_r, rois
        See :func:`~napari_mine.validate.sample_pairs`.
    n_boot : int
    n_examples : int
        Pairs shown in each strip.
    seed : int
    on_progress : callable, optional
        ``on_progress(done, total)`` after each experiment.

    Returns
    -------
    dict: the "validation" summary (also in summary.json).
    """
    from napari_mine import report_validation
    from napari_mine.store import ResultsStore
    from napari_mine.validate.descriptions import checked_space

    study = open_study(results, generator, truth, images, backbone)
    space = checked_space(study, space)
    settings = {"n_voxels": n_voxels, "images_per_voxel": images_per_voxel, "top_k": top_k, "min_nc_r": min_nc_r,
                "rois": list(rois), "n_boot": n_boot, "seed": seed, "generator": type(generator).__name__,
                "vocabulary": space.vocabulary.name, "true_brain": truth is not None}
    pairs = sample_pairs(results, n_voxels=n_voxels, images_per_voxel=images_per_voxel, top_k=top_k,
                         min_nc_r=min_nc_r, rois=rois, seed=seed)
    common = {"pairs": pairs, "n_boot": n_boot, "seed": seed}
    steps = [
        ("sufficiency", lambda: sufficiency(study, space=space, **common)),
        ("removal", lambda: removal(study, **common)),
        ("insertion", lambda: insertion(study, space=space, **common)),
        ("profile_insertion", lambda: insertion(study, space=space, concept_source="profile", **common)),
    ]
    writer = ResultsStore(results.root)
    summary = {"settings": settings, "n_pairs": int(len(pairs["row"])), "complete": False}
    done_results = {}
    for done, (name, experiment) in enumerate(steps, start=1):
        done_results[name] = experiment()
        summary.update(summary_entries(name, done_results, n_boot, seed))
        if done == len(steps):
            summary["figures"] = report_validation.save_strips(results.root / "figures", done_results, n_examples)
            summary["complete"] = True
        writer.update_summary("validation", plain(summary))
        if on_progress is not None:
            on_progress(done, len(steps))
    return plain(summary)


def summary_entries(name: str, results: dict, n_boot: int, seed: int) -> dict:
    """The summary keys an experiment adds (``results``: the experiments done so far, by name)."""
    result = results[name]
    if name == "sufficiency":
        return {"sufficiency": {**result["summary"], "n_pairs": len(result["row"]),
                                "n_skipped": result["n_skipped"]}}
    if name in ("removal", "insertion"):
        entry = {kind: result["summary"][kind] for kind in result["summary"]}
        extra = {key: result[key] for key in ("n_skipped", "skip_reason", "removed_driving_object") if key in result}
        return {f"{name}_sign_accuracy": {**entry, **extra}}
    ratio = {kind: delta_ratio(result, results["insertion"], kind, n_boot, seed)
             for kind in result["summary"]}
    return {"profile_insertion": {kind: result["summary"][kind] for kind in result["summary"]},
            "profile_vs_image_insertion_delta_ratio": ratio}


def plain(value):
    """JSON-ready copy: numpy scalars and arrays to Python, NaN to None."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [plain(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value
