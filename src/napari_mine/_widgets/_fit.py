"""Fit: compute features and token contributions, then fit the voxelwise encoder, in a thread worker.

The job runs through `_common.start_job` with the controls of `_common.StagedJobs`. Cancelling during either step leaves
that step unwritten (the encoder fit stops at its next fold or voxel batch, seconds at most). When the job
ends, the accuracy map is put on the layers of the store the job started on.
"""

from __future__ import annotations

import threading
from functools import partial
from pathlib import Path

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QCheckBox, QComboBox, QFormLayout, QLabel, QVBoxLayout, QWidget

from napari_mine._widgets._common import (
    StagedJobs,
    current_store,
    mine_meta,
    show_layer_tuples,
    staged,
    steps_of,
    store_layers,
)
from napari_mine.errors import MineInputError

FEATURES = "Decomposing images into token contributions"
ENCODER = "Fitting the voxelwise encoder (voxels done)"
TOKEN_CACHE_CHOICES = ("float32", "float16")  # decompose.TOKEN_DTYPES: exact first (the default)


def fit_steps(root: str, checkpoint: str | None, recompute: bool, token_dtype: str, stop: threading.Event):
    """Generator job: features (unless present, their token cache stored as ``token_dtype``) then the
    encoder fit; yields ``(stage, done, total)``
    (``total`` 0: a stage of unknown length; ``done`` -1: no news, a chance for the worker to stop).

    Returns ``(root, layer tuples of the store without stimuli, accuracy summary)``.
    """
    from napari_mine._reader import read_store
    from napari_mine.pipeline import compute_features, fit_encoder_step
    from napari_mine.results import open_results
    from napari_mine.store import ResultsStore

    yield ("Loading the dataset", 0, 0)
    results = open_results(root)
    dataset = results.dataset()
    store = ResultsStore.open(root)
    if recompute or not store.has("features"):
        yield ("Loading the model", 0, 0)
        backbone = results.backbone(checkpoint)
        yield from staged(FEATURES, steps_of(compute_features, dataset, backbone, store, stop=stop,
                                             token_dtype=token_dtype, force=recompute))
    yield (ENCODER, 0, 0)
    summary = yield from staged(ENCODER, steps_of(fit_encoder_step, dataset, store, stop=stop))
    return root, read_store(root, stimuli=False), summary


class FitWidget(StagedJobs, QWidget):
    """Dock widget: run features + encoder fit on the current results folder, with progress and cancel."""

    FAILED = "Failed (see the notification); the results folder keeps what it had."
    CANCELLED = ("Cancelled: steps that had finished are kept, and so are the features' complete chunks (the next "
                 "run resumes from them).")

    #: Emitted on the main thread when a job has ended: "done", "cancelled" or "failed".
    job_finished = Signal(str)

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self._store: str | None = None
        layout = QVBoxLayout(self)
        self.target = QLabel("")
        self.target.setWordWrap(True)
        layout.addWidget(self.target)
        self.recompute = QCheckBox("recompute the features even if present")
        layout.addWidget(self.recompute)
        self.token_dtype = QComboBox()
        self.token_dtype.addItems(TOKEN_CACHE_CHOICES)
        self.token_dtype.setToolTip("float16 halves the token cache on disk; the attribution then sums to the "
                                    "prediction within ~1% of its spread over images (docs/benchmarks.md)")
        cache_row = QFormLayout()
        cache_row.addRow("token cache", self.token_dtype)
        layout.addLayout(cache_row)
        self.add_job_controls(layout, "Compute features and fit")
        layout.addStretch(1)
        self.viewer.layers.selection.events.active.connect(self._on_target_changed)
        self.viewer.layers.events.inserted.connect(self._on_target_changed)
        self.viewer.layers.events.removed.connect(self._on_target_changed)
        self.destroyed.connect(partial(_disconnect, self.viewer, self._on_target_changed))
        self._on_target_changed()

    def _on_target_changed(self, event=None) -> None:
        if self.job is not None:
            return
        self._store = current_store(self.viewer)
        if self._store is None:
            self.target.setText("Open a dataset or a results folder (Data and model) first.")
            self.run_button.setEnabled(False)
            return
        from napari_mine.results import Manifest

        try:
            steps = Manifest.read(self._store).steps
        except (OSError, MineInputError):
            self.target.setText(f"The results folder {self._store} is gone; open another one.")
            self.run_button.setEnabled(False)
            return
        done = ", ".join(name for name in ("features", "encoder") if name in steps) or "nothing yet"
        self.target.setText(f"Results folder: {self._store}\nComputed: {done}.")
        self.run_button.setEnabled(True)

    def run(self):
        """Start the job on the current results folder; returns the Job (None without a folder)."""
        if self._store is None or self.job is not None:
            return None
        layers = store_layers(self.viewer, store=self._store)
        checkpoint = next((mine_meta(layer).get("checkpoint") for layer in layers
                           if mine_meta(layer).get("checkpoint")), None)
        return self.run_staged(f"napari-mine fit: {Path(self._store).name}", fit_steps, self._store, checkpoint,
                              self.recompute.isChecked(), self.token_dtype.currentText())

    def _show_result(self, value) -> None:
        root, layers, summary = value
        show_layer_tuples(self.viewer, layers)
        median = summary.get("median_nc_r_all")
        self.stage.setText(f"Done: median r / noise ceiling = {median:.3f} over {summary['n_voxels']} voxels."
                           if median is not None else "Done.")

    def _after_job(self) -> None:
        self._on_target_changed()


def _disconnect(viewer, handler) -> None:
    """Disconnect the widget's layer-list handler from the viewer (the widget was deleted)."""
    viewer.layers.selection.events.active.disconnect(handler)
    viewer.layers.events.inserted.disconnect(handler)
    viewer.layers.events.removed.disconnect(handler)
