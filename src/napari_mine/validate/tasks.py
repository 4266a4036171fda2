"""Validation as chunked tasks: one experiment on one batch of pairs, serially or on a Dask worker.

A worker rebuilds the workbench (results, generator, true brain, backbone) from a :class:`WorkbenchSpec` once per run;
:func:`napari_mine.distributed.run_chunks` schedules the chunks and the driver writes them in chunk order.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from napari_mine.distributed import worker_results
from napari_mine.validate.experiments import insertion, removal, sufficiency


def validation_chunk(bench, experiment: str, pairs: dict, seed: int, options: dict) -> dict:
    """Task: one validation experiment on one batch of pairs (``bench``: a validate.Workbench, or on a worker the
    :class:`WorkbenchSpec` it is rebuilt from)."""
    if isinstance(bench, WorkbenchSpec):
        bench = _worker_workbench(bench)
    return run_experiment(bench, experiment, pairs, seed, options)


@dataclass(frozen=True)
class WorkbenchSpec:
    """What a worker needs to open a validation bench itself: the results folder, the weights file, the
    generator and the truth (pickled), whether the generator edits the results' images; ``token`` names the run."""

    root: str
    checkpoint: str | None
    generator: object
    truth: object | None
    with_images: bool
    token: str


_workbenches: OrderedDict = OrderedDict()
_studies_lock = threading.Lock()


def _worker_workbench(spec: WorkbenchSpec):
    """The worker's bench of one validation run, opened once (the last two runs' are kept)."""
    from napari_mine.validate.workbench import open_workbench

    with _studies_lock:
        if spec.token not in _workbenches:
            results = worker_results(spec.root, spec.token)
            _workbenches[spec.token] = open_workbench(results, spec.generator, spec.truth,
                                              results.images if spec.with_images else None,
                                              results.backbone(spec.checkpoint))
            while len(_workbenches) > 2:
                _workbenches.popitem(last=False)
        return _workbenches[spec.token]


def run_experiment(bench, name: str, pairs: dict, seed: int, options: dict) -> dict:
    """One experiment of :data:`EXPERIMENTS` on a batch of pairs, left unsummarised (merged later)."""
    common = {"pairs": pairs, "n_boot": None, "seed": seed}
    if name == "sufficiency":
        return sufficiency(bench, space=options["space"], **common)
    if name == "removal":
        return removal(bench, **common)
    source = "profile" if name == "profile_insertion" else "image"
    return insertion(bench, space=options["space"], concept_source=source, **common)
