"""A study of several subjects in the viewer: one napari grid cell per subject, a selection linked across them,
and the subjects' values side by side in the docks.

Every layer of a study's subject carries its subject's store path (as a single store's layers do) plus
``"study"`` and ``"subject"``; layers that the docks add later carry only the store, which names the subject. The
grid keeps each subject's layers together: napari puts ``stride`` consecutive layers in one cell, so every
subject's block is padded with hidden spacer layers to the largest block (a dock adds an overlay to one subject
only) and the cells stay one per subject whatever the docks add.

A click selects a target in the clicked subject only; the other subjects get what is comparable across people
(DESIGN.md §10): on fsaverage the same vertex (each subject's target there, if in its mask), in volume space,
where grids differ, the same ROI label. The comparison is read in a worker (:func:`compare_subjects`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QGroupBox, QLabel, QVBoxLayout

from napari_mine._reader import META
from napari_mine._widgets._common import BarChart, mine_meta, store_layers

SPACER = "grid spacer"
STUDY_GRID = "napari_mine_study_grid"  # set on a layer list once its study grid is kept
GRID_SHOWN = "napari_mine_grid_shown"  # the studies a layer list turned grid mode on for (once: the user may leave it)
GRID_SPACING = 0.03  # between cells, as a share of a cell's size
N_CONCEPTS = 8  # concepts of the subjects' side-by-side ROI profiles


# ---- which subject ------------------------------------------------------------------------------
def subject_stores(viewer) -> dict[str, tuple[str, int]]:
    """``{store: (study root, subject)}`` of the study subjects whose layers are open."""
    found = {}
    for layer in viewer.layers:
        meta = mine_meta(layer)
        if meta.get("study") and meta.get("store"):
            found[meta["store"]] = (meta["study"], int(meta["subject"]))
    return found


def study_of(viewer, store: str | None) -> tuple[str, int] | None:
    """(study root, subject) of a store that is a study's subject, else None."""
    return subject_stores(viewer).get(store) if store else None


def store_in_cell(viewer, viewbox) -> str | None:
    """The store whose layers fill grid cell ``viewbox`` (a click's ``event.viewbox``), or None (grid off)."""
    grid = viewer.canvas.grid
    if not grid.enabled or viewbox is None:
        return None
    for index in grid.contents_at(tuple(viewbox), viewer.layers):
        store = mine_meta(viewer.layers[index]).get("store")
        if store:
            return store
    return None


# ---- the grid -----------------------------------------------------------------------------------
def keep_study_grid(viewer) -> None:
    """Keep a study's grid (one cell per subject) as layers come and go; once per viewer."""
    layers = getattr(viewer.layers, "__wrapped__", viewer.layers)
    if getattr(layers, STUDY_GRID, False):
        return
    timer = QTimer()
    timer.setSingleShot(True)  # many layers arrive at once (a reader's, a dock's): arranged once after them
    timer.timeout.connect(lambda: arrange_study_grid(viewer))
    layers.events.inserted.connect(partial(_restart, timer))
    layers.events.removed.connect(partial(_restart, timer))
    setattr(layers, STUDY_GRID, timer)  # the timer lives as long as the layer list
    arrange_study_grid(viewer)


def _restart(timer, event=None) -> None:
    timer.start(0)


