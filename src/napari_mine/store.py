"""The results store: one directory per study that the CLI writes and the viewer opens.

Layout::

    RESULTS/
      manifest.json      format version, model, dataset source, settings and the steps done
      brain.zarr         mask, affine, anatomy, ROI volumes and label tables (what the viewer draws)
      features.zarr      per-image features, token contributions, non-spatial rest (DESIGN.md §2)
      encoder.zarr       ridge weights, effective weights, per-voxel α and accuracy

Each step's arrays are a zarr store of their own, written beside the target under a temporary name and
renamed into place, and the manifest is replaced after that: a step counts as done only once the manifest
names it, so an interrupted run never leaves a result that looks complete, and it never touches the steps
that were already there.

The long steps (features, profiles, validation) are written chunk by chunk into a persistent partial folder,
``RESULTS/.STEP.partial/`` (see :meth:`ResultsStore.resumable_step`): a run killed mid-way resumes from its
last complete chunk, and only the finished step is renamed into place and named in the manifest.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from napari_mine.errors import MineInputError
from napari_mine.results import MANIFEST, Manifest, Results

PARTIAL_STATE = "state.json"
log = logging.getLogger(__name__)


def write_json_atomic(path: Path, payload: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True, default=_json_default)
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in the manifest")


class ResultsStore:
    """A results directory being written: add a step atomically; read it back through :class:`Results`."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._manifest: tuple[tuple, Manifest] | None = None

    # ---- creation and manifest -------------------------------------------------------------
    @classmethod
    def create(cls, root: str | os.PathLike, *, model: dict, dataset: dict,
               checkpoint: str | os.PathLike | None = None) -> "ResultsStore":
        """Start a store for `dataset` and `model` (plain records that identify them).

        ``checkpoint`` is the local weights file the model was loaded from; it is recorded so that opening
        the results later finds the same weights without asking.
        """
        store = cls(root)
        store.root.mkdir(parents=True, exist_ok=True)
        checkpoint = str(Path(checkpoint).expanduser().resolve()) if checkpoint else None
        if (store.root / MANIFEST).exists():
            existing = store.manifest
            if existing.model.id != model.get("id"):
                raise MineInputError(
                    f"{store.root} already holds results of model {existing.model.id!r}, not "
                    f"{model.get('id')!r}; choose another --out folder or delete that one."
                )
            if checkpoint and checkpoint != existing.model.checkpoint:
                store._write_manifest(existing.with_checkpoint(checkpoint))
            return store
        manifest = Manifest.new(model, dataset, time.strftime("%Y-%m-%dT%H:%M:%S"))
        store._write_manifest(manifest.with_checkpoint(checkpoint))
        return store

    @classmethod
    def open(cls, root: str | os.PathLike) -> "ResultsStore":
        """Open an existing store, refusing folders that are not one or are of another format version."""
        store = cls(root)
        store.manifest  # noqa: B018 - parsing checks the format and version
        return store

    @property
    def manifest(self) -> Manifest:
        """The typed manifest, parsed again only when the file changed."""
        path = self.root / MANIFEST
        try:
            stat = os.stat(path)
            stamp = (stat.st_mtime_ns, stat.st_ino, stat.st_size)
        except OSError:
            stamp = None
        if self._manifest is None or stamp is None or self._manifest[0] != stamp:
            self._manifest = (stamp, Manifest.read(self.root))
        return self._manifest[1]

    def _write_manifest(self, manifest: Manifest) -> None:
        write_json_atomic(self.root / MANIFEST, manifest.to_dict())
        self._manifest = None

    def has(self, step: str) -> bool:
        return self.manifest.has(step)

    def require(self, step: str, hint: str) -> None:
        if not self.has(step):
            raise MineInputError(f"{self.root} has no {step!r} results yet; {hint}")

    def check_model(self, model_id: str) -> None:
        """Refuse to mix a store with a model other than the one that made it."""
        stored = self.manifest.model.id
        if stored != model_id:
            raise MineInputError(
                f"{self.root} was computed with model {stored!r} but {model_id!r} is loaded; load that model or "
                "recompute the results with this one."
            )

    def results(self) -> Results:
        """A read session over what has been written so far."""
        return Results(self.root, self.manifest)

    # ---- arrays -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def write_step(self, step: str, settings: dict | None = None) -> Iterator[Any]:
        """Yield a fresh zarr group for `step`; on success move it into place and record it.

        If the body raises (or is cancelled), the temporary group is deleted and the store is as before.
        """
        import zarr

        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{step}.", suffix=".tmp"))
        try:
            group = zarr.open_group(tmp / "data.zarr", mode="w")
            yield group
            self._finish_step(step, settings or {}, tmp / "data.zarr")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _finish_step(self, step: str, settings: dict, data: Path | None) -> None:
        """Rename ``data`` (a finished zarr store) to ``STEP.zarr`` and record the step in the manifest."""
        old = None
        if data is not None:
            target = self.root / f"{step}.zarr"
            if target.exists():
                old = self.root / f".{step}.old-{os.getpid()}-{time.time_ns()}"
                os.replace(target, old)
            os.replace(data, target)
        self._write_manifest(self.manifest.with_step(step, settings, time.strftime("%Y-%m-%dT%H:%M:%S")))
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def record_step(self, step: str, settings: dict) -> None:
        """Name a step that keeps no arrays (its files are written atomically on their own) in the manifest."""
        self._finish_step(step, _as_json(settings), None)

    def is_current(self, step: str, settings: dict) -> bool:
        """Whether ``step`` is done with exactly these settings (then a re-run has nothing to do)."""
        return self.has(step) and dict(self.manifest.settings(step)) == _as_json(settings)

    @contextlib.contextmanager
    def resumable_step(self, step: str, settings: dict) -> Iterator["PartialStep"]:
        """Yield the step's :class:`PartialStep`, resumed when one with these settings is on disk.

        A partial of other settings is discarded (with a logged note). If the body raises, or the process is
        killed, the partial stays for the next run to resume from (unless no chunk of it was complete). On
        success its ``data.zarr``, when the body made one, replaces ``STEP.zarr``, the manifest records the
        step and the partial folder goes.
        """
        settings = _as_json(settings)
        folder = self.root / f".{step}.partial"
        partial = PartialStep.open(folder, settings, step)
        try:
            yield partial
        except BaseException:
            if not partial.done:
                shutil.rmtree(folder, ignore_errors=True)
            raise
        data = folder / "data.zarr"
        self._finish_step(step, settings, data if data.exists() else None)
        shutil.rmtree(folder, ignore_errors=True)
        log.info("%s: done, %d chunks computed by this run and %d found complete", step, partial.computed,
                 partial.found)

    def update_summary(self, section: str, values: dict) -> dict:
        """Merge `values` under `section` in summary.json (atomic), returning the whole summary."""
        return update_summary(self.root, section, values)


