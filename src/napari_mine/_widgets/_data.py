"""Data & model: open a results folder, an NSD folder or a generic folder, and pick the CLIP backbone.

Opening a dataset folder creates (or reopens) its results folder with the chosen model and shows the brain,
ROIs and stimuli; the Fit widget then computes features and the encoder into that folder. The model choice
and vocabulary travel with the store's layers (their metadata), where the other widgets read them.
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_mine._widgets._common import (
    CANCELLED,
    brain_layer,
    focus_on_brain,
    report_failure,
    show_layer_tuples,
    start_job,
)

SOURCES = ("results folder", "NSD folder", "generic folder")
MODELS = ("mine-small", "ViT-B-16", "ViT-B-32", "ViT-L-14")
VOCABULARIES = ("automatic", "synthetic", "general")


def open_results(folder: str) -> tuple[str, list]:
    """Worker job: the layer tuples of an existing results folder."""
    from napari_mine._reader import read_store

    return folder, read_store(folder)


def open_dataset(kind: str, folder: str, subject: int, results: str, model: str, pretrained: str | None,
                 checkpoint: str | None, stop=None):
    """Worker job (a generator: it yields its stage and may stop before each): load a dataset, create its
    results folder for the model, and return ``(results folder, its layer tuples)``. Stopped before the
    last stage, it writes nothing."""
    from napari_mine._reader import read_store, stimuli_beside_brain
    from napari_mine.data import load_generic, load_nsd
    from napari_mine.pipeline import save_brain
    from napari_mine.results import open_results, shared_backbone
    from napari_mine.store import ResultsStore

    yield "Loading the dataset"
    dataset = load_nsd(folder, subject=subject) if kind == "NSD folder" else load_generic(folder)
    yield "Loading the model"
    backbone = shared_backbone(model, pretrained, checkpoint)
    yield "Writing the results folder"
    store = ResultsStore.create(results, model=backbone.record, dataset=dataset.source, checkpoint=checkpoint)
    save_brain(dataset, store)
    open_results(store.root).keep_dataset(dataset)
    layers = read_store(store.root, stimuli=False)
    layers.append(stimuli_beside_brain(open_results(store.root).space, dataset.images, str(store.root)))
    return str(store.root), layers


def build_demo(n_images: int) -> tuple[str, list]:
    """Worker job: the demo world's results store (built once into the cache), as layer tuples."""
    from napari_mine._reader import read_store
    from napari_mine._sample_data import demo_store

    root = demo_store(n_images=n_images)
    return str(root), read_store(root)


