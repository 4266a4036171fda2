"""Counterfactual editor: edit the image under the stimulus slider for the selected voxel and see what changes.

The editor follows the voxel inspector through the layers: the voxel is the store's "selected voxel" layer,
the image the one under the stimulus slider. An edit (remove the high-attribution feature, insert a concept
typed or picked from the voxel's profile, or regenerate the image from MINE's description) runs
:func:`napari_mine.counterfactual.edit_for_voxel` in a generator thread worker, with progress and cancel. The
edited image appears beside the stimulus, the voxel's Δ predicted response in the panel, and every voxel's Δ
as a map over the brain.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from functools import partial
from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QLabel,
    QLineEdit,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_mine._reader import layer_metadata
from napari_mine._widgets._common import (
    NEGATIVE,
    POSITIVE,
    StagedJobs,
    brain_layer,
    current_store,
    marked_voxels,
    mine_meta,
    report_failure,
    staged,
    start_job,
    steps_of,
    stimulus_row,
    store_layers,
)
from napari_mine._widgets._surface import is_surface, own_picking, show_site_values
from napari_mine.counterfactual import ACTIONS, MASK_FRACTION
from napari_mine.errors import MineInputError

ACTION_LABELS = {"remove": "remove the high-attribution feature", "insert": "insert a concept",
                 "regenerate": "regenerate from MINE's description"}
PROCEDURAL, DIFFUSERS = "procedural (synthetic world)", "diffusers model"
EDITING = "Editing the image"
DEFAULT_STEPS = 25
EDIT_GAP = 0.05  # space between the stimulus and the edited image, as a share of the stimulus width
NEUTRAL = "#3a3a3a"  # the Δ map's zero: dark enough that the voxels that do change stand out


def delta_colormap():
    """Diverging: blue where the edit lowers a voxel's predicted response, red where it raises it."""
    from napari.utils.colormaps import Colormap

    return Colormap([NEGATIVE, NEUTRAL, POSITIVE], name="mine-delta", display_name="Δ response (blue − / red +)")


# ---- worker jobs (no Qt) ----------------------------------------------------------------------------
LOADED_GENERATORS = 2  # generators kept for the session (a diffusers pipeline holds gigabytes)
_generators: OrderedDict[tuple, tuple] = OrderedDict()
_generators_lock = threading.Lock()


def world_of(view) -> str | None:
    """The synthetic world a store was computed from (its dataset folder holds the ground truth), or None."""
    root = view.manifest.world_root
    return None if root is None else str(root.resolve())


def shared_generator(kind: str, source: str | None, steps: int, results=None):
    """One loaded generator (with the world's truth, for the procedural one: ``validate.world_validation`` of
    ``results``) per source for the session."""
    from napari_mine.generate import DiffusionGenerator
    from napari_mine.models.backbone import import_torch
    from napari_mine.validate import world_validation

    key = (kind, source, steps if kind == DIFFUSERS else None)
    with _generators_lock:
        if key not in _generators:
            if kind == PROCEDURAL:
                _generators[key] = world_validation(results)
            else:
                import_torch()
                _generators[key] = (DiffusionGenerator.load(source, steps=steps), None)
            while len(_generators) > LOADED_GENERATORS:
                _generators.popitem(last=False)
        _generators.move_to_end(key)
        return _generators[key]


def voxel_choices(store: str, voxel: int, vocabulary=None, checkpoint=None):
    """Worker job: the store's synthetic world (or None) and the concepts the voxel's profile suggests."""
    from napari_mine.counterfactual import profile_concepts
    from napari_mine.results import open_results

    view = open_results(store)
    space = view.concept_space(vocabulary, checkpoint)
    scores = view.profiles(space, [voxel]).scores[0]
    return store, voxel, world_of(view), profile_concepts(scores, space.vocabulary)


