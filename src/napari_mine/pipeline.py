"""The MINE steps that fill a results folder: features, fit, profile, validate, report.

Each step is one function; the CLI, the demo and the napari docks call the same ones. A step writes through
:class:`~napari_mine.store.ResultsStore` (atomically) and reads through
:class:`~napari_mine.results.Results`. Long steps report progress through `on_progress(done, total)` and
stop at the next batch when `should_stop()` returns True, leaving the folder as it was
(see `ResultsStore.write_step`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from napari_mine.data.nsd import CATEGORY_ROIS
from napari_mine.errors import Cancelled, MineInputError
from napari_mine.store import ResultsStore, write_arrays

Progress = Callable[[int, int], None] | None
StopFlag = Callable[[], bool] | None


def save_brain(dataset, store: ResultsStore) -> None:
    """Write the volumes the viewer draws (mask, affine, anatomy, ROIs) once per store."""
    if store.has("brain"):
        return
    rois = {f"roi/{roi.name}": np.asarray(roi.volume, dtype=np.int16) for roi in dataset.rois.values()}
    labels = {roi.name: {str(k): v for k, v in roi.labels.items()} for roi in dataset.rois.values()}
    with store.write_step("brain", {"roi_labels": labels}) as group:
        arrays = {"mask": np.asarray(dataset.mask, dtype=bool), "affine": np.asarray(dataset.affine, float)}
        if dataset.anatomy is not None:
            arrays["anatomy"] = np.asarray(dataset.anatomy, dtype=np.float32)
        if dataset.ncsnr is not None:
            arrays["ncsnr"] = np.asarray(dataset.ncsnr, dtype=np.float32)
        write_arrays(group, {**arrays, **rois})


def compute_features(
    dataset,
    backbone,
    store: ResultsStore,
    *,
    batch_size: int = 64,
    client=None,
    checkpoint: str | None = None,
    on_progress: Progress = None,
    should_stop: StopFlag = None,
) -> int:
    """Decompose every image of `dataset` with `backbone` into the store's token contribution cache.

    With a Dask `client` the images are decomposed on its workers, which load the backbone themselves (from
    `checkpoint` when it came from a weights file) and write into the store: see `napari_mine.distributed`.
    Returns the number of images. Rows of `features.zarr` follow `dataset.images` order.
    """
    from napari_mine.decompose import decompose_to_store

    store.check_model(backbone.record["id"])
    save_brain(dataset, store)
    n_images = len(dataset.images)
    if n_images == 0:
        raise MineInputError("the dataset has no images; check the stimulus file or the images folder.")

    def batches():
        for start in range(0, n_images, batch_size):
            index = np.arange(start, min(start + batch_size, n_images))
            yield backbone.preprocess(dataset.images[index])

    settings = {"batch_size": batch_size, "n_images": n_images}
    with store.write_step("features", settings) as group:
        if client is None:
            decompose_to_store(backbone.model, batches(), group, n_images=n_images, on_progress=on_progress,
                               should_stop=should_stop)
        else:
            from napari_mine.distributed import decompose_on_cluster

            decompose_on_cluster(client, backbone, group, dataset.images, checkpoint=checkpoint,
                                 batch_size=batch_size, on_progress=on_progress, should_stop=should_stop)
        if group.attrs.get("complete") is False:
            raise Cancelled("feature extraction was cancelled; the store is unchanged.")
        write_arrays(group, {"image_ids": np.asarray(dataset.images.ids)})
    return n_images


def fit_encoder_step(dataset, store: ResultsStore, *, alphas=None, on_progress: Progress = None,
                     should_stop: StopFlag = None) -> dict:
    """Fit the voxelwise ridge encoder on train images and score it on held-out images.

    Responses are averaged over repeats per image (NSD practice); the noise ceiling uses the test images'
    repeat counts. Progress is reported in voxels; a stop request ends the fit at its next fold or voxel
    batch with the store as it was. Returns per-ROI medians of the noise-ceiling-normalised r.
    """
    from napari_mine import encoding

    store.require("features", "run `napari-mine features` first.")
    save_brain(dataset, store)
    results = store.results()
    features = results.features()
    if not np.array_equal(results.image_ids, np.asarray(dataset.images.ids)):
        raise MineInputError(
            f"the features in {store.root} were computed for other images than this dataset's; recompute them "
            "with `napari-mine features` for this dataset."
        )
    image_ids, responses, n_repeats = dataset.image_responses()  # ids are rows of dataset.images
    train_ids, test_ids = dataset.split()
    is_test = np.isin(image_ids, test_ids)
    if is_test.sum() < 10 or (~is_test).sum() < 10:
        raise MineInputError("need at least 10 train and 10 test images with responses; use a larger dataset.")

    kwargs = {} if alphas is None else {"alphas": np.asarray(alphas, dtype=float)}
    encoder = encoding.fit_encoder(features[image_ids[~is_test]], responses[~is_test], on_progress=on_progress,
                                   should_stop=should_stop, **kwargs)
    scores = encoding.evaluate(
        encoder, features[image_ids[is_test]], responses[is_test], dataset.ncsnr, n_repeats[is_test]
    )
    effective_weights, effective_bias = encoder.effective_weights()
    settings = {"n_train": int((~is_test).sum()), "n_test": int(is_test.sum())}
    with store.write_step("encoder", settings) as group:
        write_arrays(group, encoder.to_arrays())
        write_arrays(
            group,
            {
                "effective_weights": effective_weights.astype(np.float32),
                "effective_bias": effective_bias.astype(np.float32),
                "test_image_ids": image_ids[is_test],
                **{f"accuracy/{k}": np.asarray(v, dtype=np.float32) for k, v in scores.items()},
            },
        )
    summary = summarize_accuracy(dataset.roi_of_voxels(), scores)
    store.update_summary("encoder", summary)
    return summary


def summarize_accuracy(roi_names: np.ndarray, scores: dict) -> dict:
    """Median r and noise-ceiling-normalised r for each labelled ROI (and all voxels)."""
    by_roi_nc, by_roi_r = {}, {}
    for name in sorted({n for n in roi_names if n}):
        in_roi = roi_names == name
        by_roi_nc[name] = _nanmedian(scores["normalized_r"][in_roi])
        by_roi_r[name] = _nanmedian(scores["r"][in_roi])
    return {
        "median_nc_r_by_roi": by_roi_nc,
        "median_r_by_roi": by_roi_r,
        "median_nc_r_all": _nanmedian(scores["normalized_r"]),
        "n_voxels": int(len(scores["r"])),
    }


@dataclass
class RoiProfile:
    """One ROI label's mean profile and the clusters of its targets' profiles (written as a labels volume)."""

    roi: str
    label: str
    profile: np.ndarray  # (K,) mean of its targets' profile scores
    clustering: object  # describe.Clustering
    targets: np.ndarray  # the targets clustered
    path: Path  # the clusters as a NIfTI labels volume


def profile_step(store: ResultsStore, space, *, top_k: int | None = None, rois=None,
                 seed: int = 0) -> tuple[object, list[RoiProfile]]:
    """Profile every target in ``space``'s vocabulary, then each ROI label's mean profile and sub-populations.

    Writes ``profiles.zarr`` (with the vocabulary and its digest in the manifest) and one clusters volume per
    ROI label under ``clusters/``. ``rois`` defaults to the category ROI volumes these results have (any ROI
    volume when they have none of those).
    """
    from napari_mine import describe

    results = store.results()
    results.require_fit()
    top_k = top_k or describe.DEFAULT_TOP_K
    available = results.space.present_labels()
    if rois is None:
        rois = [roi for roi in CATEGORY_ROIS if roi in available] or sorted(available)
    missing = [roi for roi in rois if roi not in available]
    if missing:
        raise MineInputError(f"{store.root} has no labelled ROI volume {', '.join(map(repr, missing))}; choose from "
                             f"{sorted(available)}.")
    profiles = results.profiles(space, top_k=top_k, use_saved=False)
    record = {"vocabulary": space.vocabulary.name, "vocabulary_digest": space.vocabulary.digest, "top_k": top_k}
    with store.write_step("profiles", record) as group:
        write_arrays(group, {"scores": profiles.scores, "baseline": profiles.baseline,
                             "top_images": profiles.top_images, "region_mass": profiles.region_mass,
                             "voxels": profiles.voxels}, chunk_rows=describe.STORE_VOXEL_BLOCK)
        group.attrs["concepts"] = list(profiles.concepts)
    by_label = []
    for roi in rois:
        for name, profile in results.roi_profiles(profiles, roi).items():
            clustering, targets = results.roi_clusters(profiles, roi, name, seed=seed)
            path = store.root / "clusters" / f"{name}.nii.gz"
            describe.save_labels_nifti(describe.labels_volume(clustering.labels, results.space.mask, targets),
                                       results.space.affine, path)
            by_label.append(RoiProfile(roi, name, profile, clustering, targets, path))
    return profiles, by_label


def validate_step(results, *, generator=None, backbone=None, seed: int = 0, n_voxels: int | None = None,
                  on_progress: Progress = None) -> dict:
    """Causal validation (generation from descriptions, removal, insertion) into summary.json and figures.

    Without a ``generator`` the results' synthetic world serves: its renderer edits the scenes and its true
    brain answers beside the encoder. A pixel generator (diffusers) edits the results' own images.
    """
    from napari_mine.validate import N_VOXELS, run_validation, world_validation

    truth, images = None, None
    if generator is None:
        generator, truth = world_validation(results)
    else:
        images = results.images
    return run_validation(results, generator, truth, backbone=backbone or results.backbone(), images=images,
                          n_voxels=n_voxels or N_VOXELS, seed=seed, on_progress=on_progress)


def report_step(results, summary: dict, *, title: str = "napari-mine", extra_figures=(), extra_html: str = "") -> Path:
    """Write ``report.html`` with its figures into the results folder."""
    from napari_mine.report import write_report

    return write_report(results, results.space.roi_of_targets(), summary, title=title, extra_figures=extra_figures,
                        extra_html=extra_html)


def _nanmedian(values: np.ndarray) -> float | None:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else None