def update_summary(folder: str | os.PathLike, section: str, values) -> dict:
    """Merge ``values`` under ``section`` in ``folder/summary.json`` (a results or a study folder), atomically;
    returns the whole summary."""
    path = Path(folder) / "summary.json"
    summary = json.loads(path.read_text()) if path.exists() else {}
    summary[section] = values
    write_json_atomic(path, summary)
    return summary


class PartialStep:
    """A step being computed chunk by chunk in ``RESULTS/.STEP.partial/``: chunks are the unit of resume.

    ``state.json`` holds the step's settings and which chunks are complete; it is rewritten atomically after
    each chunk, so a kill loses at most the chunk in flight. Array chunks go to ``data.zarr`` inside (zarr
    writes every storage chunk to a temporary file and renames it, so a chunk killed mid-write is redone from
    scratch, never read half-written); other chunk results go to ``chunk-NNNNN.pkl`` files, written the same way.
    """

    def __init__(self, folder: Path, settings: dict, done=()):
        self.folder = folder
        self.settings = settings
        self.done = set(int(index) for index in done)
        self.found = len(self.done)  # chunks complete when this run started
        self.computed = 0  # chunks this run completed
        self._group = None

    @classmethod
    def open(cls, folder: Path, settings: dict, step: str) -> "PartialStep":
        """The partial in ``folder`` when it was made with ``settings``, else a fresh one."""
        state_path = folder / PARTIAL_STATE
        state = None
        if state_path.is_file():
            try:
                state = json.loads(state_path.read_text())
            except ValueError:
                state = None
        if state is not None and state.get("settings") == settings:
            partial = cls(folder, settings, state.get("done", ()))
            if partial.done:
                log.info("%s: resuming from %s (%d chunks already complete)", step, folder.name, len(partial.done))
            return partial
        if folder.exists():
            if state is not None:
                log.info("%s: discarding %s, which was computed with other settings", step, folder.name)
            shutil.rmtree(folder)
        folder.mkdir()
        partial = cls(folder, settings)
        partial._write_state()
        return partial

    @property
    def group(self):
        """The zarr group being filled (created on first use, reopened on resume)."""
        import zarr

        if self._group is None:
            self._group = zarr.open_group(self.folder / "data.zarr", mode="a")
        return self._group

    def pending(self, n_chunks: int) -> list[int]:
        """The chunks of ``0..n_chunks-1`` not complete yet, in order."""
        return [index for index in range(n_chunks) if index not in self.done]

    def mark_done(self, index: int) -> None:
        """Record chunk ``index`` as complete (its results must be written already)."""
        self.done.add(int(index))
        self.computed += 1
        self._write_state()

    def save_chunk(self, index: int, value) -> None:
        """Keep a chunk's result (any picklable value), atomically; :meth:`mark_done` then counts it."""
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".chunk.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            pickle.dump(value, handle, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, self._chunk_path(index))

    def load_chunk(self, index: int):
        """A result kept by :meth:`save_chunk`."""
        with open(self._chunk_path(index), "rb") as handle:
            return pickle.load(handle)

    def _chunk_path(self, index: int) -> Path:
        return self.folder / f"chunk-{int(index):05d}.pkl"

    def _write_state(self) -> None:
        write_json_atomic(self.folder / PARTIAL_STATE, {"settings": self.settings, "done": sorted(self.done)})


def _as_json(settings: dict) -> dict:
    """Settings as the manifest gives them back (numpy values to Python, tuples to lists), for comparison."""
    return json.loads(json.dumps(settings or {}, sort_keys=True, default=_json_default))


def write_arrays(group, arrays: dict[str, np.ndarray], chunk_rows: int | None = None) -> None:
    """Write plain arrays into a zarr group, chunked along the first axis when `chunk_rows` is given."""
    for name, values in arrays.items():
        values = np.asarray(values)
        chunks = None
        if chunk_rows and values.ndim >= 1 and values.shape[0] > chunk_rows:
            chunks = (chunk_rows,) + values.shape[1:]
        group.create_array(name, data=values, chunks=chunks if chunks else "auto")
