"""The chunked batch steps, serially or as Dask tasks: features, profiles and validation (NSD: 73,000 images).

A long step is a list of chunks (image chunks for features, target blocks for profiles, batches of pairs of
one experiment for validation) kept in the step's partial folder (``store.PartialStep``). :func:`run_chunks`
computes the chunks not complete yet, one after another or as tasks of a ``dask.distributed`` client, and
the driver writes each result in its own place and marks its chunk complete: chunks are the unit of resume,
of progress and of tasks, and since no result depends on when another finished, a Dask run equals a serial one.

Features: each task decomposes one storage chunk of the token array (so no two tasks write the same chunk) on
a worker, which loads the backbone itself once and checks that its weights are the store's, and writes its
token contributions straight into the partial (the cluster must share its filesystem, as HPC clusters do);
the small pooled arrays come back to the driver. Profiles and validation: a worker opens the results folder
(and for validation the study: generator, true brain) once and returns the chunk's arrays.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

import numpy as np

from napari_mine.errors import Cancelled, MineInputError, require_extra

CACHE_ARRAYS = ("tokens", "rest", "features")
Progress = Callable[[int, int], None] | None
StopFlag = Callable[[], bool] | None


def connect(address: str):
    """A Dask client: ``"local"`` starts a cluster of this machine's cores, anything else is a scheduler address."""
    require_extra("dask")
    from distributed import Client

    if address == "local":
        return Client(threads_per_worker=1)
    try:
        return Client(address, timeout="3s")
    except OSError as error:
        raise MineInputError(f"cannot reach the Dask scheduler at {address} ({error}); start it with "
                             "`dask scheduler` or pass --dask local.") from None


def run_chunks(partial, chunks, write, *, client=None, on_progress: Progress = None,
               should_stop: StopFlag = None) -> None:
    """Compute the chunks of a resumable step not complete yet, serially or as Dask tasks.

    Parameters
    ----------
    partial : store.PartialStep
        The step's partial: its complete chunks are skipped, and each chunk is marked complete once written.
    chunks : list of (function, args, size)
        Chunk ``i`` is ``function(*args)``; ``size`` counts its units (images, targets, pairs) for progress.
        With a client the functions run on its workers, so they are module-level functions of this package.
    write : callable(index, result)
        Stores chunk ``index``'s result in the partial, in the driver. Every chunk's result has its own place,
        so the order in which tasks finish does not change the outcome: a Dask run equals a serial one.
    client : distributed.Client, optional
    on_progress : callable(done, total), optional
        Called in units once at the start (with what a resumed run found done) and after each chunk.
    should_stop : callable() -> bool, optional
        Checked before each chunk (serial) or result (Dask) and at the end; a stop raises :class:`Cancelled`,
        keeping the complete chunks for a re-run.
    """
    if client is not None:
        require_extra("dask")
    sizes = [size for _, _, size in chunks]
    total = sum(sizes)
    done = sum(sizes[index] for index in partial.done if index < len(sizes))
    pending = partial.pending(len(chunks))
    if on_progress is not None:
        on_progress(done, total)

    def finish(index: int, result) -> None:
        nonlocal done
        write(index, result)
        partial.mark_done(index)
        done += sizes[index]
        if on_progress is not None:
            on_progress(done, total)

    def check_stop() -> None:
        if should_stop is not None and should_stop():
            raise Cancelled(f"cancelled with {len(partial.done)} of {len(chunks)} chunks complete; they are kept in "
                            f"{partial.folder.name}, so running the step again resumes from there.")

    if client is None:
        for index in pending:
            check_stop()
            function, args, _ = chunks[index]
            finish(index, function(*args))
    else:
        from distributed import as_completed

        futures = {client.submit(chunks[index][0], *chunks[index][1], pure=False): index for index in pending}
        try:
            for future in as_completed(futures):
                check_stop()
                finish(futures[future], future.result())
        finally:
            client.cancel([future for future in futures if not future.done()])
    check_stop()  # a stop asked during the last chunk: the step is not recorded (its chunks are kept)


