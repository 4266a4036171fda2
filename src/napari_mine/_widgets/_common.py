"""Shared pieces of the dock widgets: finding a store's layers, running jobs, charts and thumbnails.

Layers are the viewer's shared state: every layer read from a results store carries
``metadata["napari_mine"]`` (store path and role), so any widget finds "the brain", "the stimuli" or "the
selected voxel" of a store by looking at the layer list, never at another widget.
"""

from __future__ import annotations

import atexit
import inspect
import logging
import queue
import threading
import time
import traceback
from dataclasses import dataclass
from functools import cache, partial

import numpy as np
from qtpy.QtCore import QEvent, QObject, QRectF, Qt
from qtpy.QtGui import QColor, QImage, QPainter, QPixmap
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QSizePolicy, QWidget

from napari_mine._reader import META
from napari_mine.errors import Cancelled, MineInputError

BRAIN_ROLES = ("accuracy", "anatomy", "mask", "roi", "clusters")
SHARED_CHOICES = ("checkpoint", "vocabulary")  # set in Data and model, read by the other widgets
POSITIVE, NEGATIVE = "#f24d26", "#3b73f2"  # the attribution map's red and blue, for bars of the same sign
SERIES_COLORS = ("#f2a33a", "#3fbfbf", "#c86fd9", "#8fd14f", "#e8e05a", "#ef6f9c", "#6f8ff2", "#b0b0b0")  # subjects
log = logging.getLogger("napari_mine")


# ---- layers -----------------------------------------------------------------------------------------
def mine_meta(layer) -> dict:
    """The napari-mine metadata of a layer ({} for layers that are not from a results store)."""
    meta = getattr(layer, "metadata", {}).get(META)
    return meta if isinstance(meta, dict) else {}


def store_layers(viewer, role: str | None = None, store: str | None = None) -> list:
    """Layers of results stores, topmost first, optionally of one role and one store."""
    found = []
    for layer in reversed(viewer.layers):
        meta = mine_meta(layer)
        if meta and (role is None or meta.get("role") == role) and (store is None or meta.get("store") == store):
            found.append(layer)
    return found


def marked_voxels(viewer, store: str | None = None) -> list:
    """The "selected voxel" layers that mark one (the inspector makes a store's marker empty when it opens)."""
    return [layer for layer in store_layers(viewer, role="voxel", store=store) if "voxel" in mine_meta(layer)]


def current_store(viewer) -> str | None:
    """The store of the selected layer, else of the topmost store layer."""
    active = viewer.layers.selection.active
    if active is not None and mine_meta(active).get("store"):
        return mine_meta(active)["store"]
    layers = store_layers(viewer)
    return mine_meta(layers[0])["store"] if layers else None


def brain_layer(viewer, store: str | None = None):
    """The brain volume clicks are resolved against: of the current (or given) store, the accuracy map,
    else the anatomy, the mask or an ROI volume (all share the store's grid), or None."""
    store = store or current_store(viewer)
    candidates = [layer for layer in store_layers(viewer, store=store)
                  if mine_meta(layer).get("role") in BRAIN_ROLES and layer.ndim == 3]
    candidates.sort(key=lambda layer: BRAIN_ROLES.index(mine_meta(layer)["role"]))
    return candidates[0] if candidates else None


def focus_on_brain(viewer, store: str) -> None:
    """Show the brain slice with the most voxels of the store's map (accuracy, else mask), and fit the view."""
    layers = store_layers(viewer, role="accuracy", store=store) or store_layers(viewer, role="mask", store=store)
    if layers and "hemi" in mine_meta(layers[0]):  # a cortical surface: its view decides 2-D or 3-D
        fit_surface_view(viewer, store)
        return
    if layers:
        show_densest_slice(viewer, layers[0])
    viewer.reset_view()


