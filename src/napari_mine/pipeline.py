"""The MINE steps that fill a results folder: features, fit, profile, validate, report.

Each step is one function; the CLI, the demo and the napari docks call the same ones. A step writes through
:class:`~napari_mine.store.ResultsStore` (atomically) and reads through
:class:`~napari_mine.results.Results`. Long steps report progress through `on_progress(done, total)` and
stop at the next batch when `should_stop()` returns True, leaving the folder as it was
(see `ResultsStore.write_step`). Features, profiles and validation are chunked (`napari_mine.distributed`):
they resume after an interruption from their last complete chunk (`ResultsStore.resumable_step`), a re-run
with the settings already done does nothing unless forced, and with a Dask client the chunks are its tasks.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from napari_mine.data.nsd import CATEGORY_ROIS
from napari_mine.errors import MineInputError
from napari_mine.responses import image_response_columns
from napari_mine.store import ResultsStore, write_arrays

Progress = Callable[[int, int], None] | None
StopFlag = Callable[[], bool] | None
log = logging.getLogger(__name__)


def save_brain(dataset, store: ResultsStore) -> None:
    """Write what the viewer draws (mask, affine or surface layout, anatomy or sulcal depth, ROIs) once per store."""
    if store.has("brain"):
        return
    rois = {f"roi/{roi.name}": np.asarray(roi.volume, dtype=np.int16) for roi in dataset.rois.values()}
    labels = {roi.name: {str(k): v for k, v in roi.labels.items()} for roi in dataset.rois.values()}
    settings = {"roi_labels": labels}
    if dataset.surface is not None:
        settings["space"] = dataset.surface.to_dict()
    with store.write_step("brain", settings) as group:
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
    token_dtype: str = "float32",
    on_progress: Progress = None,
    should_stop: StopFlag = None,
    force: bool = False,
) -> int:
    """Decompose every image of `dataset` with `backbone` into the store's token contribution cache.

    With a Dask `client` the images are decomposed on its workers, which load the backbone themselves (from
    `checkpoint` when it came from a weights file) and write into the store: see `napari_mine.distributed`.
    Returns the number of images. Rows of `features.zarr` follow `dataset.images` order. `token_dtype`
    "float16" stores the token cache at half the size (recorded in the step's settings; the features stay
    float32): see `decompose.create_cache_arrays` and docs/benchmarks.md for its error.

    The step is resumable: an interrupted run (killed, cancelled) resumes from its last complete chunk of
    images, and a run with the settings of the features already there does nothing unless `force`.
    """
    store.check_model(backbone.record["id"])
    save_brain(dataset, store)
    return decompose_step(dataset.images, backbone, store, batch_size=batch_size, client=client,
                          checkpoint=checkpoint, token_dtype=token_dtype, on_progress=on_progress,
                          should_stop=should_stop, force=force)


def decompose_step(images, backbone, store: ResultsStore, *, batch_size: int = 64, client=None,
                   checkpoint: str | None = None, token_dtype: str = "float32", on_progress: Progress = None,
                   should_stop: StopFlag = None, force: bool = False) -> int:
    """The features step on ``images`` alone (no brain): what :func:`compute_features` and a study's stimulus
    folder (:func:`napari_mine.study_steps.compute_study_features`) both run; returns the number of images."""
    from napari_mine.decompose import check_token_dtype
    from napari_mine.distributed import decompose_chunks

    token_dtype = check_token_dtype(token_dtype)
    store.check_model(backbone.record["id"])
    n_images = len(images)
    if n_images == 0:
        raise MineInputError("the dataset has no images; check the stimulus file or the images folder.")
    image_ids = np.asarray(images.ids)
    settings = {"batch_size": batch_size, "n_images": n_images, "token_dtype": token_dtype,
                "image_ids_digest": digest(image_ids)}
    if not force and _already_done(store, "features", settings):
        return n_images
    with store.resumable_step("features", settings) as partial:
        decompose_chunks(partial, backbone, images, client=client, checkpoint=checkpoint,
                         batch_size=batch_size, token_dtype=token_dtype, on_progress=on_progress,
                         should_stop=should_stop)
        if "image_ids" in partial.group:
            del partial.group["image_ids"]
        write_arrays(partial.group, {"image_ids": image_ids})
    return n_images


def _already_done(store: ResultsStore, step: str, settings: dict) -> bool:
    """Whether `step` is in the store with these settings; logged, since the run then does nothing."""
    if not store.is_current(step, settings):
        return False
    log.info("%s: already done with these settings in %s; nothing to do (force it to recompute).", step, store.root)
    return True


def digest(values: np.ndarray) -> str:
    """A short fingerprint of an array's values (which images, which targets a step ran on)."""
    return hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()[:16]


