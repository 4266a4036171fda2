"""Fit: compute features and token contributions, then fit the voxelwise encoder, in a thread worker.

The job is a generator worker: it yields progress (shown in the widget and in napari's activity dock,
where it can be cancelled) and is stopped with ``worker.quit()``. Cancelling during either step leaves
the results folder as it was (the encoder fit stops at its next fold or voxel batch, seconds at most). When the job ends, the accuracy map is put on the layers of the store the job started on.
"""

from __future__ import annotations

import threading
from functools import partial
from pathlib import Path

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from napari_mine._widgets._common import (
    current_store,
    guarded_generator,
    mine_meta,
    report_failure,
    show_layer_tuples,
    steps_of,
    store_layers,
)

FEATURES = "Decomposing images into token contributions"
ENCODER = "Fitting the voxelwise encoder (voxels done)"


def fit_steps(root: str, checkpoint: str | None, recompute: bool, stop: threading.Event):
    """Generator job: features (unless present) then the encoder fit; yields ``(stage, done, total)``
    (``total`` 0: a stage of unknown length; ``done`` -1: no news, a chance for the worker to stop).

    Returns ``(root, layer tuples of the store without stimuli, accuracy summary)``.
    """
    from napari_mine._reader import read_store
    from napari_mine._widgets._store_view import dataset_for, shared_backbone
    from napari_mine.pipeline import compute_features, fit_encoder_step
    from napari_mine.store import ResultsStore

    yield ("Loading the dataset", 0, 0)
    dataset = dataset_for(root)
    store = ResultsStore.open(root)
    if recompute or not store.has("features"):
        yield ("Loading the model", 0, 0)
        model = store.manifest["model"]
        backbone = shared_backbone(model.get("name"), model.get("pretrained"), checkpoint)
        yield from _staged(FEATURES, steps_of(compute_features, dataset, backbone, store, stop=stop))
    yield (ENCODER, 0, 0)
    summary = yield from _staged(ENCODER, steps_of(fit_encoder_step, dataset, store, stop=stop))
    store.update_summary("encoder", summary)
    return root, read_store(root, stimuli=False), summary


def _staged(stage: str, reports):
    """The reports of a `steps_of` generator as ``(stage, done, total)``; returns the step's result."""
    while True:
        try:
            report = next(reports)
        except StopIteration as end:
            return end.value
        yield (stage, *report) if report else (stage, -1, -1)


class FitWidget(QWidget):
    """Dock widget: run features + encoder fit on the current results folder, with progress and cancel."""

    #: Emitted on the main thread when a job has ended: "done", "cancelled" or "failed".
    job_finished = Signal(str)

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.worker = None
        self._outcome = ""
        self._progress = None
        self._stop: threading.Event | None = None
        self._store: str | None = None
        layout = QVBoxLayout(self)
        self.target = QLabel("")
        self.target.setWordWrap(True)
        layout.addWidget(self.target)
        self.recompute = QCheckBox("recompute the features even if present")
        layout.addWidget(self.recompute)
        buttons = QHBoxLayout()
        self.run_button = QPushButton("Compute features and fit")
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
        layout.addStretch(1)
        self.viewer.layers.selection.events.active.connect(self._on_target_changed)
        self.viewer.layers.events.inserted.connect(self._on_target_changed)
        self.viewer.layers.events.removed.connect(self._on_target_changed)
        self.destroyed.connect(partial(_disconnect, self.viewer, self._on_target_changed))
        self._on_target_changed()

    def _on_target_changed(self, event=None) -> None:
        if self.worker is not None:
            return
        self._store = current_store(self.viewer)
        if self._store is None:
            self.target.setText("Open a dataset or a results folder (Data and model) first.")
            self.run_button.setEnabled(False)
            return
        from napari_mine.store import ResultsStore

        try:
            steps = ResultsStore(self._store).manifest["steps"]
        except OSError:
            self.target.setText(f"The results folder {self._store} is gone; open another one.")
            self.run_button.setEnabled(False)
            return
        done = ", ".join(name for name in ("features", "encoder") if name in steps) or "nothing yet"
        self.target.setText(f"Results folder: {self._store}\nComputed: {done}.")
        self.run_button.setEnabled(True)

    def run(self):
        """Start the job on the current results folder; returns the worker (None without a folder)."""
        from napari.qt.threading import create_worker
        from napari.utils import cancelable_progress

        if self._store is None or self.worker is not None:
            return None
        layers = store_layers(self.viewer, store=self._store)
        checkpoint = next((mine_meta(layer).get("checkpoint") for layer in layers
                           if mine_meta(layer).get("checkpoint")), None)
        self._stop = threading.Event()
        self.worker = create_worker(guarded_generator, fit_steps, self._store, checkpoint,
                                    self.recompute.isChecked(), self._stop, _start_thread=False)
        self.worker.yielded.connect(self._on_progress)
        self.worker.returned.connect(self._on_done)
        self.worker.aborted.connect(self._on_aborted)
        self.worker.aborted.connect(self._stop.set)
        self.worker.finished.connect(self._on_finished)
        self._progress = cancelable_progress(total=0, desc=f"napari-mine fit: {Path(self._store).name}")
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.stage.setText("Starting…")
        self._outcome = "cancelled"
        self.worker.start()
        return self.worker

    def cancel(self) -> None:
        """Stop the running step at its next check (the step sees the flag at once, the worker at its next
        report)."""
        if self.worker is not None:
            self.stage.setText("Cancelling…")
            self._stop.set()
            self.worker.quit()

    def _on_progress(self, report) -> None:
        stage, done, total = report
        if self._progress is not None and self._progress.is_canceled:
            self.cancel()
            return
        if done < 0:
            return
        self.stage.setText(stage)
        self.bar.setRange(0, max(total, 0))
        self.bar.setValue(done)
        if self._progress is not None:
            self._progress.set_description(stage)
            if self._progress.total != total:
                self._progress.total = total
            self._progress.update(done - self._progress.n)

    def _on_done(self, value) -> None:
        if report_failure(value):
            self._outcome = "failed"
            self.stage.setText("Failed (see the notification); the results folder keeps what it had.")
            return
        self._outcome = "done"
        root, layers, summary = value
        show_layer_tuples(self.viewer, layers)
        median = summary.get("median_nc_r_all")
        self.stage.setText(f"Done: median r / noise ceiling = {median:.3f} over {summary['n_voxels']} voxels."
                           if median is not None else "Done.")
        self.bar.setRange(0, 1)
        self.bar.setValue(1)

    def _on_aborted(self) -> None:
        self.stage.setText("Cancelled: the step that was running wrote nothing; steps that had finished are kept.")

    def _on_finished(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self.worker = None
        self.cancel_button.setEnabled(False)
        self._on_target_changed()
        self.job_finished.emit(self._outcome)


def _disconnect(viewer, handler) -> None:
    """Disconnect the widget's layer-list handler from the viewer (the widget was deleted)."""
    viewer.layers.selection.events.active.disconnect(handler)
    viewer.layers.events.inserted.disconnect(handler)
    viewer.layers.events.removed.disconnect(handler)
