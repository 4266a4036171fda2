"""npe2 sample data: the synthetic demo world with a fitted encoder, built once and reused.

The first call runs ``napari_mine.demo.run_demo`` (world → features → encoder fit, two minutes on two
CPU cores) into a cache folder; later calls only read the results store. The cache folder is
``$NAPARI_MINE_CACHE/demo-seed<seed>-<n>`` or ``~/.cache/napari-mine/demo-seed<seed>-<n>``.
"""

from __future__ import annotations

import os
from pathlib import Path

from napari_mine.vocabulary import CACHE_ENV

SAMPLE_IMAGES = 1000
SAMPLE_SEED = 0


def cache_root() -> Path:
    """The folder napari-mine caches derived data in (the same one the text embeddings use)."""
    return Path(os.environ.get(CACHE_ENV) or Path("~/.cache/napari-mine").expanduser())


def demo_store(folder: str | os.PathLike | None = None, *, n_images: int = SAMPLE_IMAGES,
               seed: int = SAMPLE_SEED, log=lambda message: None) -> Path:
    """The results store of the demo world, built into ``folder`` the first time.

    Parameters
    ----------
    folder : path, optional
        Where the store lives; default a folder named after ``seed`` and ``n_images`` in the cache.
    n_images, seed : int
        Size and seed of the synthetic world.
    log : callable
        Receives one line per demo step while it is built.

    Returns
    -------
    Path of the results store (a folder holding ``manifest.json``).
    """
    from napari_mine.models.backbone import import_torch
    from napari_mine.store import ResultsStore

    folder = Path(folder) if folder is not None else cache_root() / f"demo-seed{seed}-{n_images}"
    if (folder / "manifest.json").is_file() and ResultsStore.open(folder).has("encoder"):
        return folder
    import_torch()
    from napari_mine.demo import run_demo

    run_demo(folder, seed=seed, n_images=n_images, log=log)
    return folder


def demo_world() -> list[tuple]:
    """Sample-data hook: the demo world's anatomy, accuracy map, ROIs and stimuli as layer tuples."""
    from napari.utils.notifications import show_info

    from napari_mine._reader import read_store

    folder = cache_root() / f"demo-seed{SAMPLE_SEED}-{SAMPLE_IMAGES}"
    if not (folder / "manifest.json").is_file():
        show_info(f"Building the napari-mine demo world once into {folder} (a few minutes); later loads are quick.")
    return read_store(demo_store(folder))