def fit_encoder_step(dataset, store: ResultsStore, *, alphas=None, on_progress: Progress = None,
                     should_stop: StopFlag = None) -> dict:
    """Fit the voxelwise ridge encoder on train images and score it on held-out images.

    Responses are averaged over repeats per image (NSD practice); the noise ceiling uses the test images'
    repeat counts. Progress is reported in voxels; a stop request ends the fit at its next fold or voxel
    batch with the store as it was. Returns per-ROI medians of the noise-ceiling-normalised r. Responses on
    disk (a zarr or h5py ``dataset.responses`` chunked by target blocks, see `napari_mine.responses`) are read,
    fitted, scored and written one voxel batch at a time: memory is bounded by the batch, not the targets.
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
    image_ids, responses, n_repeats = image_response_columns(dataset)  # ids are rows of dataset.images
    train_ids, test_ids = dataset.split()
    is_test = np.isin(image_ids, test_ids)
    if is_test.sum() < 10 or (~is_test).sum() < 10:
        raise MineInputError("need at least 10 train and 10 test images with responses; use a larger dataset.")

    kwargs = {} if alphas is None else {"alphas": np.asarray(alphas, dtype=float)}
    blocks = encoding.fit_encoder_blocks(features[image_ids[~is_test]], responses.take_rows(~is_test),
                                         on_progress=on_progress, should_stop=should_stop, **kwargs)
    settings = {"n_train": int((~is_test).sum()), "n_test": int(is_test.sum())}
    with store.write_step("encoder", settings) as group:
        scores = _write_encoder_blocks(group, blocks, features[image_ids[is_test]], responses.take_rows(is_test),
                                       dataset.ncsnr, n_repeats[is_test])
        write_arrays(group, {"test_image_ids": image_ids[is_test]})
    summary = summarize_accuracy(dataset.roi_of_voxels(), scores)
    store.update_summary("encoder", summary)
    return summary


def _write_encoder_blocks(group, blocks, features_test, responses_test, ncsnr, n_repeats) -> dict:
    """Write each voxel batch's weights and held-out scores as it is fitted, so memory holds one batch
    (and one float per voxel for α, bias and scores), never all voxels' weights or responses."""
    from napari_mine import encoding

    n_features, n_voxels = features_test.shape[1], responses_test.shape[1]
    per_voxel = {name: np.empty(n_voxels, np.float32) for name in ("intercept", "effective_bias")}
    per_voxel["alphas"] = np.empty(n_voxels, np.float64)
    scores = {}
    matrices = {}
    for voxels, encoder in blocks:
        if not matrices:
            chunks = (n_features, voxels.stop - voxels.start)
            matrices = {name: group.create_array(name, shape=(n_features, n_voxels), dtype=np.float32, chunks=chunks)
                        for name in ("weights", "effective_weights")}
            write_arrays(group, {"feature_mean": encoder.feature_mean, "feature_scale": encoder.feature_scale})
        effective_weights, effective_bias = encoder.effective_weights()
        matrices["weights"][:, voxels] = encoder.weights
        matrices["effective_weights"][:, voxels] = effective_weights
        per_voxel["intercept"][voxels], per_voxel["alphas"][voxels] = encoder.intercept, encoder.alphas
        per_voxel["effective_bias"][voxels] = effective_bias
        block_scores = encoding.evaluate(encoder, features_test, responses_test.block(voxels),
                                         None if ncsnr is None else np.asarray(ncsnr)[voxels], n_repeats)
        for name, values in block_scores.items():
            scores.setdefault(name, np.empty(n_voxels, np.float64))[voxels] = values
    write_arrays(group, {**per_voxel, **{f"accuracy/{k}": np.asarray(v, dtype=np.float32) for k, v in scores.items()}})
    return scores


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
    path: Path  # the clusters as a labels file (see write_clusters)


