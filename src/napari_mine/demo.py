"""The embedded demo: synthetic world → features → encoder fit → report, offline, on the CPU.

It runs the same loaders and steps a study on NSD runs; only the data source is synthetic, so every step
can be scored against the truth (DESIGN.md §6).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from napari_mine.data.nsd import CATEGORY_ROIS

DEMO_IMAGES = 2500
DECOMPOSITION_CHECK_IMAGES = 32
EXAMPLE_ROIS = ("FFA-1", "OFA", "PPA", "OPA", "EBA", "FBA-1", "VWFA-1", "OWFA")


def decomposition_error(backbone, images: np.ndarray) -> float:
    """Max relative error between the summed decomposition and `encode_image` on `images`."""
    import torch

    from napari_mine.decompose import decompose_images

    pixels = backbone.preprocess(images)
    parts = decompose_images(backbone.model, pixels)
    with torch.no_grad():
        reference = backbone.model.encode_image(pixels).float().cpu().numpy()
    summed = parts.tokens.sum(axis=1) + parts.rest
    errors = np.linalg.norm(summed - reference, axis=1) / np.linalg.norm(reference, axis=1)
    return float(errors.max())


def run_demo(out: str | Path, *, seed: int = 0, n_images: int | None = None, space: str = "volume",
             log: Callable[[str], None] = lambda message: None) -> Path:
    """Run the whole demo into `out`; returns the path of `summary.json`.

    ``space="fsaverage"`` runs every step on the vertices of the same world's subject on the cortex (its
    fsaverage betas, read by :func:`~napari_mine.data.load_nsd_surface`); summary.json has the same keys.
    """
    from napari_mine.data import load_nsd, load_nsd_surface
    from napari_mine.models.backbone import load_backbone
    from napari_mine.pipeline import compute_features, fit_encoder_step, report_step, validate_step
    from napari_mine.report_validation import validation_html
    from napari_mine.store import ResultsStore
    from napari_mine.synthetic.write_nsd import write_world

    out = Path(out)
    timings = {}
    world = out / "world"
    start = time.perf_counter()
    if not world.exists():
        n_images = n_images or DEMO_IMAGES
        log(f"writing a synthetic world ({n_images} images, seed {seed}, {space}) to {world}")
        on_cortex = {"space": space} if space != "volume" else {}  # the volume world is written as it always was
        write_world(world, seed=seed, n_images=n_images, n_shared=max(10, n_images // 10), **on_cortex)
    timings["world_s"] = time.perf_counter() - start

    start = time.perf_counter()
    dataset = load_nsd_surface(world, subject=1) if space == "fsaverage" else load_nsd(world, subject=1)
    backbone = load_backbone("mine-small")
    store = ResultsStore.create(out, model=backbone.record, dataset=dataset.source)
    timings["load_s"] = time.perf_counter() - start

    start = time.perf_counter()
    if not store.has("features"):
        log(f"decomposing {len(dataset.images)} images with {backbone.name}")
        compute_features(dataset, backbone, store, on_progress=_every_tenth(log, "features"))
    timings["features_s"] = time.perf_counter() - start

    start = time.perf_counter()
    log("fitting the voxelwise encoder")
    fit_encoder_step(dataset, store)
    timings["fit_s"] = time.perf_counter() - start

    check = dataset.images[np.arange(min(DECOMPOSITION_CHECK_IMAGES, len(dataset.images)))]
    store.update_summary("decomposition_max_rel_error", decomposition_error(backbone, check))

    start = time.perf_counter()
    log("profiles, ROI analysis and ground-truth scores")
    figures = interpret(store, dataset, backbone, world, seed=seed)
    timings["interpretation_s"] = time.perf_counter() - start

    start = time.perf_counter()
    log("causal validation: generation and counterfactual edits, measured with the true brain too")
    validation = validate_step(store.results(), backbone=backbone, seed=seed)
    timings["validation_s"] = time.perf_counter() - start

    summary = store.update_summary("timings", {k: round(v, 2) for k, v in timings.items()})
    log("writing the report")
    title = "napari-mine demo: synthetic world" + (" on fsaverage" if space == "fsaverage" else "")
    report_step(store.results(), summary, title=title, extra_figures=figures,
                extra_html=validation_html(validation, store.root))
    return store.root / "summary.json"


def interpret(store, dataset, backbone, world: Path, *, seed: int = 0) -> list[tuple[str, Path]]:
    """Profiles, ROI profiles and clusters, scored against the world's truth; returns the report's figures."""
    from napari_mine.describe import labels_volume, top_concepts
    from napari_mine.pipeline import profile_step
    from napari_mine.report import (attribution_overlays_figure, best_voxel_per_roi, cluster_map_figure,
                                    profile_charts_figure)
    from napari_mine.synthetic.scoring import score_interpretation
    from napari_mine.synthetic.write_nsd import load_truth
    from napari_mine.vocabulary import concept_space, synthetic_vocabulary

    space = concept_space(synthetic_vocabulary(), backbone)
    profiles, by_label = profile_step(store, space, rois=CATEGORY_ROIS, seed=seed)
    results = store.results()
    figures_dir = store.root / "figures"
    figures_dir.mkdir(exist_ok=True)

    roi_charts, cluster_volume = {}, None
    for roi in by_label:
        roi_charts[roi.label] = top_concepts(roi.profile, profiles.concepts, 6)
        volume = labels_volume(roi.clustering.labels, results.space.mask, roi.targets)
        cluster_volume = volume if cluster_volume is None else np.where(volume > 0, volume, cluster_volume)

    roi_of_voxel = results.space.roi_of_targets()
    examples = best_voxel_per_roi(results, roi_of_voxel, [name for name in EXAMPLE_ROIS if name in roi_charts])
    voxel_charts = {f"{roi} voxel {voxel}": profiles.ranked(int(np.flatnonzero(profiles.voxels == voxel)[0]), 6)
                    for roi, voxel in examples.items()}

    truth = load_truth(world, int(dataset.source.get("subject", 1)))
    for key, value in score_interpretation(results, dataset, truth, backbone, seed=seed).items():
        store.update_summary(key, value)
    return [
        ("Exact attribution on each ROI's top images",
         attribution_overlays_figure(results, results.images, examples, figures_dir / "attribution_top_images.png")),
        ("Per-ROI profiles (MINE)", profile_charts_figure(roi_charts, figures_dir / "roi_profiles.png",
                                                          "ROI profiles: mean of voxel profiles")),
        ("Per-voxel profiles (each ROI's best-predicted voxel)",
         profile_charts_figure(voxel_charts, figures_dir / "voxel_profiles.png", "voxel profiles")),
        ("Within-ROI clusters", cluster_map_figure(results, cluster_volume, figures_dir / "clusters.png")),
    ]


def _every_tenth(log: Callable[[str], None], label: str):
    shown = {"decile": -1}

    def report(done: int, total: int) -> None:
        decile = 10 * done // max(total, 1)
        if decile != shown["decile"]:
            shown["decile"] = decile
            log(f"{label}: {done}/{total}")

    return report
