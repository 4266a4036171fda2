"""ROI explorer: an ROI's mean concept profile, and its voxels clustered into sub-populations.

Profiles come from the store's saved profiles step when it has one, else from each voxel's top images
(``napari_mine.describe``); the clusters become a Labels layer on the brain grid, one label per
sub-population (largest first), so they can be compared with the accuracy map and clicked like any voxel.
"""

from __future__ import annotations

from functools import partial

from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_mine._reader import META, label_colormap_for, layer_metadata
from napari_mine._widgets._common import (
    CANCELLED,
    BarChart,
    brain_layer,
    current_store,
    marked_voxels,
    mine_meta,
    report_failure,
    show_densest_slice,
    start_job,
    store_layers,
)
from napari_mine._widgets._study import SubjectsPanel, compare_subjects, keep_study_grid, study_of
from napari_mine._widgets._surface import is_surface, label_at, own_picking, show_site_values
from napari_mine.results import RoiReport, open_results


def list_rois(store: str) -> tuple[str, dict[str, dict[int, str]]]:
    """Worker job: the store's ROI volumes and their labels present inside the mask."""
    return store, open_results(store).space.present_labels()


def analyse_roi(store: str, roi: str, label: int, k_min: int, k_max: int, vocabulary, checkpoint) -> RoiReport:
    """Worker job: the ROI label's profile and clusters."""
    view = open_results(store)
    return view.roi_report(roi, label, view.concept_space(vocabulary, checkpoint), k_range=(k_min, k_max))