def edit_steps(store: str, voxel: int, row: int, action: str, concept: str, generator: tuple, seed: int,
               mask_fraction: float | None, vocabulary, checkpoint, stop: threading.Event):
    """Generator job: load the generator and the image model, edit, predict every voxel's response.

    Yields ``(stage, done, total)`` (``total`` 0: unknown length; ``done`` -1: no news, a chance to stop) and
    returns ``(store, Counterfactual, Δ volume on the brain grid, colour limit, the voxel's rank by |Δ|)``.
    """
    from napari_mine.counterfactual import edit_for_voxel
    from napari_mine.results import open_results
    from napari_mine.validate import open_workbench

    kind, model, steps = generator
    view = open_results(store)
    yield ("Loading the generator", 0, 0)
    if kind == PROCEDURAL:
        source = world_of(view)  # None: world_validation says why there is no world
    elif not model.strip():
        raise MineInputError("Give a diffusers model: a model id in the local Hugging Face cache or a folder "
                             "written by save_pretrained.")
    else:
        source = model.strip()
    edit_with, truth = shared_generator(kind, source, steps, view)
    yield ("Loading the image model", 0, 0)
    backbone = view.backbone(checkpoint)
    space = view.concept_space(vocabulary, checkpoint) if action == "regenerate" else None
    bench = open_workbench(view, edit_with, truth, view.images, backbone)  # images are read by pixel generators only
    edit = yield from staged(EDITING, steps_of(edit_for_voxel, bench, voxel, row, action, concept=concept,
                                               space=space, mask_fraction=mask_fraction, seed=seed, stop=stop))
    delta = edit.brain_delta
    volume = view.space.unmask(delta).astype(np.float32)
    limit = float(np.abs(delta).max()) or 1e-6
    rank = int(np.sum(np.abs(delta) > abs(edit.delta))) + 1
    return store, edit, volume, limit, rank