def arrange_study_grid(viewer) -> None:
    """Order the layers in one block per subject (its own layers, then spacers up to the largest block; other
    layers after the last subject), and show the blocks side by side in grid mode: turned on when a study opens,
    and left as the user sets it afterwards."""
    from napari.layers import Points

    stores = subject_stores(viewer)
    subjects = sorted({subject for _, subject in stores.values()})
    if len(subjects) < 2:
        return
    blocks = {subject: [] for subject in subjects}
    spacers = {subject: [] for subject in subjects}
    others = []
    for layer in viewer.layers:
        meta = mine_meta(layer)
        owner = stores.get(meta.get("store"))
        if owner is None:
            others.append(layer)
        else:
            (spacers if meta.get("role") == SPACER else blocks)[owner[1]].append(layer)
    stride = max(len(block) for block in blocks.values())
    selected, active = set(viewer.layers.selection), viewer.layers.selection.active  # a new layer is selected
    for subject in subjects:
        spare = spacers[subject][stride - len(blocks[subject]):]
        for layer in spare:
            viewer.layers.remove(layer)
        del spacers[subject][stride - len(blocks[subject]):]
        store, study = next((s, owner[0]) for s, owner in stores.items() if owner[1] == subject)
        while len(blocks[subject]) + len(spacers[subject]) < stride:
            spacer = Points(ndim=3, name=f"{Path(store).name} · ({SPACER})", visible=False,
                            metadata={META: {"store": store, "role": SPACER, "study": study, "subject": subject}})
            viewer.layers.append(spacer)
            spacers[subject].append(spacer)
    if set(viewer.layers.selection) != selected and active in viewer.layers:
        viewer.layers.selection.active = active
        viewer.layers.selection.update(selected & set(viewer.layers))
    order = [layer for subject in subjects for layer in blocks[subject] + spacers[subject]] + others
    for position, layer in enumerate(order):  # the layers before ``position`` are in place already
        current = viewer.layers.index(layer)
        if current != position:
            viewer.layers.move(current, position)
    cells = len(subjects) + math.ceil(len(others) / stride)
    columns = cells if cells <= 4 else math.ceil(math.sqrt(cells))
    grid = viewer.canvas.grid
    grid.stride, grid.shape, grid.spacing = stride, (math.ceil(cells / columns), columns), GRID_SPACING
    layers = getattr(viewer.layers, "__wrapped__", viewer.layers)
    studies = {study for study, _ in stores.values()}
    if not studies <= getattr(layers, GRID_SHOWN, set()):
        grid.enabled = True
        setattr(layers, GRID_SHOWN, getattr(layers, GRID_SHOWN, set()) | studies)


# ---- the linked selection: worker jobs (no Qt) --------------------------------------------------
@dataclass
class SubjectValues:
    """One subject's values at a study's selection."""

    subject: int
    name: str  # its folder, e.g. "subj01"
    store: str
    target: int | None  # the selected target in this subject (None: the selection is its ROI label only)
    ijk: tuple = ()
    normalized_r: float | None = None  # at the target
    region_size: int = 0  # targets of the selected ROI label in this subject
    region_accuracy: float | None = None  # their median r / noise ceiling
    region_label: int = 0  # the label's value in this subject's ROI volume (0: the subject lacks it)
    profile: np.ndarray | None = None  # the label's mean profile over the concepts


@dataclass
class StudySelection:
    """A selection in one subject and what it is in every subject of the study."""

    study: str
    clicked: int
    roi: str | None  # the ROI volume and label the selection's ROI comparison is over
    label: str | None
    site_linked: bool = False  # a surface study: every subject's target is the clicked vertex's
    concepts: tuple[str, ...] = ()
    vocabulary: str = ""
    subjects: list[SubjectValues] = field(default_factory=list)

    def of(self, subject: int) -> SubjectValues:
        return next(values for values in self.subjects if values.subject == subject)


def _specificity(roi: str) -> int:
    """Category ROIs first, then retinotopic ones, the whole visual cortex mask last."""
    return 0 if roi.startswith("floc-") else 2 if roi == "nsdgeneral" else 1


def roi_label_of(space, target: int) -> tuple[str, str] | tuple[None, None]:
    """The most specific ROI label at a target: (ROI volume, label name)."""
    for roi in sorted(space.rois, key=_specificity):
        value = int(space.roi_values(roi)[target])
        if value > 0:
            return roi, space.rois[roi][1].get(value, f"{roi}-{value}")
    return None, None


def compare_subjects(study_root: str, subject: int, target: int | None, vocabulary=None, checkpoint=None, *,
                     region: tuple[str, int] | None = None) -> StudySelection:
    """Worker job: a selection in ``subject`` across the study: on fsaverage each subject's target at the vertex of
    ``target``; in every space one ROI label's size, median accuracy and mean profile per subject (the label is
    ``region``, (ROI volume, value in ``subject``), else the most specific one at ``target``)."""
    from napari_mine.study import Study

    study = Study.open(study_root)
    clicked = study.results(subject).space
    if region is None:
        roi, label = roi_label_of(clicked, target)
    else:
        roi, label = region[0], clicked.rois[region[0]][1].get(region[1], f"{region[0]}-{region[1]}")
    site = None
    if target is not None and clicked.kind == "surface":
        hemi, vertex = clicked.hemisphere_of(target)
        site = clicked.offset(hemi) + vertex
    selection = StudySelection(str(study_root), subject, roi, label, site_linked=site is not None)
    for other, results in study.items():
        space = results.space
        linked = target if other == subject else None if site is None else space.target_at(site)
        values = SubjectValues(other, study.manifest.subjects[other], str(results.root.resolve()), linked)
        if linked is not None:
            values.ijk = space.ijk_of(linked)
        if not results.is_fitted:  # no accuracy or profiles yet: where the selection is, only
            selection.subjects.append(values)
            continue
        if linked is not None:
            values.normalized_r = _finite(results.accuracy["normalized_r"][linked])
        if roi is not None and roi in space.rois:
            values.region_label = next((v for v, name in space.rois[roi][1].items() if name == label), 0)
            members = np.flatnonzero(space.roi_values(roi) == values.region_label) if values.region_label else []
            values.region_size = len(members)
            if len(members):
                values.region_accuracy = _finite(np.nanmedian(results.accuracy["normalized_r"][members]))
                concepts = results.concept_space(vocabulary, checkpoint)
                values.profile = results.profiles(concepts, members).scores.mean(axis=0)
                selection.concepts, selection.vocabulary = concepts.vocabulary.concepts, concepts.vocabulary.name
        selection.subjects.append(values)
    return selection


