"""Validation as chunked tasks: one experiment on one batch of pairs, serially or on a Dask worker.

A worker rebuilds the study (results, generator, true brain, backbone) from a :class:`StudySpec` once per run;
:func:`napari_mine.distributed.run_chunks` schedules the chunks and the driver writes them in chunk order.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from napari_mine.distributed import worker_results
from napari_mine.validate.experiments import insertion, removal, sufficiency


def validation_chunk(study, experiment: str, pairs: dict, seed: int, options: dict) -> dict:
    """Task: one validation experiment on one batch of pairs (``study``: a validate.Study, or on a worker the
    :class:`StudySpec` it is rebuilt from)."""
    if isinstance(study, StudySpec):
        study = _worker_study(study)
    return run_experiment(study, experiment, pairs, seed, options)


@dataclass(frozen=True)
class StudySpec:
    """What a worker needs to open a validation study itself: the results folder, the weights file, the
    generator and the truth (pickled), whether the generator edits the results' images; ``token`` names the run."""

    root: str
    checkpoint: str | None
    generator: object
    truth: object | None
    with_images: bool
    token: str


_studies: OrderedDict = OrderedDict()
_studies_lock = threading.Lock()


def _worker_study(spec: StudySpec):
    """The worker's study of one validation run, opened once (the last two runs' are kept)."""
    from napari_mine.validate.study import open_study

    with _studies_lock:
        if spec.token not in _studies:
            results = worker_results(spec.root, spec.token)
            _studies[spec.token] = open_study(results, spec.generator, spec.truth,
                                              results.images if spec.with_images else None,
                                              results.backbone(spec.checkpoint))
            while len(_studies) > 2:
                _studies.popitem(last=False)
        return _studies[spec.token]


def run_experiment(study, name: str, pairs: dict, seed: int, options: dict) -> dict:
    """One experiment of :data:`EXPERIMENTS` on a batch of pairs, left unsummarised (merged later)."""
    common = {"pairs": pairs, "n_boot": None, "seed": seed}
    if name == "sufficiency":
        return sufficiency(study, space=options["space"], **common)
    if name == "removal":
        return removal(study, **common)
    source = "profile" if name == "profile_insertion" else "image"
    return insertion(study, space=options["space"], concept_source=source, **common)