def fit_surface_view(viewer, store: str) -> None:
    """Display a surface store's view (its layers' ``view``): the flat map in 2-D at its plane, the inflated or
    pial cortex in 3-D with the cortex filling the canvas (the stimulus plane beside it would shrink it)."""
    layers = [layer for layer in store_layers(viewer, store=store) if "hemi" in mine_meta(layer)]
    if not layers:
        return
    flat = mine_meta(layers[0])["view"] == "flat"
    viewer.dims.ndisplay = 2 if flat else 3
    if flat:
        viewer.dims.set_point(viewer.dims.ndim - layers[0].ndim, layers[0].data_to_world([0.0, 0.0, 0.0])[0])
    viewer.reset_view()
    if not flat:
        corners = np.concatenate([layer.extent.world[:, -layer.ndim:] for layer in layers])
        low, high = corners.min(axis=0), corners.max(axis=0)
        world = viewer.layers.extent.world[:, list(viewer.dims.displayed)]
        viewer.camera.center = tuple((low + high) / 2)
        viewer.camera.zoom *= float(np.max(world[1] - world[0]) / max(np.max(high - low), 1e-6))


def show_densest_slice(viewer, layer) -> None:
    """Move the slice slider of a 3-D volume layer to its slice with the most finite, non-zero values."""
    data = np.asarray(layer.data)
    filled = (np.isfinite(data) & (data != 0)) if data.dtype.kind == "f" else data > 0
    counts = filled.reshape(filled.shape[0], -1).sum(axis=1)
    if counts.any():
        axis = viewer.dims.ndim - layer.ndim
        viewer.dims.set_point(axis, layer.data_to_world([int(np.argmax(counts)), 0, 0])[0])


def stimulus_row(viewer, stimuli) -> int:
    """The image under the stimulus slider: the stimulus layer's first data index at the current point."""
    data_point = stimuli.world_to_data(viewer.dims.point)
    return int(np.clip(np.round(data_point[0]), 0, stimuli.data.shape[0] - 1))


def set_stimulus_row(viewer, stimuli, row: int) -> None:
    """Move the stimulus slider to image ``row``."""
    axis = viewer.dims.ndim - stimuli.ndim
    world = stimuli.data_to_world([row] + [0] * (stimuli.ndim - 1))[0]
    viewer.dims.set_point(axis, world)


def _identity(meta: dict) -> tuple:
    return meta.get("store"), meta.get("role"), meta.get("roi"), meta.get("hemi")


def show_layer_tuples(viewer, tuples, extra: dict | None = None) -> list:
    """Add reader layer tuples to the viewer, or refresh the data of the store's layers already there.

    ``extra`` is merged into each layer's napari-mine metadata (the chosen model checkpoint and
    vocabulary, which the other widgets read from the layers); a store's new layers inherit those choices
    from its layers already shown. A store's "brain mask" layer is removed once its accuracy map is shown.
    """
    shown = []
    for data, kwargs, kind in tuples:
        meta = dict(kwargs.get("metadata", {}).get(META, {}))
        siblings = store_layers(viewer, store=meta.get("store"))
        inherited = {key: value for layer in reversed(siblings) for key, value in mine_meta(layer).items()
                     if key in SHARED_CHOICES}
        meta = {**inherited, **meta, **(extra or {})}
        existing = [layer for layer in siblings if _identity(mine_meta(layer)) == _identity(meta)]
        if existing:
            layer = existing[0]
            layer.data = data
            layer.metadata = {**layer.metadata, **kwargs.get("metadata", {}), META: {**mine_meta(layer), **meta}}
        else:
            layer = getattr(viewer, f"add_{kind}")(data, **{**kwargs, "metadata": {**kwargs.get("metadata", {}),
                                                                                  META: meta}})
        shown.append(layer)
    for store in {mine_meta(layer).get("store") for layer in shown}:
        if store_layers(viewer, role="accuracy", store=store):
            for layer in store_layers(viewer, role="mask", store=store):
                viewer.layers.remove(layer)
    return shown


