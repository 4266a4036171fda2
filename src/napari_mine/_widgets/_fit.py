"""Fit: compute features and token contributions, then fit the voxelwise encoder, in a thread worker; then, if
asked, profile every voxel and validate by edits (`pipeline.profile_step`, `pipeline.validate_step`).

The job runs through `_common.start_job` with the controls of `_common.StagedJobs`. Cancelling during a step leaves
that step unwritten (the encoder fit stops at its next fold or voxel batch, seconds at most); the chunked steps
(features, profiles, validation) keep their complete chunks, which the next run resumes from. When the job
ends, the accuracy map is put on the layers of the store the job started on.
"""

from __future__ import annotations

import json
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
VOCABULARY = "Embedding the vocabulary (prompts done)"
PROFILES = "Profiling every voxel (targets done)"
VALIDATION = "Validating by edits (pairs done)"
TOKEN_CACHE_CHOICES = ("float32", "float16")  # decompose.TOKEN_DTYPES: exact first (the default)
PROFILE_BLOCK: int | None = None  # targets per profile block (None: the engine's default); no control for it
VALIDATION_VOXELS: int | None = None  # voxels the validation samples (None: the engine's default); no control
NO_WORLD = ("Validation here edits the synthetic world's scenes with its renderer, and these results are not from "
            "the synthetic world. Validate them with a diffusers model from the command line: napari-mine validate "
            "RESULTS --generator diffusers --model MODEL.")


def fit_steps(root: str, checkpoint: str | None, recompute: bool, token_dtype: str, profile: bool = False,
              vocabulary: str | None = None, validate: bool = False, refit: bool = True, *, stop: threading.Event):
    """Generator job: features (unless present, their token cache stored as ``token_dtype``), the encoder fit
    (kept when ``refit`` is false and it was fitted on the present features), then if asked the profiles of every
    target in ``vocabulary`` (None: the folder's default, as the CLI's; embedding it first when it is not cached)
    and the validation by edits (the synthetic world's renderer); yields ``(stage, done, total)``
    (``total`` 0: a stage of unknown length; ``done`` -1: no news, a chance for the worker to stop).

    Returns ``(root, layer tuples of the store without stimuli, accuracy summary, number of targets profiled or
    None, validation summary or None)``.
    """
    from napari_mine._reader import read_store
    from napari_mine.pipeline import compute_features, fit_encoder_step, profile_step, validate_step
    from napari_mine.results import open_results
    from napari_mine.store import ResultsStore

    results = open_results(root)
    store = ResultsStore.open(root)
    features, fit = planned_steps(store.manifest, recompute, refit, profile, validate)
    summary = None if fit else saved_fit_summary(root)
    if features or summary is None:
        yield ("Loading the dataset", 0, 0)
        dataset = results.dataset()
    if features:
        yield ("Loading the model", 0, 0)
        backbone = results.backbone(checkpoint)
        yield from staged(FEATURES, steps_of(compute_features, dataset, backbone, store, stop=stop,
                                             token_dtype=token_dtype, force=recompute))
    if summary is None:
        yield (ENCODER, 0, 0)
        summary = yield from staged(ENCODER, steps_of(fit_encoder_step, dataset, store, stop=stop))
    profiled = validation = None
    if profile:
        results = open_results(root)  # the folder's session with its new fit
        yield (VOCABULARY, 0, 0)
        space = yield from staged(VOCABULARY, steps_of(results.concept_space, vocabulary, checkpoint, stop=stop))
        yield (PROFILES, 0, 0)
        profiles, _ = yield from staged(PROFILES, steps_of(profile_step, store, space, block=PROFILE_BLOCK,
                                                           stop=stop))
        profiled = len(profiles.voxels)
    if validate:
        results = open_results(root)
        yield ("Loading the model", 0, 0)
        backbone = results.backbone(checkpoint)
        yield (VALIDATION, 0, 0)
        validation = yield from staged(VALIDATION, steps_of(validate_step, results, backbone=backbone,
                                                            checkpoint=checkpoint, n_voxels=VALIDATION_VOXELS,
                                                            stop=stop))
    return root, read_store(root, stimuli=False), summary, profiled, validation