def profile_step(store: ResultsStore, space, *, top_k: int | None = None, rois=None, seed: int = 0,
                 block: int | None = None, client=None, on_progress: Progress = None, should_stop: StopFlag = None,
                 force: bool = False) -> tuple[object, list[RoiProfile]]:
    """Profile every target in ``space``'s vocabulary, then each ROI label's mean profile and sub-populations.

    Writes ``profiles.zarr`` (with the vocabulary and its digest in the manifest) and one clusters volume per
    ROI label under ``clusters/``. ``rois`` defaults to the category ROI volumes these results have (any ROI
    volume when they have none of those).

    Profiles are computed in blocks of ``block`` targets (default ``describe.STORE_VOXEL_BLOCK``), the unit of
    resume, of progress (in targets) and of Dask tasks (with a ``client``); profiles already there for this
    vocabulary, ``top_k`` and encoder are kept unless ``force``, and only the ROI analysis is redone.
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
    results.keep_concept_space(space)  # the viewer reads the vocabulary's text embeddings from the folder
    record = {"vocabulary": space.vocabulary.name, "vocabulary_digest": space.vocabulary.digest, "top_k": top_k,
              "block": int(block or describe.STORE_VOXEL_BLOCK), "encoder": results.manifest.steps["encoder"].finished}
    if force or not _already_done(store, "profiles", record):
        _compute_profiles(store, results, space, record, client, on_progress, should_stop)
    profiles = store.results().saved_profiles(space)
    request = {"rois": list(rois), "seed": seed, "profiles": store.manifest.steps["profiles"].finished}
    written = store.manifest.settings("clusters")
    if not force and written.get("request") == request and all(
            (store.root / "clusters" / entry["path"]).is_file() for entry in written["labels"]):
        return profiles, _saved_roi_profiles(store.results(), profiles, written)
    by_label = []
    for roi in rois:
        for name, profile in results.roi_profiles(profiles, roi).items():
            clustering, targets = results.roi_clusters(profiles, roi, name, seed=seed)
            path = write_clusters(results.space, clustering.labels, targets, store.root / "clusters", name)
            by_label.append(RoiProfile(roi, name, profile, clustering, targets, path))
    store.record_step("clusters", {"request": request, "labels": [
        {"roi": r.roi, "label": r.label, "k": r.clustering.k, "path": r.path.name,
         "silhouettes": {str(k): v for k, v in r.clustering.silhouettes.items()}} for r in by_label]})
    return profiles, by_label


def _saved_roi_profiles(results, profiles, record) -> list[RoiProfile]:
    """The ROI analysis a finished profile step wrote (its clusters files and the manifest's record), read back."""
    from napari_mine.describe import Clustering

    saved = results.saved_clusters()
    means = {}  # each ROI's rows read once, not once per label
    by_label = []
    for entry in record["labels"]:
        roi, label = entry["roi"], entry["label"]
        value = results.space.label_value(roi, label)
        targets = profiles.voxels[results.space.roi_values(roi)[profiles.voxels] == value]
        clustering = Clustering(saved[label][targets], int(entry["k"]),
                                {int(k): float(v) for k, v in entry["silhouettes"].items()})
        if roi not in means:
            means[roi] = results.roi_profiles(profiles, roi)
        by_label.append(RoiProfile(roi, label, means[roi][label], clustering, targets,
                                   results.root / "clusters" / entry["path"]))
    return by_label


def write_clusters(space, labels: np.ndarray, targets: np.ndarray, folder: Path, name: str) -> Path:
    """One ROI label's sub-populations over the space's sites, atomically: a NIfTI labels volume with the grid's
    affine, or for a surface an MGH over every vertex, lh then rh (NIfTI's dimensions stop at 32,767; `napari-mine
    export --map clusters` writes one file per hemisphere for FreeSurfer)."""
    from napari_mine import describe

    sites = describe.labels_volume(labels, space.mask, targets)
    if space.kind == "volume":
        return describe.save_labels_nifti(sites, space.affine, folder / f"{name}.nii.gz")
    import nibabel as nib

    from napari_mine.export import save_atomic

    return save_atomic(nib.MGHImage(sites.astype(np.int32).reshape(-1, 1, 1), np.eye(4)), folder / f"{name}.mgz")


def _compute_profiles(store: ResultsStore, results, space, record: dict, client, on_progress, should_stop) -> None:
    """Fill ``profiles.zarr`` block by block of targets.

    Storage chunks are ``describe.PROFILE_ROWS_PER_CHUNK`` rows (a block, when smaller), so a viewer reading
    one target's profile decompresses a few MB rather than a whole block's; a block whose size is a multiple
    of them writes chunks of its own (others share a chunk with a neighbour, written in turn here).
    """
    from napari_mine import describe
    from napari_mine.distributed import profile_block, run_chunks

    n_targets, block = results.n_targets, record["block"]
    rows = min(block, describe.PROFILE_ROWS_PER_CHUNK)
    n_top = min(record["top_k"], results.n_images)
    bounds = [(start, min(start + block, n_targets)) for start in range(0, n_targets, block)]
    with store.resumable_step("profiles", record) as partial:
        group = partial.group
        if "scores" not in group:
            n_concepts = len(space.vocabulary)
            for name, shape, chunks, dtype in (("scores", (n_targets, n_concepts), (rows, n_concepts), "float32"),
                                               ("baseline", (n_targets, n_concepts), (rows, n_concepts), "float32"),
                                               ("top_images", (n_top, n_targets), (n_top, rows), "int64"),
                                               ("region_mass", (n_targets,), (rows,), "float32")):
                group.create_array(name, shape=shape, chunks=chunks, dtype=dtype)
            write_arrays(group, {"voxels": np.arange(n_targets)})
            group.attrs["concepts"] = list(space.vocabulary.concepts)
        chunks = [(profile_block, (str(store.root), record["encoder"], space, np.arange(start, stop), record["top_k"]),
                   stop - start) for start, stop in bounds]

        def write(index: int, part) -> None:
            start, stop = bounds[index]
            group["scores"][start:stop] = part.scores
            group["baseline"][start:stop] = part.baseline
            group["top_images"][:, start:stop] = part.top_images
            group["region_mass"][start:stop] = part.region_mass

        run_chunks(partial, chunks, write, client=client, on_progress=on_progress, should_stop=should_stop)


def validate_step(results, *, generator=None, backbone=None, seed: int = 0, n_voxels: int | None = None,
                  client=None, checkpoint: str | None = None, on_progress: Progress = None,
                  should_stop: StopFlag = None, force: bool = False) -> dict:
    """Causal validation (generation from descriptions, removal, insertion) into summary.json and figures.

    Without a ``generator`` the results' synthetic world serves: its renderer edits the scenes and its true
    brain answers beside the encoder. A pixel generator (diffusers) edits the results' own images. Resumable
    and runnable on a Dask ``client`` chunk by chunk (experiments on batches of pairs): see
    :func:`~napari_mine.validate.run_validation`.
    """
    from napari_mine.validate import N_VOXELS, run_validation, world_validation

    truth, images = None, None
    if generator is None:
        generator, truth = world_validation(results)
    else:
        images = results.images
    return run_validation(results, generator, truth, backbone=backbone or results.backbone(checkpoint),
                          images=images, n_voxels=n_voxels or N_VOXELS, seed=seed, client=client,
                          checkpoint=checkpoint, on_progress=on_progress, should_stop=should_stop, force=force)


def report_step(results, summary: dict, *, title: str = "napari-mine", extra_figures=(), extra_html: str = "") -> Path:
    """Write ``report.html`` with its figures into the results folder."""
    from napari_mine.report import write_report

    return write_report(results, results.space.roi_of_targets(), summary, title=title, extra_figures=extra_figures,
                        extra_html=extra_html)


def _nanmedian(values: np.ndarray) -> float | None:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else None