# ---- jobs -------------------------------------------------------------------------------------------
# Every job of every dock starts through `start_job`: the job's code runs in a helper thread (plain Python, no
# Qt), pumped by a napari generator thread worker that passes its reports to the main thread and can be
# aborted at any heartbeat. A stop request sets the job's flag: engine steps end at their next check (leaving
# the store as it was), generator jobs at their next report, and a plain function's result is dropped. The
# outcome ("done", "failed" or "cancelled") is known only when the job's code has ended, so a dock says
# "Cancelled" when the step has stopped, not when the request was made. Closing a dock (removing or deleting
# it), quitting the application or leaving the interpreter stops the jobs, drops their callbacks and waits
# (bounded) for their code to end, so nothing is half-written and no callback reaches a deleted Qt object.
HEARTBEAT_S = 0.1  # a silent job's worker checks this often whether it was aborted
CLOSE_WAIT_S = 20.0  # the longest a closing dock, application or interpreter waits for its jobs to end
DONE, FAILED, CANCELLED = "done", "failed", "cancelled"
_END = object()
_live_jobs: set[Job] = set()  # started, and their worker has not finished: across all docks
_exit_hooks: list = []  # installed once, by the first job


@dataclass
class Failure:
    """What a job raised, handed back to the main thread instead of being raised there."""

    error: Exception
    trace: str


def report_failure(value) -> bool:
    """Show a job's Failure as an error notification (True), or return False for a real result."""
    from napari.utils.notifications import show_error

    if not isinstance(value, Failure):
        return False
    if isinstance(value.error, MineInputError):
        show_error(str(value.error))
    else:
        log.error("napari-mine job failed:\n%s", value.trace)
        show_error(f"{type(value.error).__name__}: {value.error}")
    return True