def fit_is_current(manifest) -> bool:
    """Whether the folder's encoder was fitted on its present features (a later features step makes it stale)."""
    steps = manifest.steps
    return "encoder" in steps and "features" in steps and steps["encoder"].finished >= steps["features"].finished


def planned_steps(manifest, recompute: bool, refit: bool, profile: bool, validate: bool) -> tuple[bool, bool]:
    """Whether a run computes the features (asked, or absent) and whether it fits the encoder: always, unless it
    only profiles or validates with an encoder fitted on the present features (at surface scale a fit costs
    minutes). What the job runs and what the run button says."""
    features = recompute or "features" not in manifest.steps
    fit = features or refit or not (profile or validate) or not fit_is_current(manifest)
    return features, fit


def saved_fit_summary(root: str) -> dict | None:
    """The accuracy summary the folder's fit wrote to summary.json (None if it has none)."""
    path = Path(root) / "summary.json"
    return json.loads(path.read_text()).get("encoder") if path.is_file() else None


def run_text(features: bool, fit: bool, profile: bool, validate: bool) -> str:
    """The run button's text for the chosen steps: "Compute features and fit", "Fit and profile", "Profile", …"""
    steps = ["compute features"] * features + ["fit"] * fit + ["profile"] * profile + ["validate"] * validate
    text = steps[0] if len(steps) == 1 else f"{', '.join(steps[:-1])} and {steps[-1]}"
    return text[0].upper() + text[1:]


def validation_text(validation: dict) -> str:
    """The validation summary in a few words: the edits' sign accuracy by the encoder, over its pairs."""
    def accuracy(name: str):
        return ((validation.get(name) or {}).get("predicted") or {}).get("value")

    removal, insertion = accuracy("removal_sign_accuracy"), accuracy("insertion_sign_accuracy")
    if removal is None and insertion is None:
        return "written to summary.json"
    numbers = ", ".join(f"{kind} {value:.2f}" for kind, value in (("removal", removal), ("insertion", insertion))
                        if value is not None)
    return f"sign accuracy of {numbers} over {validation.get('n_pairs', 0)} pairs"


