"""The embedded study demo: a synthetic study of several subjects → shared features → fits → profiles →
validation → cross-subject comparison → reports, offline, on the CPU (DESIGN.md §6, §10).

Each subject runs the one-subject steps (profiles, validation against its true brain, its report); what only
a study has — stimuli decomposed once, fits in parallel, ROI profiles compared between people on the images
they share, each subject's ROI categories recovered — is scored against the world's truth in the study's
``summary.json`` (section ``subjects``). The one-subject demo's attribution and description scores are not
repeated per subject: ``napari-mine evaluate`` measures them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from napari_mine.demo import DEMO_IMAGES

STUDY_DEMO_IMAGES = 1200  # per subject: n_subjects × this, less the shared images, are decomposed


def run_study_demo(out: str | Path, *, n_subjects: int = 3, seed: int = 0, n_images: int | None = None,
                   space: str = "volume", n_voxels: int | None = None, client=None,
                   log: Callable[[str], None] = lambda message: None) -> Path:
    """Run the study demo into ``out`` (the study folder, its world in ``out/world``); returns its summary.json.

    ``n_voxels``: voxels of each subject's validation (default the validation's); ``client``: a Dask client to
    fit the subjects in parallel on (default: one after another).
    """
    from napari_mine.across_subjects import compare_subjects
    from napari_mine.data import load_nsd, load_nsd_surface
    from napari_mine.models.backbone import load_backbone
    from napari_mine.data.nsd import CATEGORY_ROIS
    from napari_mine.pipeline import profile_step, report_step, validate_step
    from napari_mine.report_validation import validation_html
    from napari_mine.report_study import write_study_report
    from napari_mine.store import ResultsStore, update_summary
    from napari_mine.study import Study
    from napari_mine.study_steps import compute_study_features, fit_study
    from napari_mine.synthetic.write_nsd import write_world
    from napari_mine.vocabulary import concept_space, synthetic_vocabulary

    out = Path(out)
    world, timings = out / "world", {}
    start = time.perf_counter()
    if not world.exists():
        n_images = n_images or min(DEMO_IMAGES, STUDY_DEMO_IMAGES)
        log(f"writing a synthetic study of {n_subjects} subjects ({n_images} images each, seed {seed}) to {world}")
        write_world(world, seed=seed, n_images=n_images, n_shared=max(10, n_images // 10), n_subjects=n_subjects,
                    space=space)
    timings["world_s"] = time.perf_counter() - start

    loader = load_nsd_surface if space == "fsaverage" else load_nsd
    backbone = load_backbone("mine-small")
    start = time.perf_counter()
    counts = compute_study_features(lambda subject: loader(world, subject=subject), range(1, n_subjects + 1),
                                    backbone, out, space=space)
    timings["features_s"] = time.perf_counter() - start
    log(f"{counts['images_decomposed']} unique images decomposed for {counts['images_summed_over_subjects']} "
        "subject images")

    start = time.perf_counter()
    log(f"fitting {n_subjects} encoders" + (" in parallel" if client is not None else ""))
    fit_study(out, client=client)
    timings["fit_s"] = time.perf_counter() - start

    study = Study.open(out)
    space_of_concepts = concept_space(synthetic_vocabulary(), backbone)
    start = time.perf_counter()
    for subject, results in study.items():
        log(f"subj{subject:02d}: profiles and validation")
        store = ResultsStore.open(results.root)
        profile_step(store, space_of_concepts, rois=CATEGORY_ROIS, seed=seed)
        validation = validate_step(store.results(), backbone=backbone, seed=seed, n_voxels=n_voxels)
        report_step(store.results(), json.loads((store.root / "summary.json").read_text()),
                    title=f"napari-mine study demo: subj{subject:02d}",
                    extra_html=validation_html(validation, store.root))
    timings["subjects_s"] = time.perf_counter() - start

    start = time.perf_counter()
    log("comparing the subjects on their shared images")
    compare_subjects(out, space_of_concepts, seed=seed)
    timings["comparison_s"] = time.perf_counter() - start
    update_summary(out, "timings", {k: round(v, 2) for k, v in timings.items()})
    write_study_report(out, title=f"napari-mine study demo: {n_subjects} synthetic subjects")
    return out / "summary.json"