def decompose_chunks(partial, backbone, images, *, client=None, checkpoint: str | None = None, batch_size: int = 64,
                     token_dtype: str = "float32", on_progress: Progress = None, should_stop: StopFlag = None) -> None:
    """Fill the token contribution cache in ``partial.group``, one storage chunk of ``tokens`` per chunk.

    Parameters
    ----------
    partial : store.PartialStep
        The features step's partial; a resumed one keeps its arrays and complete chunks.
    backbone : models.backbone.Backbone
        The model the store was made with; Dask workers load the same one (``checkpoint``: its local weights
        file, on a path the workers see) and refuse to run if their weights differ.
    images : data.ImageStore
        The dataset's images (pickled as paths for the workers).
    client : distributed.Client, optional
        Decompose on its workers, which write their tokens straight into the partial (the cluster must share
        its filesystem, as HPC clusters do); the pooled arrays come back to the driver.
    batch_size : int
        Images per forward pass.
    token_dtype : "float32" or "float16"
        How ``tokens`` is stored (writes are cast to it).
    on_progress, should_stop : callable, optional
        In images; see :func:`run_chunks`.
    """
    from napari_mine.decompose import create_cache_arrays, output_dim, token_count, vision_tower

    visual = vision_tower(backbone.model)
    group, total = partial.group, len(images)
    if "tokens" in group:
        arrays = {name: group[name] for name in CACHE_ARRAYS}
    else:
        arrays = create_cache_arrays(group, total, token_count(visual), output_dim(visual), token_dtype)
    rows = arrays["tokens"].chunks[0]
    bounds = [(start, min(start + rows, total)) for start in range(0, total, rows)]
    if client is None:
        chunks = [(_decompose_into, (backbone, images, arrays["tokens"], start, stop, batch_size), stop - start)
                  for start, stop in bounds]
    else:
        spec = {"name": backbone.name, "pretrained": backbone.pretrained, "checkpoint": checkpoint,
                "model_id": backbone.record["id"]}
        tokens_path = str(_local_path(group) / "tokens")
        chunks = [(_decompose_rows, (spec, images, tokens_path, start, stop, batch_size), stop - start)
                  for start, stop in bounds]

    def write(index: int, pooled) -> None:
        rest, features = pooled
        start = bounds[index][0]
        arrays["rest"][start:start + len(rest)] = rest
        arrays["features"][start:start + len(features)] = features

    run_chunks(partial, chunks, write, client=client, on_progress=on_progress, should_stop=should_stop)


def _local_path(group) -> Path:
    root = getattr(group.store, "root", None)
    if root is None:
        raise MineInputError("Dask feature extraction needs a results folder on a local or shared filesystem.")
    return Path(root) / group.path


def _decompose_into(backbone, images, tokens, start: int, stop: int, batch_size: int):
    """Decompose images ``start:stop`` batch by batch, write their tokens, return the pooled (rest, features)."""
    from napari_mine.decompose import decompose_images

    rest, features = [], []
    for first in range(start, stop, batch_size):
        last = min(first + batch_size, stop)
        parts = decompose_images(backbone, backbone.preprocess(images[np.arange(first, last)])).normalized()
        tokens[first:last] = parts.tokens
        rest.append(parts.rest)
        features.append(parts.embedding)
    return np.concatenate(rest), np.concatenate(features)


def _decompose_rows(spec: dict, images, tokens_path: str, start: int, stop: int, batch_size: int):
    """Worker task: :func:`_decompose_into` with the worker's own backbone, into the shared tokens array."""
    import zarr

    backbone = _worker_backbone(spec["name"], spec["pretrained"], spec["checkpoint"])
    if backbone.record["id"] != spec["model_id"]:
        raise MineInputError(f"a Dask worker loaded {backbone.record['id']!r}, not the results folder's "
                             f"{spec['model_id']!r}; give the workers the same weights (--checkpoint on a shared path).")
    return _decompose_into(backbone, images, zarr.open_array(tokens_path, mode="r+"), start, stop, batch_size)


def profile_block(root: str, stamp: str, space, targets, top_k: int):
    """Task: the profiles (describe.VoxelProfiles) of one block of targets, read through the worker's
    :class:`~napari_mine.results.Results` of ``root`` (``stamp``: when its encoder was fitted)."""
    return worker_results(root, stamp).profiles(space, targets, top_k=top_k, use_saved=False)


@functools.lru_cache(maxsize=2)
def worker_results(root: str, stamp: str):
    """A worker's read session of a results folder (``stamp`` tells one state of the folder from another)."""
    from napari_mine.results import Results

    return Results.open(root)


@functools.lru_cache(maxsize=2)
def _worker_backbone(name: str, pretrained: str | None, checkpoint: str | None):
    """The backbone of a worker, loaded once per process (on its GPU when it has one)."""
    from napari_mine.models.backbone import load_backbone

    return load_backbone(name, pretrained=pretrained, checkpoint=checkpoint, device="auto")