class FitWidget(StagedJobs, QWidget):
    """Dock widget: run features + encoder fit (then, if chosen, profiles and validation) on the current results
    folder, with progress and cancel."""

    FAILED = "Failed (see the notification); the results folder keeps what it had."
    CANCELLED = ("Cancelled: steps that had finished are kept, and so are the complete chunks of the features, "
                 "profiles or validation (the next run resumes from them).")

    #: Emitted on the main thread when a job has ended: "done", "cancelled" or "failed".
    job_finished = Signal(str)

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self._store: str | None = None
        self._vocabulary: str | None = None  # the vocabulary chosen in Data and model (None: the folder's default)
        self._manifest = None  # the current folder's, read when the selection changes (the button's text reads it)
        layout = QVBoxLayout(self)
        self.target = QLabel("")
        self.target.setWordWrap(True)
        layout.addWidget(self.target)
        self.recompute = QCheckBox("recompute the features even if present")
        layout.addWidget(self.recompute)
        self.refit = QCheckBox("refit the encoder even if fitted")
        self.refit.setToolTip("Without it, a run that profiles or validates keeps an encoder fitted on the present "
                              "features")
        layout.addWidget(self.refit)
        self.token_dtype = QComboBox()
        self.token_dtype.addItems(TOKEN_CACHE_CHOICES)
        self.token_dtype.setToolTip("float16 halves the token cache on disk; the attribution then sums to the "
                                    "prediction within ~1% of its spread over images (docs/benchmarks.md)")
        cache_row = QFormLayout()
        cache_row.addRow("token cache", self.token_dtype)
        layout.addLayout(cache_row)
        self.profile = QCheckBox("then profile every voxel")
        self.profile.setToolTip("After the fit, the MINE profile of every voxel in the vocabulary chosen in Data and "
                                "model (as `napari-mine profile`), with each ROI's sub-populations")
        layout.addWidget(self.profile)
        self.validate = QCheckBox("then validate (edits)")
        layout.addWidget(self.validate)
        self.add_job_controls(layout, run_text(True, True, False, False))
        for choice in (self.recompute, self.refit, self.profile, self.validate):
            choice.toggled.connect(self._on_choice_changed)
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
        from napari_mine.results import Results

        try:
            results = Results.open(self._store)  # the manifest only
        except (OSError, MineInputError):
            self.target.setText(f"The results folder {self._store} is gone; open another one.")
            self.run_button.setEnabled(False)
            return
        steps = results.manifest.steps
        done = ", ".join(name for name in ("features", "encoder", "profiles", "validation") if name in steps)
        self.target.setText(f"Results folder: {self._store}\nComputed: {done or 'nothing yet'}.")
        self._vocabulary = _chosen(store_layers(self.viewer, store=self._store), "vocabulary")
        vocabulary = Path(self._vocabulary or results.default_vocabulary()).stem
        self.profile.setText(f"then profile every voxel ({vocabulary} vocabulary)")
        world = results.manifest.world_root is not None
        self.validate.setEnabled(world)
        if not world:
            self.validate.setChecked(False)
        self.validate.setToolTip("After the fit (and the profiles), causal validation by edits of the synthetic "
                                 "world's scenes, scored by the encoder and by the true brain (as `napari-mine "
                                 "validate`)" if world else NO_WORLD)
        self._manifest = results.manifest
        self._on_choice_changed()
        self.run_button.setEnabled(True)

    def _on_choice_changed(self, checked=None) -> None:
        if self._manifest is None:
            return
        profile, validate = self.profile.isChecked(), self.validate.isEnabled() and self.validate.isChecked()
        features, fit = planned_steps(self._manifest, self.recompute.isChecked(), self.refit.isChecked(), profile,
                                      validate)
        self.run_button.setText(run_text(features, fit, profile, validate))

    def run(self):
        """Start the job on the current results folder; returns the Job (None without a folder)."""
        if self._store is None or self.job is not None:
            return None
        layers = store_layers(self.viewer, store=self._store)
        checkpoint, self._vocabulary = _chosen(layers, "checkpoint"), _chosen(layers, "vocabulary")
        profile, validate = self.profile.isChecked(), self.validate.isEnabled() and self.validate.isChecked()
        return self.run_staged(f"napari-mine fit: {Path(self._store).name}", fit_steps, self._store, checkpoint,
                              self.recompute.isChecked(), self.token_dtype.currentText(), profile, self._vocabulary,
                              validate, self.refit.isChecked())

    def _show_result(self, value) -> None:
        root, layers, summary, profiled, validation = value
        show_layer_tuples(self.viewer, layers)
        median = summary.get("median_nc_r_all")
        parts = [f"median r / noise ceiling = {median:.3f} over {summary['n_voxels']} voxels" if median is not None
                 else f"encoder fitted on {summary['n_voxels']} voxels"]
        if profiled is not None:
            parts.append(f"profiles of {profiled} voxels")
        if validation is not None:
            parts.append(f"validation: {validation_text(validation)}")
        self.stage.setText(f"Done: {'; '.join(parts)}.")

    def _after_job(self) -> None:
        self._on_target_changed()


def _chosen(layers, key: str) -> str | None:
    """A choice of Data and model (checkpoint, vocabulary) from the store's layers, topmost first (None: none)."""
    return next((mine_meta(layer)[key] for layer in layers if mine_meta(layer).get(key)), None)


def _disconnect(viewer, handler) -> None:
    """Disconnect the widget's layer-list handler from the viewer (the widget was deleted)."""
    viewer.layers.selection.events.active.disconnect(handler)
    viewer.layers.events.inserted.disconnect(handler)
    viewer.layers.events.removed.disconnect(handler)
