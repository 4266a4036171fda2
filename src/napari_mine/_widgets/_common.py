"""Shared pieces of the dock widgets: finding a store's layers, running jobs, charts and thumbnails.

Layers are the viewer's shared state: every layer read from a results store carries
``metadata["napari_mine"]`` (store path and role), so any widget finds "the brain", "the stimuli" or "the
selected voxel" of a store by looking at the layer list, never at another widget.
"""

from __future__ import annotations

import logging
import queue
import threading
import traceback
from dataclasses import dataclass

import numpy as np
from qtpy.QtCore import QRectF, Qt
from qtpy.QtGui import QColor, QImage, QPainter, QPixmap
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QSizePolicy, QWidget

from napari_mine._reader import META
from napari_mine.errors import MineInputError

BRAIN_ROLES = ("accuracy", "anatomy", "mask", "roi", "clusters")
SHARED_CHOICES = ("checkpoint", "vocabulary")  # set in Data and model, read by the other widgets
POSITIVE, NEGATIVE = "#f24d26", "#3b73f2"  # the attribution map's red and blue, for bars of the same sign
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
    if layers:
        show_densest_slice(viewer, layers[0])
    viewer.reset_view()


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
    return meta.get("store"), meta.get("role"), meta.get("roi")


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
@dataclass
class Failure:
    """What a job raised, handed back to the main thread instead of being raised there."""

    error: Exception
    trace: str


def guarded(function, *args, **kwargs):
    """Run ``function``; an exception comes back as a Failure (shown by ``report_failure``)."""
    try:
        return function(*args, **kwargs)
    except Exception as error:  # every failure of a job is reported to the user, none kills the viewer
        return Failure(error, traceback.format_exc())


def guarded_generator(generator_function, *args, **kwargs):
    """Like ``guarded`` for a generator job: its yields pass through, an exception is returned."""
    try:
        return (yield from generator_function(*args, **kwargs))
    except Exception as error:  # as in guarded
        return Failure(error, traceback.format_exc())


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


def start_job(function, *args, returned, finished=None, **kwargs):
    """Run ``function(*args, **kwargs)`` in a thread worker; ``returned`` gets the result (or a Failure) and
    ``finished`` is called, on the main thread.

    Pass bound methods of a QObject (a widget): Qt then drops the connections if the widget is deleted
    before the job ends. They are connected before the worker starts, so no signal can be missed.
    """
    from napari.qt.threading import create_worker

    worker = create_worker(guarded, function, *args, _start_thread=False, **kwargs)
    worker.returned.connect(returned)
    if finished is not None:
        worker.finished.connect(finished)
    worker.start()
    return worker