class Job:
    """A running job of a dock widget (made by :func:`start_job`).

    ``stop`` is the job's cooperative stop flag, ``ended`` is set (in the helper thread) once the job's code
    has returned or raised, ``outcome`` is "done", "failed" or "cancelled" once the worker has finished,
    and ``worker`` is the napari generator worker (its ``yielded`` signal carries the job's reports, and
    ``None`` at each heartbeat).
    """

    def __init__(self, owner_jobs: _DockJobs, name: str, callbacks: dict, progress=None):
        self.name = name
        self.stop = threading.Event()
        self.ended = threading.Event()
        self.outcome = ""
        self.worker = None
        self._owner_jobs = owner_jobs
        self._callbacks: dict | None = callbacks  # None once abandoned: nothing reaches the dock any more
        self.progress = progress
        self._value = None
        self._result = Failure(RuntimeError(f"the job {name} ended without a result"), "")
        self._helper_started = False
        self._in_run = threading.Event()  # the worker's run() began in a pool thread
        self._out_of_run = threading.Event()  # ... and has returned

    def __repr__(self) -> str:
        return f"napari-mine job {self.name}"

    @property
    def running(self) -> bool:
        """True until the worker has finished."""
        return self in _live_jobs

    def cancel(self) -> None:
        """Ask the job to stop; its callbacks still run, with the outcome "cancelled" once its code ended."""
        self.stop.set()

    def abandon(self, exiting: bool = False) -> None:
        """Stop the job and drop its callbacks (its dock is going away); its worker ends at the next heartbeat.

        Does not wait: see :meth:`wait`.
        """
        from qtpy.QtCore import QThreadPool

        self._callbacks = None
        self.stop.set()
        self._owner_jobs.jobs.discard(self)
        self._close_progress()
        if self.worker is None:
            return
        self.worker.abort()
        if not self._in_run.is_set() and QThreadPool.globalInstance().tryTake(self.worker):
            self._out_of_run.set()  # it was still queued: it will never run
            _live_jobs.discard(self)
            if not exiting:
                self.worker.finished.emit()  # for napari's task list (the job's own handler ignores it now)

    def wait(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` seconds) until the job's code and its worker thread have ended."""
        deadline = time.monotonic() + timeout
        if self._in_run.is_set():
            self._out_of_run.wait(max(0.0, deadline - time.monotonic()))
        if self._helper_started:
            self.ended.wait(max(0.0, deadline - time.monotonic()))
        over = (self.ended.is_set() or not self._helper_started) and (
            self._out_of_run.is_set() or not self._in_run.is_set())
        if over:
            _live_jobs.discard(self)
        return over

    # ---- in the worker's threads ------------------------------------------------------------------------
    def _pump(self, function, args, kwargs):
        """The worker's generator (a pool thread): run the job in a helper thread and pass its reports on."""
        reports: queue.SimpleQueue = queue.SimpleQueue()
        helper = threading.Thread(target=self._run, args=(function, args, kwargs, reports), daemon=True,
                                  name=f"napari-mine {self.name}")
        self._helper_started = True
        helper.start()
        while True:
            try:
                report = reports.get(timeout=HEARTBEAT_S)
            except queue.Empty:
                yield None  # a chance for the worker to be aborted
                continue
            if report is _END:
                return self._result
            yield report

    def _run(self, function, args, kwargs, reports) -> None:
        """The job's code (the helper thread): its result, or its error as a Failure, goes to ``_result``."""
        try:
            if inspect.isgeneratorfunction(function):
                self._result = _drive(function(*args, stop=self.stop, **kwargs), self.stop, reports.put)
            else:
                self._result = function(*args, **kwargs)
        except Exception as error:  # every failure of a job is reported to the user, none kills the viewer
            self._result = Failure(error, traceback.format_exc())
        finally:
            self.ended.set()
            reports.put(_END)

    # ---- on the main thread ---------------------------------------------------------------------------
    def _on_yielded(self, report) -> None:
        callbacks = self._callbacks
        if callbacks and callbacks["yielded"] is not None:
            callbacks["yielded"](report)

    def _on_returned(self, value) -> None:
        self._value = value

    def _on_finished(self) -> None:
        callbacks, self._callbacks = self._callbacks, None
        _live_jobs.discard(self)
        self._owner_jobs.jobs.discard(self)
        self._close_progress()
        if callbacks is None:  # abandoned: its dock is gone or going
            return
        value = self._value
        if self.stop.is_set() or (isinstance(value, Failure) and isinstance(value.error, Cancelled)):
            self.outcome = CANCELLED
        else:
            self.outcome = FAILED if isinstance(value, Failure) else DONE
            if callbacks["returned"] is not None:
                callbacks["returned"](value)
        if callbacks["finished"] is not None:
            callbacks["finished"](self.outcome)

    def _close_progress(self) -> None:
        progress, self.progress = self.progress, None
        if progress is not None:
            progress.close()


def _drive(generator, stop: threading.Event, report):
    """Run a generator job to its end, passing its reports to ``report``; after a stop request it is closed at
    its next report (a running engine step ends first, see :func:`steps_of`) and Cancelled is raised."""
    try:
        while True:
            try:
                item = next(generator)
            except StopIteration as end:
                return end.value
            report(item)
            if stop.is_set():
                raise Cancelled("the job was cancelled.")
    finally:
        generator.close()


def start_job(owner, function, *args, returned=None, finished=None, yielded=None, progress=None,
              **kwargs) -> Job:
    """Start ``function(*args, **kwargs)`` for the dock widget ``owner``: the one way a dock runs a job.

    A generator function is a staged job: it is called with ``stop=`` (a ``threading.Event``) as well, yields
    reports (``yielded`` receives them on the main thread, and None at each heartbeat) and returns its result.
    ``returned`` receives the result, or a :class:`Failure` (see :func:`report_failure`), unless the job was
    cancelled; ``finished`` then receives the outcome ("done", "failed" or "cancelled"). ``progress`` is a
    description (an indeterminate bar in napari's activity dock) or a napari progress bar, closed when the job
    ends.

    The callbacks run on the main thread, only while the dock is docked and alive: removing or deleting it
    abandons its jobs (see :class:`Job`). Returns the Job.
    """
    from napari.qt.threading import create_worker
    from napari.utils import progress as napari_progress

    owner_jobs = _dock_jobs(owner)
    name = getattr(function, "__name__", "job")
    bar = napari_progress(total=0, desc=progress) if isinstance(progress, str) else progress
    job = Job(owner_jobs, name, {"returned": returned, "finished": finished, "yielded": yielded}, bar)
    job.worker = worker = create_worker(job._pump, function, args, kwargs, _start_thread=False,
                                        _worker_class=_job_worker_class())
    worker.job = job
    worker.yielded.connect(job._on_yielded)
    worker.returned.connect(job._on_returned)
    worker.finished.connect(job._on_finished)
    owner_jobs.jobs.add(job)
    _live_jobs.add(job)
    _install_exit_hooks()
    worker.start()
    return job


def run_here(function, *args):
    """Run a job's function on the Qt thread and return what :func:`start_job` would hand to ``returned``
    (its result, or a :class:`Failure`): for work of a few milliseconds on data in memory, where a worker's
    hand-off and the extra redraw it causes would cost more than the work.

    Its matrix products run on one BLAS thread: after a threaded product OpenBLAS keeps its helper threads
    busy-waiting for about 0.1 s, which took the cores from the redraw that follows (a software rasteriser's
    threads, here): a click took 20 % longer on 2 quiet cores, a slider step 40 % longer on loaded ones."""
    try:
        with _blas_threads().limit(limits=1, user_api="blas"):
            return function(*args)
    except Exception as error:  # reported like a job's failure, never raised into a Qt callback
        return Failure(error, traceback.format_exc())


@cache
def _blas_threads():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def stop_jobs(jobs, timeout: float = CLOSE_WAIT_S, exiting: bool = False) -> bool:
    """Abandon ``jobs`` and wait, at most ``timeout`` seconds in all, for their code to end; True if all did."""
    jobs = list(jobs)
    for job in jobs:
        job.abandon(exiting)
    deadline = time.monotonic() + timeout
    stuck = [job.name for job in jobs if not job.wait(max(0.0, deadline - time.monotonic()))]
    if stuck:
        log.warning("napari-mine: jobs still running after %.0f s: %s", timeout, ", ".join(stuck))
    return not stuck


_worker_classes: list = []


def _job_worker_class():
    """napari's GeneratorWorker, made safe to outlive its dock (defined on first use: napari loads late)."""
    if _worker_classes:
        return _worker_classes[0]
    from napari.qt.threading import GeneratorWorker

    class JobWorker(GeneratorWorker):
        """A job's worker: ``quit()`` (napari's activity dock, the viewer's close) is a stop request that lets
        the job end cleanly; ``abort()`` ends the worker at its next heartbeat. Its end is known off the main
        thread, and a signal object deleted under it (the viewer is gone) ends it quietly."""

        job: Job

        def quit(self) -> None:
            self.job.cancel()

        def abort(self) -> None:
            super().quit()

        def run(self) -> None:
            self.job._in_run.set()
            try:
                super().run()
            except RuntimeError:  # "wrapped C/C++ object ... has been deleted": nobody is left to tell
                pass
            finally:
                self.job._out_of_run.set()

    _worker_classes.append(JobWorker)
    return JobWorker


class _DockJobs:
    """The running jobs of one dock widget; abandoned (and waited for) when the dock is removed or deleted."""

    def __init__(self, owner):
        self.jobs: set[Job] = set()
        self.watch = _RemovalWatch(owner, self)
        owner.installEventFilter(self.watch)
        owner.destroyed.connect(partial(_DockJobs.close, self))  # a plain object's: safe once the dock is gone

    def close(self, *args) -> None:
        stop_jobs(self.jobs)


class _RemovalWatch(QObject):
    """Closes a dock's jobs when the dock is taken out of the window (``remove_dock_widget``, its close button)."""

    def __init__(self, owner, dock_jobs: _DockJobs):
        super().__init__(owner)
        self.dock_jobs = dock_jobs

    def eventFilter(self, watched, event) -> bool:
        if event.type() == QEvent.Type.ParentChange and watched.parent() is None and self.dock_jobs.jobs:
            self.dock_jobs.close()
        return False


def _dock_jobs(owner) -> _DockJobs:
    jobs = owner.__dict__.get("_napari_mine_jobs")
    if jobs is None:
        jobs = owner.__dict__["_napari_mine_jobs"] = _DockJobs(owner)
    return jobs


def dock_jobs(owner) -> set[Job]:
    """The running jobs of a dock widget."""
    return set(_dock_jobs(owner).jobs)


def _stop_all_jobs() -> None:
    """The application quits or the interpreter exits: stop every job, wait for them (bounded)."""
    if _live_jobs:
        stop_jobs(_live_jobs, exiting=True)


def _install_exit_hooks() -> None:
    if _exit_hooks:
        return
    from qtpy.QtWidgets import QApplication

    atexit.register(_stop_all_jobs)  # runs before PyQt's own exit clean-up, which was registered earlier
    app = QApplication.instance()
    if app is not None:
        app.aboutToQuit.connect(_stop_all_jobs)
    _exit_hooks.append(app)


def steps_of(function, *args, stop: threading.Event, heartbeat_s: float = HEARTBEAT_S, **kwargs):
    """Run an engine step that reports through ``on_progress(done, total)`` and stops when
    ``should_stop()`` is true, as a generator: yields ``(done, total)`` as the step reports, and ``None``
    every ``heartbeat_s`` (a chance for a generator job to be stopped between reports).

    The step runs in a helper thread; setting ``stop`` makes the step end at its next check, leaving the store
    as it was. Closing the generator waits for the step to end (with ``stop`` set), so a cancelled job has
    stopped writing when it ends. Returns the step's result or raises its error.
    """
    reports: queue.Queue = queue.Queue()
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = function(*args, on_progress=lambda done, total: reports.put((done, total)),
                                        should_stop=stop.is_set, **kwargs)
        except BaseException as error:  # handed to the generator, which raises it in the job
            outcome["error"] = error
        finally:
            reports.put(StopIteration)

    helper = threading.Thread(target=run, name=f"napari-mine {getattr(function, '__name__', 'step')}", daemon=True)
    helper.start()
    ended = False
    try:
        while True:
            try:
                report = reports.get(timeout=heartbeat_s)
            except queue.Empty:
                yield None
                continue
            if report is StopIteration:
                ended = True
                break
            yield report
    finally:
        if not ended:  # closed early: the step ends at its next check
            stop.set()
        helper.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def staged(stage: str, reports):
    """The reports of a :func:`steps_of` generator as ``(stage, done, total)``; returns the step's result."""
    while True:
        try:
            report = next(reports)
        except StopIteration as end:
            return end.value
        yield (stage, *report) if report else (stage, -1, -1)


class StagedJobs:
    """The run and cancel controls of a dock that runs one staged job at a time (Fit, Counterfactual editor).

    The job is a generator function ``job(*args, stop)`` started with :meth:`run_staged`: it yields
    ``(stage, done, total)`` (``total`` 0: a stage of unknown length; ``done`` -1: no news) and returns its
    result. Its progress goes to the dock's ``bar`` and ``stage`` label and to napari's activity dock, where it
    can be cancelled too. Cancelling says "Cancelling…" at once and ``CANCELLED`` once the job has stopped.
    The dock has a ``job_finished`` signal (emitted with "done", "cancelled" or "failed") and defines ``run``,
    ``_show_result`` and ``_after_job``; ``FAILED`` and ``CANCELLED`` are what its stage label says then.
    ``add_job_controls`` makes the buttons, bar and label.
    """

    FAILED = "Failed (see the notification)."
    CANCELLED = "Cancelled."
    CANCELLING = "Cancelling…"
    job: Job | None = None

    def add_job_controls(self, layout, run_text: str) -> None:
        """The run and cancel buttons, the progress bar and the stage label, added to ``layout``."""
        buttons = QHBoxLayout()
        self.run_button = QPushButton(run_text)
        self.run_button.clicked.connect(self.run)
        buttons.addWidget(self.run_button)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        buttons.addWidget(self.cancel_button)
        layout.addLayout(buttons)
        self.bar = QProgressBar()
        layout.addWidget(self.bar)
        self.stage = QLabel("")
        self.stage.setWordWrap(True)
        layout.addWidget(self.stage)

    def run_staged(self, description: str, job, *args) -> Job:
        """Start the staged ``job`` (through :func:`start_job`); returns the Job."""
        from napari.utils import cancelable_progress

        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.stage.setText("Starting…")
        self.job = start_job(self, job, *args, yielded=self._on_progress, returned=self._on_returned,
                             finished=self._on_job_finished, progress=cancelable_progress(total=0, desc=description))
        return self.job

    def cancel(self) -> None:
        """Ask the running job to stop: its step ends at its next check, the job at its next report."""
        if self.job is not None and not self.job.stop.is_set():
            self.stage.setText(self.CANCELLING)
            self.cancel_button.setEnabled(False)
            self.job.cancel()

    def _on_progress(self, report) -> None:
        job = self.job
        progress = job.progress if job is not None else None
        if progress is None:
            return
        if progress.is_canceled:  # its cancel button in napari's activity dock
            self.cancel()
        if report is None or report[1] < 0 or job.stop.is_set():
            return
        stage, done, total = report
        self.stage.setText(stage)
        self.bar.setRange(0, max(total, 0))
        self.bar.setValue(done)
        progress.set_description(stage)
        if progress.total != total:
            progress.total = total
        progress.update(done - progress.n)

    def _on_returned(self, value) -> None:
        if report_failure(value):
            self.stage.setText(self.FAILED)
            return
        self.bar.setRange(0, 1)
        self.bar.setValue(1)
        self._show_result(value)

    def _on_job_finished(self, outcome: str) -> None:
        if outcome == CANCELLED:
            self.stage.setText(self.CANCELLED)
        self.job = None
        self.cancel_button.setEnabled(False)
        self._after_job()
        self.job_finished.emit(outcome)


# ---- drawing ----------------------------------------------------------------------------------------
def to_pixmap(image: np.ndarray, size: int) -> QPixmap:
    """A square thumbnail of an RGB uint8 image."""
    image = np.ascontiguousarray(image[..., :3], dtype=np.uint8)
    height, width = image.shape[:2]
    qimage = QImage(image.data, width, height, 3 * width, QImage.Format.Format_RGB888).copy()
    return QPixmap.fromImage(qimage).scaled(size, size, Qt.AspectRatioMode.KeepAspectRatio,
                                             Qt.TransformationMode.SmoothTransformation)


class BarChart(QWidget):
    """Horizontal bars of concepts and their scores, painted with Qt in napari's theme colours.

    Painting is a few milliseconds (a matplotlib canvas took ~100 ms per redraw on the Qt thread, on every
    click). Positive bars are red, negative ones blue: the attribution map's colours. Grouped bars
    (:meth:`set_groups`: several series, e.g. one per subject) have one colour per series and a legend.
    """

    ROW_PX = 17

    def __init__(self, viewer, height: int = 200, parent=None):
        super().__init__(parent)
        from napari.utils.theme import get_theme

        theme = get_theme(viewer.theme)
        self._foreground = QColor(theme.text.as_hex())
        self._muted = QColor(theme.secondary.as_hex())
        self.labels: list[str] = []
        self.values: list[float] = []
        self.series: dict[str, list[float]] = {}  # grouped bars: name -> a value per label
        self.xlabel = ""
        self.title = ""
        self.setMinimumHeight(height)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def set_bars(self, labels, values, xlabel: str, title: str = "") -> None:
        """Show ``values`` as bars, the first label on top."""
        self.series = {}
        self.labels, self.values = [str(label) for label in labels], [float(v) for v in values]
        self.xlabel, self.title = xlabel, title
        if self.labels:
            self.setFixedHeight(self._needed_height())
        self.update()

    def set_groups(self, labels, series: dict, xlabel: str, title: str = "") -> None:
        """Show a group of bars per label, one bar per series (``{name: a value per label}``), in series order."""
        self.series = {str(name): [float(v) for v in values] for name, values in series.items()}
        self.labels = [str(label) for label in labels] if self.series else []
        self.values = [v for values in self.series.values() for v in values]
        self.xlabel, self.title = xlabel, title
        if self.labels:
            self.setFixedHeight(self._needed_height())
        self.update()

    def _row_px(self) -> int:
        return self.ROW_PX if not self.series else max(self.ROW_PX, 6 * len(self.series) + 6)

    def _needed_height(self) -> int:
        return len(self.labels) * self._row_px() + (2 + bool(self.title) + bool(self.series)) * self.ROW_PX + 8

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        font = painter.font()
        font.setPointSizeF(max(font.pointSizeF() - 1, 7))
        painter.setFont(font)
        metrics = painter.fontMetrics()
        painter.setPen(self._foreground)
        rect = self.rect().adjusted(4, 4, -4, -4)
        top = rect.top()
        if self.title:
            painter.drawText(rect.left(), top, rect.width(), self.ROW_PX, Qt.AlignmentFlag.AlignCenter, self.title)
            top += self.ROW_PX
        if not self.labels:
            painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, "nothing to show yet")
            return
        label_width = min(max(metrics.horizontalAdvance(label) for label in self.labels) + 8, rect.width() // 2)
        value_width = metrics.horizontalAdvance("-0.00") + 6
        left, right = rect.left() + label_width, rect.right() - value_width
        low, high = min(0.0, *self.values), max(0.0, *self.values)
        span = (high - low) or 1.0
        zero = left + (right - left) * (0 - low) / span
        row = self._row_px()
        for index, label in enumerate(self.labels):
            y = top + index * row
            painter.setPen(self._foreground)
            painter.drawText(rect.left(), y, label_width - 6, row,
                             Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, label)
            if not self.series:
                self._draw_bar(painter, zero, left, right, low, span, y + 3, self.ROW_PX - 6, self.values[index],
                               QColor(POSITIVE if self.values[index] >= 0 else NEGATIVE), value_width)
                continue
            bar = (row - 4) / len(self.series)
            for number, values in enumerate(self.series.values()):
                self._draw_bar(painter, zero, left, right, low, span, y + 2 + number * bar, bar - 1, values[index],
                               QColor(SERIES_COLORS[number % len(SERIES_COLORS)]), None)
        bottom = top + len(self.labels) * row
        painter.setPen(self._muted)
        painter.drawLine(int(zero), top, int(zero), bottom)
        if self.series:
            self._draw_legend(painter, rect.left(), bottom + 2, metrics)
            bottom += self.ROW_PX
        painter.setPen(self._foreground)
        painter.drawText(rect.left(), bottom + 2, rect.width(), self.ROW_PX, Qt.AlignmentFlag.AlignCenter,
                         self.xlabel)

    def _draw_bar(self, painter, zero, left, right, low, span, y, height, value, color, value_width) -> None:
        """One bar from zero to ``value``; its number beside it when ``value_width`` leaves room for one."""
        end = left + (right - left) * (value - low) / span
        painter.fillRect(QRectF(min(zero, end), y, abs(end - zero), height), color)
        if value_width is not None:
            painter.setPen(self._foreground)
            painter.drawText(int(max(zero, end)) + 3, int(y) - 3, value_width, self.ROW_PX,
                             Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, f"{value:.2f}")

    def _draw_legend(self, painter, x, y, metrics) -> None:
        """A coloured square and the name of each series, on one line."""
        for number, name in enumerate(self.series):
            painter.fillRect(QRectF(x, y + 4, 10, 10), QColor(SERIES_COLORS[number % len(SERIES_COLORS)]))
            painter.setPen(self._foreground)
            painter.drawText(x + 14, y, metrics.horizontalAdvance(name) + 4, self.ROW_PX,
                             Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, name)
            x += 14 + metrics.horizontalAdvance(name) + 14