# ---- the widget ---------------------------------------------------------------------------------------
class CounterfactualEditor(StagedJobs, QWidget):
    """Dock widget: edit the current image for the selected voxel; the edit and the Δ map become layers."""

    FAILED = "Failed (see the notification); nothing was added."
    CANCELLED = "Cancelled; nothing was added."

    #: Emitted on the main thread when an edit job has ended: "done", "cancelled" or "failed".
    job_finished = Signal(str)
    #: Emitted when the voxel's suggested concepts are shown ("choices") or could not be computed ("failed").
    updated = Signal(str)

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self._target: tuple | None = None  # (store, voxel, row) under the slider now
        self._choices_for: tuple | None = None  # (store, voxel) whose concepts are listed or being computed
        self._build()
        self.viewer.layers.events.inserted.connect(self._on_layers_changed)
        self.viewer.layers.events.removed.connect(self._on_layers_changed)
        self.viewer.layers.selection.events.active.connect(self._on_layers_changed)
        self.viewer.dims.events.current_step.connect(self._refresh_target)
        self.destroyed.connect(partial(_disconnect, self.viewer, self._on_layers_changed, self._refresh_target))
        self._on_layers_changed()
        own_picking(self.viewer)

    def _build(self) -> None:
        layout = QVBoxLayout(self)
        self.target = QLabel("")
        self.target.setWordWrap(True)
        layout.addWidget(self.target)

        edit_box = QGroupBox("Edit")
        form = QFormLayout(edit_box)
        self.action = QComboBox()
        for action in ACTIONS:
            self.action.addItem(ACTION_LABELS[action], action)
        self.action.currentIndexChanged.connect(self._on_action_changed)
        form.addRow("edit", self.action)
        self.concept = QComboBox()
        self.concept.setEditable(True)
        self.concept.lineEdit().setPlaceholderText("type a concept or pick one from the profile")
        self.concept.setToolTip("The voxel's profile phrase first, then its best concepts; any text can be typed")
        form.addRow("concept", self.concept)
        self.region = QSpinBox()
        self.region.setRange(1, 90)
        self.region.setSuffix(" %")
        self.region.setToolTip("Share of the image in the edit region: the top of the voxel's attribution map, "
                               "cut to its connected part around the peak")
        form.addRow("edit region", self.region)
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        form.addRow("seed", self.seed)
        layout.addWidget(edit_box)

        generator_box = QGroupBox("Generator")
        generator_form = QFormLayout(generator_box)
        self.generator = QComboBox()
        self.generator.addItems([PROCEDURAL, DIFFUSERS])
        self.generator.currentTextChanged.connect(self._on_generator_changed)
        generator_form.addRow("generator", self.generator)
        self.model = QLineEdit()
        self.model.setPlaceholderText("model id or folder")
        self.model.setToolTip("A diffusers text-to-image model (e.g. stabilityai/sd-turbo) already in the local "
                              "Hugging Face cache, or a folder written by save_pretrained; it loads in the worker")
        generator_form.addRow("model", self.model)
        self.steps = QSpinBox()
        self.steps.setRange(1, 200)
        self.steps.setValue(DEFAULT_STEPS)
        generator_form.addRow("denoising steps", self.steps)
        layout.addWidget(generator_box)

        self.add_job_controls(layout, "Edit")

        result_box = QGroupBox("Result")
        result_layout = QVBoxLayout(result_box)
        self.delta = QLabel("–")
        self.delta.setWordWrap(True)
        self.delta.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        result_layout.addWidget(self.delta)
        self.brain_note = QLabel("")
        self.brain_note.setWordWrap(True)
        result_layout.addWidget(self.brain_note)
        layout.addWidget(result_box)
        layout.addStretch(1)
        self._on_action_changed()
        self._on_generator_changed()

    def _on_action_changed(self, index=None) -> None:
        action = self.action.currentData()
        self.concept.setEnabled(action == "insert")
        self.region.setEnabled(action != "regenerate")
        if action in MASK_FRACTION:
            self.region.setValue(round(100 * MASK_FRACTION[action]))

    def _on_generator_changed(self, text=None) -> None:
        diffusers = self.generator.currentText() == DIFFUSERS
        self.model.setEnabled(diffusers)
        self.steps.setEnabled(diffusers)

    # ---- following the selected voxel and the stimulus slider --------------------------------------
    def _on_layers_changed(self, event=None) -> None:
        for layer in store_layers(self.viewer, role="voxel"):
            layer.events.metadata.connect(self._refresh_target)  # the inspector's next clicks (no duplicates)
        self._refresh_target()

    def _voxel_layer(self, store):
        layers = marked_voxels(self.viewer, store)
        return layers[0] if layers else None

    def _refresh_target(self, event=None) -> None:
        store = current_store(self.viewer)
        voxel_layer = self._voxel_layer(store)
        stimuli = store_layers(self.viewer, role="stimuli", store=store)
        if store is None or voxel_layer is None or not stimuli:
            self._target = None
            self.target.setText("Click a voxel with the Voxel inspector: the editor edits the image under the "
                                "stimulus slider for that voxel.")
            self.run_button.setEnabled(False)
            return
        voxel, row = int(mine_meta(voxel_layer)["voxel"]), stimulus_row(self.viewer, stimuli[0])
        self._target = (store, voxel, row)
        self.target.setText(f"Voxel {voxel} of {Path(store).name}, image #{row} (under the stimulus slider).")
        self.run_button.setEnabled(self.job is None)
        if self._choices_for != (store, voxel):
            self._choices_for = (store, voxel)
            meta = mine_meta(brain_layer(self.viewer, store) or voxel_layer)
            start_job(self, voxel_choices, store, voxel, meta.get("vocabulary"), meta.get("checkpoint"),
                      returned=self._on_choices)

    def _on_choices(self, value) -> None:
        if report_failure(value):
            self.updated.emit("failed")
            return
        store, voxel, world, concepts = value
        if (store, voxel) != self._choices_for:
            return
        typed = self.concept.currentText()
        self.concept.clear()
        self.concept.addItems(concepts)
        if typed and typed not in concepts:
            self.concept.setEditText(typed)
        if world is None and self.generator.currentText() == PROCEDURAL:
            self.generator.setCurrentText(DIFFUSERS)
        elif world is not None and not self.model.text().strip():
            self.generator.setCurrentText(PROCEDURAL)
        self.updated.emit("choices")

    # ---- the edit job ----------------------------------------------------------------------------
    def run(self):
        """Start an edit of the current image for the selected voxel; returns the Job (None without one)."""
        self._refresh_target()
        if self._target is None or self.job is not None:
            return None
        store, voxel, row = self._target
        action = self.action.currentData()
        meta = mine_meta(brain_layer(self.viewer, store) or self._voxel_layer(store))
        generator = (self.generator.currentText(), self.model.text(), self.steps.value())
        fraction = self.region.value() / 100 if action in MASK_FRACTION else None
        return self.run_staged(f"napari-mine edit: image #{row}, voxel {voxel}", edit_steps, store, voxel, row,
                              action, self.concept.currentText(), generator, self.seed.value(), fraction,
                              meta.get("vocabulary"), meta.get("checkpoint"))

    def _show_result(self, value) -> None:
        store, edit, volume, limit, rank = value
        self.stage.setText("Done.")
        what = {"remove": "removed the feature under the high-attribution region",
                "insert": f"inserted “{edit.text}”",
                "regenerate": f"regenerated from “{edit.text}”"}[edit.action]
        before, after = edit.responses[:, edit.voxel]
        lines = [f"<b>Δ = {edit.delta:+.3f}</b> for voxel {edit.voxel} on image #{edit.row} ({what}): predicted "
                 f"response {before:.3f} → {after:.3f}."]
        if edit.true_delta is not None:
            lines.append(f"True simulated brain: Δ = {edit.true_delta:+.3f}.")
        self.delta.setText("<br>".join(lines))
        edited_name = self._show_edit(store, edit)
        delta_name = self._show_delta_map(store, edit, volume, limit)
        self.brain_note.setText(
            f"Every voxel's Δ is on the layer “{delta_name}” (blue: lower, red: higher, ±{limit:.3f}); this "
            f"voxel's |Δ| ranks {rank} of {edit.brain_delta.size}. The edit is the layer “{edited_name}”.")

    def _after_job(self) -> None:
        self._refresh_target()

    # ---- layers --------------------------------------------------------------------------------------
    def _show_edit(self, store: str, edit) -> str:
        """The edited image beside the stimulus (one layer per store, replaced by the next edit)."""
        name = f"edit of #{edit.row} for voxel {edit.voxel} ({edit.action})"
        stimuli = store_layers(self.viewer, role="stimuli", store=store)
        if not stimuli:
            return name
        data = edit.edited[None]
        metadata = layer_metadata(store, "edit", voxel=edit.voxel, image=edit.row, action=edit.action,
                                  text=edit.text, delta=edit.delta)
        for layer in store_layers(self.viewer, role="edit", store=store):
            if layer.data.shape == data.shape:
                layer.data, layer.name, layer.metadata = data, name, metadata
                return layer.name
            self.viewer.layers.remove(layer)
        scale, translate = edit_placement(stimuli[0], data.shape[1:3])
        layer = self.viewer.add_image(data, name=name, rgb=True, scale=scale, translate=translate, metadata=metadata)
        self._keep_brain_active(store)
        return layer.name

    def _show_delta_map(self, store: str, edit, volume: np.ndarray, limit: float) -> str:
        """Every voxel's Δ predicted response on the brain grid (one layer per store, replaced by the next)."""
        name = f"Δ predicted response (edit of #{edit.row})"
        brain = brain_layer(self.viewer, store)
        if brain is None:
            return name
        metadata = layer_metadata(store, "delta", voxel=edit.voxel, image=edit.row, action=edit.action)
        if is_surface(brain):
            show_site_values(self.viewer, store, "delta", volume, np.isfinite(volume), name=name,
                             extra={"voxel": edit.voxel, "image": edit.row, "action": edit.action},
                             colormap=delta_colormap(), contrast_limits=(-limit, limit))
            return name
        existing = store_layers(self.viewer, role="delta", store=store)
        if existing:
            layer = existing[0]
            layer.data, layer.name, layer.metadata = volume, name, metadata
            layer.contrast_limits = (-limit, limit)
            return layer.name
        layer = self.viewer.add_image(volume, name=name, scale=brain.scale, translate=brain.translate,
                                      colormap=delta_colormap(), contrast_limits=(-limit, limit),
                                      blending="translucent", metadata=metadata)
        self._keep_brain_active(store)
        return layer.name

    def _keep_brain_active(self, store: str) -> None:
        brain = brain_layer(self.viewer, store)
        if brain is not None:
            self.viewer.layers.selection.active = brain


def edit_placement(stimuli, image_shape) -> tuple[np.ndarray, np.ndarray]:
    """``scale`` and ``translate`` of an edited image ``(1, H, W)`` laid right of the stimulus, as tall as it."""
    scale, translate = np.asarray(stimuli.scale, dtype=float), np.asarray(stimuli.translate, dtype=float)
    height, width = stimuli.data.shape[2:4]
    pixel = scale[2] * height / image_shape[0]
    top = translate[2] - scale[2] / 2
    right = translate[3] - scale[3] / 2 + width * scale[3]
    return (np.array([scale[1], pixel, pixel]),
            np.array([translate[1], top + pixel / 2, right + EDIT_GAP * width * scale[3] + pixel / 2]))


def _disconnect(viewer, layers_handler, target_handler) -> None:
    """Disconnect the widget's handlers from the viewer and its voxel layers (the widget was deleted)."""
    viewer.layers.events.inserted.disconnect(layers_handler)
    viewer.layers.events.removed.disconnect(layers_handler)
    viewer.layers.selection.events.active.disconnect(layers_handler)
    viewer.dims.events.current_step.disconnect(target_handler)
    for layer in store_layers(viewer, role="voxel"):
        layer.events.metadata.disconnect(target_handler)