def steps_of(function, *args, stop: threading.Event, heartbeat_s: float = 0.1, **kwargs):
    """Run an engine step that reports through ``on_progress(done, total)`` and stops when
    ``should_stop()`` is true, as a generator: yields ``(done, total)`` as the step reports, and ``None``
    every ``heartbeat_s`` so that a generator worker can be stopped (``worker.quit()``) between reports.

    The step runs in a helper thread; setting ``stop`` (connect it to the worker's ``aborted``) makes the
    step end at its next check, leaving the store as it was. Returns the step's result or raises its error.
    """
    reports: queue.Queue = queue.Queue()
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = function(*args, on_progress=lambda done, total: reports.put((done, total)),
                                        should_stop=stop.is_set, **kwargs)
        except BaseException as error:  # handed to the generator, which raises it in the worker
            outcome["error"] = error
        finally:
            reports.put(StopIteration)

    helper = threading.Thread(target=run, name=f"napari-mine {getattr(function, '__name__', 'step')}", daemon=True)
    helper.start()
    while True:
        try:
            report = reports.get(timeout=heartbeat_s)
        except queue.Empty:
            yield None
            continue
        if report is StopIteration:
            break
        yield report
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
    """Run and cancel one generator job at a time for a dock (Fit, Counterfactual editor), with progress.

    The job is ``job(*args, stop)``: it yields ``(stage, done, total)`` (``total`` 0: a stage of unknown length;
    ``done`` -1: no news, a chance to stop) and returns its result. It runs in a napari thread worker; its
    progress goes to the dock's ``bar`` and ``stage`` label and to napari's activity dock, where it can be
    cancelled too. Cancelling sets ``stop`` at once (the running step ends at its next check) and quits the
    worker at its next report. The dock has ``run_button``, ``cancel_button``, ``bar``, ``stage``, a
    ``job_finished`` signal (emitted with "done", "cancelled" or "failed") and defines ``run``, ``_show_result``
    and ``_after_job``; ``FAILED`` and ``CANCELLED`` are what its stage label says then. ``add_job_controls``
    makes the buttons, bar and label.
    """

    FAILED = "Failed (see the notification)."
    CANCELLED = "Cancelled."
    worker = None
    _progress = None
    _stop: threading.Event | None = None
    _outcome = ""

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

    def start_job(self, description: str, job, *args):
        """Start ``job`` in a worker; returns the worker."""
        from napari.qt.threading import create_worker
        from napari.utils import cancelable_progress

        self._stop = threading.Event()
        self.worker = create_worker(guarded_generator, job, *args, self._stop, _start_thread=False)
        self.worker.yielded.connect(self._on_progress)
        self.worker.returned.connect(self._on_returned)
        self.worker.aborted.connect(self._stop.set)
        self.worker.finished.connect(self._on_job_finished)
        self._progress = cancelable_progress(total=0, desc=description)
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.stage.setText("Starting…")
        self._outcome = "cancelled"  # unless the job returns
        self.worker.start()
        return self.worker

    def cancel(self) -> None:
        """Stop the running step at its next check and the worker at its next report."""
        if self.worker is not None:
            self.stage.setText("Cancelling…")
            self._stop.set()
            self.worker.quit()

    def _on_progress(self, report) -> None:
        stage, done, total = report
        progress = self._progress  # the job may end while this runs (napari's progress handles events)
        if progress is None:
            return
        if progress.is_canceled:
            self.cancel()
            return
        if done < 0:
            return
        self.stage.setText(stage)
        self.bar.setRange(0, max(total, 0))
        self.bar.setValue(done)
        progress.set_description(stage)
        if progress.total != total:
            progress.total = total
        progress.update(done - progress.n)

    def _on_returned(self, value) -> None:
        if report_failure(value):
            self._outcome = "failed"
            self.stage.setText(self.FAILED)
            return
        self._outcome = "done"
        self.bar.setRange(0, 1)
        self.bar.setValue(1)
        self._show_result(value)

    def _on_job_finished(self) -> None:
        if self._outcome == "cancelled":  # a worker asked to quit returns nothing, whether it aborted or not
            self.stage.setText(self.CANCELLED)
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self.worker = None
        self.cancel_button.setEnabled(False)
        self._after_job()
        self.job_finished.emit(self._outcome)


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
    click). Positive bars are red, negative ones blue: the attribution map's colours.
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
        self.xlabel = ""
        self.title = ""
        self.setMinimumHeight(height)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def set_bars(self, labels, values, xlabel: str, title: str = "") -> None:
        """Show ``values`` as bars, the first label on top."""
        self.labels, self.values = [str(label) for label in labels], [float(v) for v in values]
        self.xlabel, self.title = xlabel, title
        if self.labels:
            self.setFixedHeight(self._needed_height())
        self.update()

    def _needed_height(self) -> int:
        return (len(self.labels) + 2 + bool(self.title)) * self.ROW_PX + 8

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
        for index, (label, value) in enumerate(zip(self.labels, self.values)):
            y = top + index * self.ROW_PX
            painter.setPen(self._foreground)
            painter.drawText(rect.left(), y, label_width - 6, self.ROW_PX,
                             Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, label)
            end = left + (right - left) * (value - low) / span
            painter.fillRect(QRectF(min(zero, end), y + 3, abs(end - zero), self.ROW_PX - 6),
                             QColor(POSITIVE if value >= 0 else NEGATIVE))
            painter.drawText(int(max(zero, end)) + 3, y, value_width, self.ROW_PX,
                             Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, f"{value:.2f}")
        bottom = top + len(self.labels) * self.ROW_PX
        painter.setPen(self._muted)
        painter.drawLine(int(zero), top, int(zero), bottom)
        painter.setPen(self._foreground)
        painter.drawText(rect.left(), bottom + 2, rect.width(), self.ROW_PX, Qt.AlignmentFlag.AlignCenter,
                         self.xlabel)