def _finite(value) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


# ---- showing it ---------------------------------------------------------------------------------
def ranked_concepts(selection: StudySelection, n: int = N_CONCEPTS) -> tuple[list[str], dict[str, list[float]]]:
    """The concepts the selected subject's ROI profile ranks highest, and every subject's scores on them."""
    profiles = {values.name: values.profile for values in selection.subjects if values.profile is not None}
    if not profiles:
        return [], {}
    clicked = selection.of(selection.clicked)
    lead = clicked.profile if clicked.profile is not None else np.mean(list(profiles.values()), axis=0)
    top = np.argsort(-lead, kind="stable")[:n]
    return [selection.concepts[i] for i in top], {name: [float(p[i]) for i in top] for name, p in profiles.items()}


class SubjectsPanel(QGroupBox):
    """The study's subjects side by side at the selection: a line of values per subject, and the ROI label's
    profile of every subject as grouped bars (shown only for a study)."""

    def __init__(self, viewer, parent=None):
        super().__init__("Subjects of the study", parent)
        layout = QVBoxLayout(self)
        self.table = QLabel("")
        self.table.setWordWrap(True)
        layout.addWidget(self.table)
        self.chart = BarChart(viewer, height=120)
        layout.addWidget(self.chart)
        self.selection: StudySelection | None = None
        self.setVisible(False)

    def show_selection(self, selection: StudySelection) -> None:
        self.selection = selection
        region = f"{selection.label} ({selection.roi})" if selection.label else "no labelled ROI"
        targets = any(values.target is not None for values in selection.subjects)
        here = "<th>r / nc here</th>" if targets else ""
        rows = [f"<tr><th align='left'>subject</th>{here}<th>{region}: targets</th><th>median r / nc</th></tr>"]
        for values in selection.subjects:
            name = f"<b>{values.name}</b>" if values.subject == selection.clicked else values.name
            here = ""
            if targets:
                here = "off the mask" if values.target is None and selection.site_linked else \
                    "same ROI" if values.target is None else _text(values.normalized_r)
                here = f"<td align='center'>{here}</td>"
            rows.append(f"<tr><td>{name}</td>{here}<td align='center'>{values.region_size}</td>"
                        f"<td align='center'>{_text(values.region_accuracy)}</td></tr>")
        self.table.setText("<table cellspacing='4'>" + "".join(rows) + "</table>")
        concepts, series = ranked_concepts(selection)
        self.chart.set_groups(concepts, series, f"mean MINE profile score ({selection.vocabulary} vocabulary)",
                              title=f"{selection.label}: each subject's profile" if selection.label else "")
        self.setVisible(True)


def _text(value) -> str:
    return "–" if value is None else f"{value:.2f}"


def show_linked_selection(viewer, selection: StudySelection, marker_name: str) -> None:
    """Show the selection in every subject: in the others its target at the same vertex (a marker, as the
    clicked subject's); in a volume study the ROI label alone on each subject's ROI volume."""
    from napari_mine._widgets._surface import is_surface, mark_site

    for values in selection.subjects:
        surface = any(is_surface(layer) for layer in store_layers(viewer, store=values.store))
        if surface and values.subject != selection.clicked:
            if values.target is not None:
                mark_site(viewer, values.store, values.target, values.ijk, marker_name)
            else:
                for marker in store_layers(viewer, role="voxel", store=values.store):
                    viewer.layers.remove(marker)
        for layer in store_layers(viewer, role="roi", store=values.store):
            if not surface and mine_meta(layer).get("roi") == selection.roi and values.region_label:
                layer.selected_label = values.region_label
                layer.show_selected_label = True
                layer.visible = True
            elif not surface and getattr(layer, "show_selected_label", False):
                layer.show_selected_label = False