class DataModelWidget(QWidget):
    """Dock widget: choose a data source and a backbone, open them as layers."""

    #: Emitted on the main thread when an opening ended: the store's path, or "" when it failed or was cancelled.
    opened = Signal(str)

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.job = None
        layout = QVBoxLayout(self)

        source_box = QGroupBox("Data")
        form = QFormLayout(source_box)
        self.source = QComboBox()
        self.source.addItems(SOURCES)
        self.source.currentTextChanged.connect(self._on_source)
        form.addRow("open a", self.source)
        self.folder = QLineEdit()
        self.folder.setPlaceholderText("folder to open")
        form.addRow("folder", _with_browse(self.folder, self._browse_folder))
        self.subject = QSpinBox()
        self.subject.setRange(1, 8)
        form.addRow("NSD subject", self.subject)
        self.results = QLineEdit()
        self.results.setPlaceholderText("default: <folder>-mine beside the data")
        form.addRow("results folder", _with_browse(self.results, self._browse_results))
        layout.addWidget(source_box)

        model_box = QGroupBox("Model")
        model_form = QFormLayout(model_box)
        self.model = QComboBox()
        self.model.setEditable(True)
        self.model.addItems(MODELS)
        self.model.setToolTip("mine-small (shipped, trained on the synthetic world) or any open_clip architecture")
        model_form.addRow("backbone", self.model)
        self.pretrained = QLineEdit()
        self.pretrained.setPlaceholderText("open_clip tag, e.g. laion2b_s34b_b88k")
        model_form.addRow("pretrained", self.pretrained)
        self.checkpoint = QLineEdit()
        self.checkpoint.setPlaceholderText("or a local weights file (no download)")
        model_form.addRow("checkpoint", _with_browse(self.checkpoint, self._browse_checkpoint))
        self.vocabulary = QComboBox()
        self.vocabulary.setEditable(True)
        self.vocabulary.addItems(VOCABULARIES)
        self.vocabulary.setToolTip("Concepts for descriptions and profiles: synthetic, general, or a text file "
                                   "path (one concept per line)")
        model_form.addRow("vocabulary", self.vocabulary)
        layout.addWidget(model_box)

        buttons = QHBoxLayout()
        self.open_button = QPushButton("Open")
        self.open_button.clicked.connect(self.open)
        buttons.addWidget(self.open_button)
        self.demo_button = QPushButton("Open the demo world")
        self.demo_button.setToolTip("A synthetic brain and stimuli with a fitted encoder (built once, a few minutes)")
        self.demo_button.clicked.connect(self.open_demo)
        buttons.addWidget(self.demo_button)
        layout.addLayout(buttons)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        layout.addStretch(1)
        self._on_source(self.source.currentText())

    # ---- choices -----------------------------------------------------------------------------------
    def _on_source(self, kind: str) -> None:
        dataset = kind != "results folder"
        self.subject.setEnabled(kind == "NSD folder")
        self.results.setEnabled(dataset)
        for widget in (self.model, self.pretrained):
            widget.setEnabled(dataset)  # a results folder names its model; a checkpoint path may still be needed

    def _browse_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, f"Open a {self.source.currentText()}")
        if folder:
            self.folder.setText(folder)

    def _browse_results(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Results folder")
        if folder:
            self.results.setText(folder)

    def _browse_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Weights file", "", "Weights (*.safetensors *.pt *.pth *.bin)")
        if path:
            self.checkpoint.setText(path)

    def model_choice(self) -> dict:
        """What the other widgets need to rebuild the model and concept space: checkpoint and vocabulary."""
        vocabulary = self.vocabulary.currentText().strip()
        return {"checkpoint": self.checkpoint.text().strip() or None,
                "vocabulary": None if vocabulary in ("", "automatic") else vocabulary}

    # ---- actions -----------------------------------------------------------------------------------
    def open(self):
        """Open the chosen folder in a worker; returns the Job (None if the form is incomplete)."""
        from napari.utils.notifications import show_error

        kind, folder = self.source.currentText(), self.folder.text().strip()
        if not folder:
            show_error(f"Choose the {kind} to open.")
            return None
        if kind == "results folder":
            return self._start(f"Opening {Path(folder).name}…", open_results, folder)
        results = self.results.text().strip() or str(Path(folder).resolve().parent / f"{Path(folder).name}-mine")
        model = self.model.currentText().strip() or MODELS[0]
        pretrained = self.pretrained.text().strip() or None
        if pretrained and self.checkpoint.text().strip():
            show_error("Give either a pretrained tag or a checkpoint file, not both.")
            return None
        return self._start(f"Loading {Path(folder).name} and {model}…", open_dataset, kind, folder,
                           self.subject.value(), results, model, pretrained, self.model_choice()["checkpoint"])

    def open_demo(self, n_images: int | None = None):
        """Open the demo world (built once in a worker); returns the Job."""
        from napari_mine._sample_data import SAMPLE_IMAGES

        return self._start("Opening the demo world (the first time builds it: a few minutes)…", build_demo,
                           n_images or SAMPLE_IMAGES)

    def _start(self, message: str, function, *args):
        self.status.setText(message)
        self.open_button.setEnabled(False)
        self.demo_button.setEnabled(False)
        self.job = start_job(self, function, *args, progress=message.rstrip("…"), returned=self._on_opened,
                             finished=self._on_finished)
        return self.job

    def _on_finished(self, outcome: str) -> None:
        self.job = None
        self.open_button.setEnabled(True)
        self.demo_button.setEnabled(True)
        if outcome == CANCELLED:
            self.status.setText("Cancelled; nothing was opened.")
            self.opened.emit("")

    def _on_opened(self, value) -> None:
        if report_failure(value):
            self.status.setText("Could not open it (see the notification).")
            self.opened.emit("")
            return
        root, layers = value
        show_layer_tuples(self.viewer, layers, extra=self.model_choice())
        store = str(Path(root).resolve())
        brain = brain_layer(self.viewer, store)
        if brain is not None:
            self.viewer.layers.selection.active = brain
        focus_on_brain(self.viewer, store)
        self.status.setText(f"Opened {root}. Click a voxel (Voxel inspector) or fit the encoder (Fit).")
        self.opened.emit(store)


def _with_browse(edit: QLineEdit, browse) -> QWidget:
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(edit)
    button = QPushButton("…")
    button.setMaximumWidth(28)
    button.clicked.connect(browse)
    layout.addWidget(button)
    return row
