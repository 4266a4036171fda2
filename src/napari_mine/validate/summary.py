"""The whole validation run: one workbench, one sample of pairs, every experiment, and what summary.json keeps.

The run is chunked (an experiment on a batch of pairs per chunk, kept in ``.validation.partial/``), so it
resumes after an interruption and runs on Dask (``distributed.run_chunks``); the summary is rewritten after
each experiment, marked incomplete until the last, so a failure (a generator that breaks, a cancelled run)
keeps what finished and leaves the rest of summary.json as it was. Only plain
JSON goes there (numpy scalars to Python, NaN to None); the example strips go beside it as PNGs.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Callable

import numpy as np

from napari_mine.errors import MineInputError
from napari_mine.validate.experiments import summarized
from napari_mine.validate.pairs import CATEGORY_ROIS, IMAGES_PER_VOXEL, N_VOXELS, TOP_K, sample_pairs
from napari_mine.validate.stats import N_BOOT, delta_ratio
from napari_mine.validate.workbench import open_workbench

EXPERIMENTS = ("sufficiency", "removal", "insertion", "profile_insertion")
CHUNK_VOXELS = 16  # voxels per batch of pairs: 8 batches of the default 128 voxels, a few seconds each here
BATCH_SEED_KEY = 61
log = logging.getLogger(__name__)


def run_validation(results, generator, truth=None, *, backbone=None, space=None, images=None,
                   n_voxels: int = N_VOXELS, images_per_voxel: int = IMAGES_PER_VOXEL, top_k: int = TOP_K,
                   min_nc_r: float = 0.5, rois=CATEGORY_ROIS, n_boot: int = N_BOOT, n_examples: int = 4,
                   seed: int = 0, chunk_voxels: int = CHUNK_VOXELS, client=None, checkpoint: str | None = None,
                   on_progress: Callable[[int, int], None] | None = None,
                   should_stop: Callable[[], bool] | None = None, force: bool = False) -> dict:
    """Run every experiment on one seeded sample of pairs and write ``summary.json["validation"]``.

    The pairs are cut into batches of ``chunk_voxels`` voxels (with all their pairs); a chunk is one
    experiment on one batch, seeded by the batch (never by when it ran), and its result is kept in the
    results' ``.validation.partial/`` folder: the unit of resume, of progress (in pairs) and, with a Dask
    ``client``, of tasks (each worker opens the workbench once, from the results folder and the pickled
    ``generator`` and ``truth``). Once all of an experiment's chunks are done they are merged and summarised
    over all pairs, and the summary is rewritten with ``"complete": False`` until the last, so a failure keeps
    the experiments already done (and leaves the rest of summary.json as it was); the example strips go to
    ``<results>/figures/validation_*.png``. A run with the settings of a finished one returns its summary
    unless ``force``.

    Parameters
    ----------
    results, generator, truth, images, backbone
        See :func:`~napari_mine.validate.open_workbench` (opened once, shared by every experiment).
    space : vocabulary.ConceptSpace, optional
    n_voxels, images_per_voxel, top_k, min_nc_r, rois
        See :func:`~napari_mine.validate.sample_pairs`.
    n_boot : int
    n_examples : int
        Pairs shown in each strip.
    seed : int
    chunk_voxels : int
        Voxels per batch of pairs.
    client : distributed.Client, optional
    checkpoint : str, optional
        The weights file Dask workers load the backbone from (default: the results').
    on_progress : callable, optional
        ``on_progress(done, total)`` in pairs, over all experiments, after each chunk.
    should_stop : callable, optional
        Checked between chunks; a stop raises ``Cancelled`` and keeps the chunks done.
    force : bool

    Returns
    -------
    dict: the "validation" summary (also in summary.json).
    """
    from napari_mine import report_validation
    from napari_mine.distributed import run_chunks
    from napari_mine.validate.tasks import WorkbenchSpec, validation_chunk
    from napari_mine.store import ResultsStore
    from napari_mine.validate.descriptions import checked_space

    bench = open_workbench(results, generator, truth, images, backbone)
    space = checked_space(bench, space)
    settings = {"n_voxels": n_voxels, "images_per_voxel": images_per_voxel, "top_k": top_k, "min_nc_r": min_nc_r,
                "rois": list(rois), "n_boot": n_boot, "seed": seed, "generator": type(generator).__name__,
                "vocabulary": space.vocabulary.name, "true_brain": truth is not None}
    writer = ResultsStore(results.root)
    step = {**settings, "chunk_voxels": int(chunk_voxels), "image_size": list(generator.image_size),
            "vocabulary_digest": space.vocabulary.digest, "encoder": results.manifest.steps["encoder"].finished}
    if not force and writer.is_current("validation", step):
        written = json.loads((results.root / "summary.json").read_text()).get("validation", {})
        if written.get("complete"):
            log.info("validation: already done with these settings in %s; nothing to do (force it to recompute).",
                     results.root)
            return written
    pairs = sample_pairs(results, n_voxels=n_voxels, images_per_voxel=images_per_voxel, top_k=top_k,
                         min_nc_r=min_nc_r, rois=rois, seed=seed)
    batches = pair_batches(pairs, chunk_voxels)
    source = bench
    if client is not None:  # sent to every worker once, not with each task
        source = client.scatter(WorkbenchSpec(str(results.root), checkpoint, generator, truth, images is not None,
                                          uuid.uuid4().hex), broadcast=True, hash=False)
    options = {"space": space}
    chunks = [(validation_chunk, (source, name, batch, batch_seed(seed, b), options), len(batch["row"]))
              for name in EXPERIMENTS for b, batch in enumerate(batches)]
    summary = {"settings": settings, "n_pairs": int(len(pairs["row"])), "complete": False}
    done_results = {}
    with writer.resumable_step("validation", step) as partial:
        def summarize_finished() -> None:
            """Merge and summarise each experiment whose batches are all done; rewrite the summary if any."""
            finished = [e for e, name in enumerate(EXPERIMENTS) if name not in done_results
                        and all(e * len(batches) + b in partial.done for b in range(len(batches)))]
            if not finished:
                return
            for e in finished:
                parts = [partial.load_chunk(e * len(batches) + b) for b in range(len(batches))]
                done_results[EXPERIMENTS[e]] = summarized(merge_results(parts), n_boot, seed)
            for name in EXPERIMENTS:
                if name in done_results and (name != "profile_insertion" or "insertion" in done_results):
                    summary.update(summary_entries(name, done_results, n_boot, seed))
            writer.update_summary("validation", plain(summary))

        def write(index: int, result: dict) -> None:
            partial.save_chunk(index, result)

        def progress(done: int, total: int) -> None:
            summarize_finished()
            if on_progress is not None:
                on_progress(done, total)

        summarize_finished()
        run_chunks(partial, chunks, write, client=client, on_progress=progress, should_stop=should_stop)
        summarize_finished()
        summary["figures"] = report_validation.save_strips(results.root / "figures", done_results, n_examples)
        summary["complete"] = True
        writer.update_summary("validation", plain(summary))
    return plain(summary)


def pair_batches(pairs: dict, chunk_voxels: int) -> list[dict]:
    """The pairs cut into batches of ``chunk_voxels`` voxels each (a voxel's pairs stay together, in order)."""
    if int(chunk_voxels) < 1:
        raise MineInputError(f"chunk_voxels must be at least 1, got {chunk_voxels}; e.g. {CHUNK_VOXELS}.")
    voxels = list(dict.fromkeys(int(v) for v in pairs["voxel"]))
    batches = []
    for start in range(0, len(voxels), int(chunk_voxels)):
        chosen = np.isin(pairs["voxel"], voxels[start:start + int(chunk_voxels)])
        batches.append({key: np.asarray(values)[chosen] for key, values in pairs.items()})
    return batches


def batch_seed(seed: int, batch: int) -> int:
    """The seed of one batch of pairs: the same for every experiment on it (so insertion and profile insertion
    share targets and masks), whatever ran before it."""
    return int(np.random.SeedSequence([int(seed), BATCH_SEED_KEY, int(batch)]).generate_state(1)[0])


def merge_results(parts: list[dict]) -> dict:
    """One experiment's results on consecutive batches of pairs, as if it had run on all of them at once: arrays
    and lists joined in batch order, skip counts added, the share of removals that hit the driving object
    weighted by each batch's removals; the summary is left to :func:`~napari_mine.validate.experiments.summarized`."""
    merged = _merge([{key: value for key, value in part.items() if key != "summary"} for part in parts])
    hits = [(part["removed_driving_object"], len(part["voxel"])) for part in parts if "removed_driving_object" in part]
    if hits:
        merged["removed_driving_object"] = float(sum(h * n for h, n in hits) / max(sum(n for _, n in hits), 1))
    return merged


def _merge(values: list):
    present = [value for value in values if value is not None]
    if not present:
        return None
    first = present[0]
    if isinstance(first, dict):
        keys = list(dict.fromkeys(key for value in present for key in value))
        return {key: _merge([value.get(key) for value in present]) for key in keys}
    if isinstance(first, np.ndarray):
        filled = [value for value in present if value.size]
        return np.concatenate(filled) if filled else first
    if isinstance(first, list):
        return [item for value in present for item in value]
    if isinstance(first, (int, np.integer)) and not isinstance(first, (bool, np.bool_)):
        return int(sum(present))
    return first


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
