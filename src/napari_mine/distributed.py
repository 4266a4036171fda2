"""Feature extraction on a Dask cluster: the batch step that outgrows one machine (NSD: 73,000 images).

Each task decomposes one chunk of images (the token array's zarr chunk, so no two tasks write the same chunk)
on a worker, which loads the backbone itself once and checks that its weights are the ones the store was made
with. Workers write their token contributions straight into the store (the cluster must share its
filesystem, as HPC clusters do); the small pooled arrays come back to the client, which writes them and
reports progress. Serial extraction is :func:`napari_mine.decompose.decompose_to_store`; both fill the same
arrays, so everything downstream is unchanged.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

import numpy as np

from napari_mine.errors import MineInputError, require_extra


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


def decompose_on_cluster(
    client,
    backbone,
    group,
    images,
    *,
    checkpoint: str | None = None,
    batch_size: int = 64,
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> int:
    """Fill the token contribution cache in the zarr ``group`` with the cluster's workers.

    Parameters
    ----------
    client : distributed.Client
    backbone : models.backbone.Backbone
        The model the store was made with; workers load the same one (``checkpoint``: its local weights file,
        on a path the workers see) and refuse to run if their weights differ.
    group : zarr group
        The open features group, on a local filesystem the workers share.
    images : data.ImageStore
        The dataset's images (pickled as paths for the workers).
    batch_size : int
        Images per forward pass on a worker.
    on_progress, should_stop : callable, optional
        As in :func:`napari_mine.decompose.decompose_to_store`; a stop cancels the tasks not yet done and
        returns with the group's ``complete`` attribute False.

    Returns
    -------
    int
        The number of images written.
    """
    require_extra("dask")
    from distributed import as_completed

    from napari_mine.decompose import create_cache_arrays, output_dim, token_count, vision_tower

    visual = vision_tower(backbone.model)
    total = len(images)
    arrays = create_cache_arrays(group, total, token_count(visual), output_dim(visual))
    group.attrs.update({"complete": False, "n_done": 0})
    spec = {"name": backbone.name, "pretrained": backbone.pretrained, "checkpoint": checkpoint,
            "model_id": backbone.record["id"]}
    rows = arrays["tokens"].chunks[0]
    tokens_path = _local_path(group) / "tokens"
    futures = [client.submit(_decompose_rows, spec, images, str(tokens_path), start, min(start + rows, total),
                             batch_size, pure=False) for start in range(0, total, rows)]
    done = 0
    try:
        for future in as_completed(futures):
            if should_stop is not None and should_stop():
                return done
            start, rest, features = future.result()
            arrays["rest"][start:start + len(rest)] = rest
            arrays["features"][start:start + len(features)] = features
            done += len(rest)
            group.attrs["n_done"] = done
            if on_progress is not None:
                on_progress(done, total)
    finally:
        client.cancel(futures)
    group.attrs["complete"] = True
    return done


def _local_path(group) -> Path:
    root = getattr(group.store, "root", None)
    if root is None:
        raise MineInputError("Dask feature extraction needs a results folder on a local or shared filesystem.")
    return Path(root) / group.path


def _decompose_rows(spec: dict, images, tokens_path: str, start: int, stop: int, batch_size: int):
    """Worker task: decompose images ``start:stop``, write their tokens, return the pooled arrays."""
    import zarr

    from napari_mine.decompose import decompose_images

    backbone = _worker_backbone(spec["name"], spec["pretrained"], spec["checkpoint"])
    if backbone.record["id"] != spec["model_id"]:
        raise MineInputError(f"a Dask worker loaded {backbone.record['id']!r}, not the results folder's "
                             f"{spec['model_id']!r}; give the workers the same weights (--checkpoint on a shared path).")
    tokens = zarr.open_array(tokens_path, mode="r+")
    rest, features = [], []
    for first in range(start, stop, batch_size):
        last = min(first + batch_size, stop)
        parts = decompose_images(backbone, backbone.preprocess(images[np.arange(first, last)])).normalized()
        tokens[first:last] = parts.tokens
        rest.append(parts.rest)
        features.append(parts.embedding)
    return start, np.concatenate(rest), np.concatenate(features)


@functools.lru_cache(maxsize=2)
def _worker_backbone(name: str, pretrained: str | None, checkpoint: str | None):
    """The backbone of a worker, loaded once per process (on its GPU when it has one)."""
    from napari_mine.models.backbone import load_backbone

    return load_backbone(name, pretrained=pretrained, checkpoint=checkpoint, device="auto")
