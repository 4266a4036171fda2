"""The MINE steps over a study of several subjects (DESIGN.md §10): features once per stimulus, then each
subject's fit, profiles and validation through the one-subject steps of :mod:`napari_mine.pipeline`.

Subjects are independent after the features, so their fits run as Dask tasks when a client is given (each
worker loads its subject's data itself); the study's ``summary.json`` records what was shared.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from napari_mine.errors import MineInputError
from napari_mine.pipeline import Progress, StopFlag, decompose_step, digest, fit_encoder_step, save_brain
from napari_mine.store import ResultsStore, update_summary, write_arrays
from napari_mine.study import STIMULI, Study, add_subjects, start_study, subject_folder

log = logging.getLogger(__name__)


def compute_study_features(load_subject: Callable[[int], object], subjects: Iterable[int], backbone,
                           root: str | Path, *, space: str = "volume", batch_size: int = 64, client=None,
                           checkpoint: str | None = None, token_dtype: str = "float32", on_progress: Progress = None,
                           should_stop: StopFlag = None, force: bool = False) -> dict:
    """Decompose every unique stimulus of the subjects once into ``root/stimuli`` and give each subject a
    results folder whose features are its rows there.

    Parameters
    ----------
    load_subject : callable(subject) -> Dataset
        Loads one subject (called once per subject; the dataset is dropped before the next is loaded).
    subjects : iterable of int
    backbone : Backbone
    root : path
        The study folder (created, or extended with more subjects of the same model and space).
    space : "volume" or "fsaverage"
    batch_size, client, checkpoint, token_dtype, on_progress, should_stop, force
        As :func:`napari_mine.pipeline.compute_features` (progress in unique images).

    Returns
    -------
    dict
        ``images_decomposed`` (unique stimuli) and ``images_summed_over_subjects``, also in the study's summary.
    """
    from napari_mine.data import ImageStore

    root = Path(root)
    subjects = [int(s) for s in subjects]
    start_study(root, model=backbone.record, space=space)
    images, sources = {}, {}
    for subject in subjects:  # one subject's data in memory at a time: its brain is saved, its images kept
        dataset = load_subject(subject)
        store = ResultsStore.create(root / subject_folder(subject), model=backbone.record, dataset=dataset.source,
                                    checkpoint=checkpoint)
        save_brain(dataset, store)
        images[subject], sources[subject] = dataset.images, dataset.source
        del dataset
    ids = np.unique(np.concatenate([np.asarray(store.ids) for store in images.values()]))
    source_root = next(iter(sources.values())).get("root")
    stimuli = ResultsStore.create(root / STIMULI, model=backbone.record,
                                  dataset={"format": "study-stimuli", "root": source_root}, checkpoint=checkpoint)
    decompose_step(ImageStore.union(list(images.values()), ids), backbone, stimuli, batch_size=batch_size,
                   client=client, checkpoint=checkpoint, token_dtype=token_dtype, on_progress=on_progress,
                   should_stop=should_stop, force=force)
    finished = stimuli.manifest.steps["features"].finished
    for subject in subjects:
        link_features(ResultsStore.open(root / subject_folder(subject)), np.asarray(images[subject].ids), ids,
                      finished)
    add_subjects(root, subjects, source={"root": source_root, "layout": "nsd"})
    counts = {"images_decomposed": int(len(ids)),
              "images_summed_over_subjects": int(sum(len(store) for store in images.values())),
              "images_per_subject": {subject_folder(s): int(len(store)) for s, store in images.items()}}
    update_summary(root, "features", counts)
    return counts


def link_features(store: ResultsStore, image_ids: np.ndarray, stimulus_ids: np.ndarray, finished: str) -> None:
    """A subject's features step as rows of the study's stimulus folder (``finished``: its features' stamp)."""
    settings = {"shared_stimuli": f"../{STIMULI}", "stimuli_finished": finished, "n_images": int(len(image_ids)),
                "image_ids_digest": digest(image_ids)}
    if store.is_current("features", settings):
        return
    with store.write_step("features", settings) as group:
        write_arrays(group, {"image_ids": image_ids, "stimulus_rows": np.searchsorted(stimulus_ids, image_ids)})


def fit_study(root: str | Path, *, client=None, on_progress: Progress = None) -> dict[int, dict]:
    """Fit every subject's encoder (as Dask tasks with a ``client``); returns each subject's fit summary.

    Progress is in subjects; a subject whose fit fails stops the study with its name in the message, and the
    subjects already fitted keep their encoders.
    """
    study = Study.open(root)
    roots = {subject: str(study.subject_root(subject)) for subject in study.subjects}
    if on_progress is not None:
        on_progress(0, len(roots))
    if client is None:
        finished = ((subject, fit_subject(folder)) for subject, folder in roots.items())
    else:
        from distributed import as_completed

        futures = {client.submit(fit_subject, folder, pure=False): subject for subject, folder in roots.items()}
        finished = ((futures[future], future.result()) for future in as_completed(futures))
    summaries = {}
    for done, (subject, summary) in enumerate(finished, start=1):
        summaries[subject] = summary
        if on_progress is not None:
            on_progress(done, len(roots))
    return dict(sorted(summaries.items()))


def fit_subject(folder: str) -> dict:
    """Task: fit one subject's encoder from its folder (its data loaded again from the folder's source)."""
    from napari_mine.results import Results

    try:
        return fit_encoder_step(Results.open(folder).dataset(), ResultsStore.open(folder))
    except MineInputError as error:
        raise MineInputError(f"{Path(folder).name}: {error}") from None