class RoiExplorer(QWidget):
    """Dock widget: pick an ROI label → its profile chart and its sub-populations as a Labels layer."""

    #: Emitted on the main thread when a job's answer is shown: "rois", "report", "subjects" (the region in every
    #: subject of a study) or "failed".
    updated = Signal(str)

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.job = None
        self._brain = None  # the brain layer the running job started on: its grid places the clusters
        self._store: str | None = None
        self._labels: dict[str, dict[int, str]] = {}
        layout = QVBoxLayout(self)

        choice = QGroupBox("ROI")
        form = QFormLayout(choice)
        self.roi = QComboBox()
        self.roi.currentTextChanged.connect(self._fill_labels)
        form.addRow("ROI volume", self.roi)
        self.label = QComboBox()
        form.addRow("region", self.label)
        self.from_voxel = QPushButton("Use the selected voxel's ROI")
        self.from_voxel.setToolTip("The ROI of the voxel marked on the 'selected voxel' layer (Voxel inspector)")
        self.from_voxel.clicked.connect(self.use_selected_voxel)
        form.addRow(self.from_voxel)
        k_row = QWidget()
        k_layout = QHBoxLayout(k_row)
        k_layout.setContentsMargins(0, 0, 0, 0)
        self.k_min, self.k_max = QSpinBox(), QSpinBox()
        for spin, value in ((self.k_min, 2), (self.k_max, 5)):
            spin.setRange(2, 12)
            spin.setValue(value)
            k_layout.addWidget(spin)
        form.addRow("clusters, k from / to", k_row)
        self.run_button = QPushButton("Profile and cluster this region")
        self.run_button.clicked.connect(self.run)
        form.addRow(self.run_button)
        layout.addWidget(choice)

        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        self.chart = BarChart(self.viewer, height=120)
        layout.addWidget(self.chart)
        self.baseline = QLabel("")
        self.baseline.setWordWrap(True)
        layout.addWidget(self.baseline)
        self.clusters = QLabel("")
        self.clusters.setWordWrap(True)
        layout.addWidget(self.clusters)
        self.subjects = SubjectsPanel(self.viewer)
        layout.addWidget(self.subjects)
        layout.addStretch(1)

        self.viewer.layers.events.inserted.connect(self._on_layers_changed)
        self.viewer.layers.events.removed.connect(self._on_layers_changed)
        self.viewer.layers.selection.events.active.connect(self._on_layers_changed)
        self.destroyed.connect(partial(_disconnect, self.viewer, self._on_layers_changed))
        self._on_layers_changed()
        own_picking(self.viewer)
        keep_study_grid(self.viewer)

    # ---- the store's ROIs -------------------------------------------------------------------------
    def _on_layers_changed(self, event=None):
        store = current_store(self.viewer)
        if store == self._store:
            return None
        self._store = store
        self.roi.clear()
        self.label.clear()
        if store is None:
            self.status.setText("Open a results folder to explore its ROIs.")
            return None
        self.status.setText("Reading the ROIs…")
        return start_job(self, list_rois, store, returned=self._on_rois)

    def _on_rois(self, value) -> None:
        if report_failure(value):
            self.updated.emit("failed")
            return
        store, labels = value
        if store != self._store:
            return
        self._labels = labels
        self.roi.clear()
        self.roi.addItems(sorted(labels))
        preferred = next((name for name in sorted(labels) if name.startswith("floc-")), None)
        if preferred:
            self.roi.setCurrentText(preferred)
        self.status.setText(f"{len(labels)} ROI volumes in {store}.")
        self.updated.emit("rois")

    def _fill_labels(self, roi: str) -> None:
        self.label.clear()
        for value, name in self._labels.get(roi, {}).items():
            self.label.addItem(name, value)

    def use_selected_voxel(self) -> bool:
        """Choose the ROI label of the voxel on the store's "selected voxel" layer; False if it has none."""
        from napari.utils.notifications import show_info

        voxels = marked_voxels(self.viewer, self._store)
        if not voxels:
            show_info("Click a voxel with the Voxel inspector first.")
            return False
        ijk = tuple(mine_meta(voxels[0])["ijk"])
        layers = store_layers(self.viewer, role="roi", store=self._store)
        layers.sort(key=lambda layer: _specificity(mine_meta(layer)["roi"]))
        for layer in layers:
            roi = mine_meta(layer)["roi"]
            value = label_at(layer, ijk)
            if value > 0 and roi in self._labels and value in self._labels[roi]:
                self.roi.setCurrentText(roi)
                self.label.setCurrentIndex(self.label.findData(value))
                return True
        show_info(f"The selected voxel {ijk} is in no labelled ROI.")
        return False

    # ---- analysis ----------------------------------------------------------------------------------
    def run(self):
        """Profile and cluster the chosen region in a worker; returns the Job (None without a choice)."""
        from napari.utils.notifications import show_error

        roi, label = self.roi.currentText(), self.label.currentData()
        if self._store is None or not roi or label is None:
            show_error("Choose an ROI volume and a region first.")
            return None
        if self.k_min.value() > self.k_max.value():
            show_error("The smallest number of clusters must not exceed the largest.")
            return None
        brain = brain_layer(self.viewer, self._store)
        if brain is None:
            show_error("The results folder's brain layers were removed; open the folder again.")
            return None
        meta = mine_meta(brain)
        self.status.setText(f"Profiling {self.label.currentText()} and clustering its voxels…")
        self.run_button.setEnabled(False)
        self._brain = brain
        self.job = start_job(self, analyse_roi, self._store, roi, int(label), self.k_min.value(),
                             self.k_max.value(), meta.get("vocabulary"), meta.get("checkpoint"),
                             returned=self._on_report, finished=self._on_finished,
                             progress=f"ROI explorer: profiling and clustering {self.label.currentText()}")
        self._compare_subjects(roi, int(label), meta)
        return self.job

    def _compare_subjects(self, roi: str, label: int, meta: dict):
        """In a study, the region's profile in every subject (a worker job), as grouped bars below the clusters."""
        subject = study_of(self.viewer, self._store)
        if subject is None:
            self.subjects.setVisible(False)
            return None
        return start_job(self, compare_subjects, *subject, None, meta.get("vocabulary"), meta.get("checkpoint"),
                         region=(roi, label), returned=self._on_subjects)

    def _on_subjects(self, value) -> None:
        if report_failure(value):
            self.updated.emit("failed")
            return
        if value.of(value.clicked).store == self._store:
            self.subjects.show_selection(value)
            self.updated.emit("subjects")

    def _on_finished(self, outcome: str) -> None:
        self.run_button.setEnabled(True)
        self.job = None
        if outcome == CANCELLED:
            self.status.setText("Cancelled.")

    def _on_report(self, value) -> None:
        if report_failure(value):
            self.status.setText("Could not analyse the region (see the notification).")
            self.updated.emit("failed")
            return
        report: RoiReport = value
        concepts, scores = zip(*report.profile)
        self.chart.set_bars(concepts, scores, f"mean MINE profile score ({report.vocabulary} vocabulary)",
                            title=f"{report.label}: {report.n_targets} voxels")
        self.baseline.setText("Direct projection of the weights on the concepts (no attribution, as "
                              "BrainSCUBA-style profiles): " + ", ".join(name for name, _ in report.baseline[:5]))
        k = len(report.cluster_sizes)
        lines = [f"<b>{k} sub-populations</b> (silhouette {report.silhouettes[k]:.2f}; layer "
                 f"'clusters in {report.label}'):"]
        for index, (size, top) in enumerate(zip(report.cluster_sizes, report.cluster_profiles), start=1):
            lines.append(f"{index}: {size} voxels — " + ", ".join(name for name, _ in top))
        self.clusters.setText("<br>".join(lines))
        self.status.setText("")
        self._show_clusters(report)
        self.updated.emit("report")

    def _show_clusters(self, report: RoiReport) -> None:
        """Put the clusters on the Labels layer of this region (replacing an earlier clustering of it), and
        show the slice where the region is largest."""
        name = f"clusters in {report.label}"
        metadata = layer_metadata(self._store, "clusters", roi=f"{report.roi}:{report.label}")
        features = {"index": list(range(len(report.cluster_sizes) + 1)),
                    "name": ["none"] + [", ".join(c for c, _ in top) for top in report.cluster_profiles]}
        if is_surface(self._brain):
            self._show_surface_clusters(report, name)
            return
        existing = [layer for layer in store_layers(self.viewer, role="clusters", store=self._store)
                    if mine_meta(layer).get("roi") == metadata[META]["roi"]]
        if existing:
            layer = existing[0]
            layer.data = report.clusters
            layer.features = features
        else:
            brain = self._brain
            layer = self.viewer.add_labels(report.clusters, name=name, scale=brain.scale,
                                           translate=brain.translate, features=features, opacity=0.8,
                                           metadata=metadata)
            self.viewer.layers.selection.active = brain
        show_densest_slice(self.viewer, layer)

    def _show_surface_clusters(self, report: RoiReport, name: str) -> None:
        """The clusters as vertex values on both hemispheres (vertices outside the region are left undrawn)."""
        k = len(report.cluster_sizes)
        show_site_values(self.viewer, self._store, "clusters", report.clusters, report.clusters > 0, name=name,
                         key={"roi": f"{report.roi}:{report.label}"}, colormap=label_colormap_for(k),
                         contrast_limits=(-0.5, k + 0.5), opacity=0.9)


def _specificity(roi: str) -> int:
    """Category ROIs first, then retinotopic ones, the whole visual cortex mask last."""
    return 0 if roi.startswith("floc-") else 2 if roi == "nsdgeneral" else 1


def _disconnect(viewer, handler) -> None:
    viewer.layers.events.inserted.disconnect(handler)
    viewer.layers.events.removed.disconnect(handler)
    viewer.layers.selection.events.active.disconnect(handler)
