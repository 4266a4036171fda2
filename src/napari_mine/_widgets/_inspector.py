"""Voxel inspector: click a voxel in the brain and see where it sits, how well the encoder predicts it, which
images drive it, what it is selective for (its concept profile) and, on the image under the stimulus slider,
which patches drive it (the exact attribution map) and what they show (the per-image description).

The widget only turns the click into grid indices and moves results onto layers and labels; reading the
store and the arithmetic run in thread workers over ``napari_mine.results.Results``, which calls the engine
(``napari_mine.attribution``, ``napari_mine.describe``). Work on data already in memory (a few milliseconds)
is answered on the Qt thread instead: a worker's hand-off and the second redraw it causes cost more.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from qtpy.QtCore import QEvent, QSize, Qt, Signal
from qtpy.QtGui import QIcon
from qtpy.QtWidgets import (
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QLabel,
    QScrollArea,
    QToolButton,
    QVBoxLayout,
    QWidget,
)
from superqt import QLabeledSlider

from napari_mine._reader import layer_metadata
from napari_mine._widgets._common import (
    BarChart,
    Job,
    brain_layer,
    mine_meta,
    report_failure,
    run_here,
    set_stimulus_row,
    start_job,
    stimulus_row,
    store_layers,
    to_pixmap,
)
from napari_mine._widgets._study import (
    SubjectsPanel,
    compare_subjects,
    keep_study_grid,
    show_linked_selection,
    store_in_cell,
    study_of,
    subject_stores,
)
from napari_mine._widgets._surface import (
    SurfaceViewChoice,
    index_text,
    is_surface,
    mark_site,
    own_picking,
    pick_site,
)
from napari_mine.results import ImageAttribution, TargetReport, open_results
from napari_mine.errors import MineInputError

N_TOP_IMAGES = 8
THUMBNAIL_PX = 64
THUMBNAILS_KEPT = 512  # drawn thumbnails kept (about 16 KB each)
VOXEL_LAYER = "selected voxel"
# Red: patches that raise the voxel's predicted response; blue: patches that lower it; near 0: transparent.
ATTRIBUTION_COLORS = [[0.23, 0.45, 0.95, 1.0], [0.23, 0.45, 0.95, 0.0], [0.95, 0.3, 0.15, 0.0],
                      [0.95, 0.3, 0.15, 1.0]]  # the same red and blue as the charts' bars (_common)


def attribution_colormap():
    """Diverging and transparent at zero, so the stimulus shows through where patches do not matter."""
    from napari.utils.colormaps import Colormap

    return Colormap(ATTRIBUTION_COLORS, name="mine-attribution", display_name="attribution (blue − / red +)",
                    controls=[0.0, 0.5, 0.5, 1.0])


@dataclass
class _Target:
    """The layers a job started on: its results go there, whatever is selected when it ends."""

    request: int
    store: str
    brain: object
    stimuli: object | None


# ---- worker jobs (no Qt) ----------------------------------------------------------------------------
def _space(view, vocabulary, checkpoint):
    """The concept space for descriptions, or a sentence saying why there is none."""
    try:
        return view.concept_space(vocabulary, checkpoint), ""
    except MineInputError as error:
        return None, f"No descriptions: {error}"


def warm_up(store: str, vocabulary: str | None, checkpoint: str | None, row: int | None):
    """Worker job: read what the first click needs before it comes, the cheapest and most needed first: the
    encoder and features, the space, the concept space (its text embeddings from the folder; embedded by the
    backbone and stored there the first time only), the token chunk under the slider and the stimuli. The
    backbone itself is loaded only when the vocabulary needs embedding. Returns the store and the shape of its
    patch grid (None without a fitted encoder)."""
    from napari_mine.attribution import grid_side

    view = open_results(store)
    view.space  # noqa: B018 - reads the mask and ROI volumes once
    grid = None
    if view.is_fitted:
        view.weights()
        view.features()
        view.rest()
        view.accuracy  # noqa: B018 - reads once
        _space(view, vocabulary, checkpoint)
        grid = (grid_side(view.tokens_per_image),) * 2
        if row is not None:
            view.tokens([row])
        view.images  # noqa: B018 - opens the stimuli
    return store, grid


def hold_profiles(store: str, vocabulary: str | None, checkpoint: str | None) -> str:
    """Worker job, after :func:`warm_up`: the saved profiles into memory (when they fit), so clicks read none;
    a click meanwhile reads its own rows from disk."""
    view = open_results(store)
    if view.is_fitted:
        space, _ = _space(view, vocabulary, checkpoint)
        if space is not None:
            view.hold_saved_profiles(space)
    return store


def read_tokens(store: str, rows) -> None:
    """Worker job: read the token chunks of ``rows`` (the neighbours of the slider's image) into memory."""
    open_results(store).tokens(rows)


def inspect_voxel(store: str, ijk, ray, row: int | None, k: int, vocabulary=None, checkpoint=None, shown_rows=()):
    """Worker job: resolve the clicked voxel (a grid index, or the first mask voxel along a 3-D ray) and
    compute its report; ``{"outside": ijk}`` when the click is not on a voxel of the mask."""
    view = open_results(store)
    if ray is not None:
        ijk = first_voxel_on_ray(view.space.mask, *ray)
    if ijk is None:  # the ray met no mask voxel, or the click missed the cortex
        return {"outside": None}
    voxel = view.space.target_at(ijk)
    if voxel is None:
        return {"outside": tuple(int(v) for v in ijk)}
    space, note = _space(view, vocabulary, checkpoint) if view.has("encoder") else (None, "")
    return view.report(voxel, row, k, space, shown_rows=shown_rows), note


def attribution_on_image(store: str, voxel: int, row: int, vocabulary=None, checkpoint=None) -> ImageAttribution:
    """Worker job: the voxel's map and description on one image (a slider move)."""
    view = open_results(store)
    return view.image_map(voxel, row, _space(view, vocabulary, checkpoint)[0])


def first_voxel_on_ray(mask: np.ndarray, start: np.ndarray, direction: np.ndarray):
    """The first voxel of ``mask`` met by the ray ``start + t·direction`` (data coordinates), or None."""
    direction = np.asarray(direction, dtype=float)
    norm = np.linalg.norm(direction)
    if norm == 0:
        return None
    direction = direction / norm
    reach = float(np.linalg.norm(mask.shape)) + 1.0
    steps = np.arange(-reach, reach, 0.25)
    points = np.rint(np.asarray(start, dtype=float)[None] + steps[:, None] * direction[None]).astype(int)
    points = points[np.all((points >= 0) & (points < np.asarray(mask.shape)), axis=1)]
    hits = np.flatnonzero(mask[tuple(points.T)]) if len(points) else []
    return tuple(int(v) for v in points[hits[0]]) if len(hits) else None


def _tagged(request: int, function, *args):
    """Run a job and tag its result with the request it answers (older answers are dropped)."""
    return request, function(*args)


# ---- the widget ---------------------------------------------------------------------------------------
class VoxelInspector(QWidget):
    """Dock widget: click a voxel → its coordinates, ROI, accuracy, top images, profile and attribution."""

    #: Emitted on the main thread once a job's answer is shown: "report", "overlay", "subjects" (a study's other
    #: subjects at the selection), "outside" or "failed".
    updated = Signal(str)
    #: Emitted with a store's path once what its first click needs is in memory.
    preloaded = Signal(str)

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self._request = 0
        self._latest_click = 0  # the newest click job; older reports are dropped
        self._latest_map = 0  # the newest job that computes a map (a click or a slider move)
        self._targets: dict[int, _Target] = {}
        self._selected: tuple[str, int] | None = None  # (store, voxel)
        self._overlay_row: int | None = None
        self._warmed: set[str] = set()
        self._icons: OrderedDict[tuple[str, int], QIcon] = OrderedDict()  # thumbnails drawn once per image
        self._reading: Job | None = None  # the running read of the slider's neighbouring token chunks
        self.top_rows: list[int] = []
        self._build()
        self._attached = False
        self.attach()
        self.destroyed.connect(partial(_detach, self.viewer, self._on_mouse_drag, self._on_dims_step,
                                       self._on_layer_inserted))
        self._on_layer_inserted()
        own_picking(self.viewer)
        keep_study_grid(self.viewer)

    # ---- UI --------------------------------------------------------------------------------------
    def _build(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setMinimumWidth(4 * (THUMBNAIL_PX + 16) + 40)
        outer.addWidget(scroll)
        body = QWidget()
        scroll.setWidget(body)
        layout = QVBoxLayout(body)

        self.status = QLabel("Click a voxel of the brain map (2-D or 3-D view) to inspect it.")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        layout.addWidget(SurfaceViewChoice(self.viewer))

        voxel_box = QGroupBox("Voxel")
        form = QFormLayout(voxel_box)
        self.fields: dict[str, QLabel] = {}
        for key, label in (("ijk", "grid index (i, j, k) / vertex"), ("world", "position (mm)"), ("roi", "ROI"),
                           ("r", "accuracy r (test images)"), ("normalized_r", "r / noise ceiling"),
                           ("noise_ceiling", "noise ceiling")):
            value = QLabel("–")
            value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            value.setWordWrap(True)
            form.addRow(label, value)
            self.fields[key] = value
        layout.addWidget(voxel_box)
        self.subjects = SubjectsPanel(self.viewer)
        layout.addWidget(self.subjects)

        top_box = QGroupBox("Top images (predicted ŷ; click to show)")
        grid = QGridLayout(top_box)
        grid.setSpacing(2)
        self.thumbnails: list[QToolButton] = []
        for index in range(N_TOP_IMAGES):
            button = QToolButton()
            button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextUnderIcon)
            button.setIconSize(QSize(THUMBNAIL_PX, THUMBNAIL_PX))
            button.setToolTip("Show this image under the stimulus slider")
            button.setEnabled(False)
            button.clicked.connect(partial(self._on_thumbnail, index))
            grid.addWidget(button, index // 4, index % 4)
            self.thumbnails.append(button)
        layout.addWidget(top_box)

        map_box = QGroupBox("On the image under the slider")
        map_layout = QFormLayout(map_box)
        self.map_label = QLabel("–")
        self.map_label.setWordWrap(True)
        map_layout.addRow(self.map_label)
        self.description = QLabel("–")
        self.description.setWordWrap(True)
        self.description.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        map_layout.addRow("what drives it here", self.description)
        self.opacity = QLabeledSlider(Qt.Orientation.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(70)
        self.opacity.valueChanged.connect(self._on_opacity)
        map_layout.addRow("map opacity (%)", self.opacity)
        self.threshold = QLabeledSlider(Qt.Orientation.Horizontal)
        self.threshold.setRange(0, 95)
        self.threshold.setValue(30)
        self.threshold.setToolTip("Hide patches whose |contribution| is below this share of the image's largest")
        self.threshold.valueChanged.connect(self._on_threshold)
        map_layout.addRow("hide below (% of max)", self.threshold)
        layout.addWidget(map_box)

        profile_box = QGroupBox("Concept profile (over its top images)")
        profile_layout = QVBoxLayout(profile_box)
        self.profile_chart = BarChart(self.viewer, height=210)
        profile_layout.addWidget(self.profile_chart)
        self.note = QLabel("")
        self.note.setWordWrap(True)
        profile_layout.addWidget(self.note)
        layout.addWidget(profile_box)
        layout.addStretch(1)

    # ---- callbacks: attach once, detach on teardown ------------------------------------------------
    def attach(self) -> None:
        if self._attached:
            return
        self.viewer.mouse_drag_callbacks.append(self._on_mouse_drag)
        self.viewer.dims.events.current_step.connect(self._on_dims_step)
        self.viewer.layers.events.inserted.connect(self._on_layer_inserted)
        self._attached = True

    def teardown(self) -> None:
        """Remove the viewer callbacks (the dock was removed; closing a dock alone keeps them)."""
        if self._attached:
            _detach(self.viewer, self._on_mouse_drag, self._on_dims_step, self._on_layer_inserted)
            self._attached = False

    def event(self, event) -> bool:
        if event.type() == QEvent.Type.ParentChange:
            (self.attach if self.parent() is not None else self.teardown)()
        return super().event(event)

    def _on_layer_inserted(self, event=None) -> None:
        """Warm up a newly opened store (every subject of a study) in the background so the first click answers
        quickly."""
        current = brain_layer(self.viewer)
        stores = ([mine_meta(current)["store"]] if current is not None else []) + list(subject_stores(self.viewer))
        for store in dict.fromkeys(stores):
            brain = brain_layer(self.viewer, store)
            if brain is None or store in self._warmed:
                continue
            meta = mine_meta(brain)
            self._warmed.add(store)
            stimuli = self._stimuli_of(store)
            row = stimulus_row(self.viewer, stimuli) if stimuli is not None else None
            start_job(self, warm_up, store, meta.get("vocabulary"), meta.get("checkpoint"), row,
                      returned=self._on_warmed)

    def _on_warmed(self, value) -> None:
        """A store's first click is ready to be answered: its layers for the answer are made now (a napari layer's
        first insertion and draw cost about a second here), then the saved profiles are held."""
        if report_failure(value):
            return
        store, grid = value
        brain = brain_layer(self.viewer, store)
        if brain is None:
            return
        target = _Target(0, store, brain, self._stimuli_of(store))
        if study_of(self.viewer, store) is None and not is_surface(brain):  # a study's grid places its own layers
            active = self.viewer.layers.selection.active
            self._marker_layer(target)
            if grid is not None and target.stimuli is not None:
                self._overlay_layer(target, grid)
            self.viewer.layers.selection.active = active  # what the user had selected
        meta = mine_meta(brain)
        start_job(self, hold_profiles, store, meta.get("vocabulary"), meta.get("checkpoint"),
                  returned=self._on_held)

    def _on_held(self, value) -> None:
        if not report_failure(value):
            self.preloaded.emit(value)

    def _on_mouse_drag(self, viewer, event):
        """Left click without drag → inspect (a drag pans the view as usual)."""
        if event.button != 1:
            return
        position = np.asarray(event.position, dtype=float)
        view_direction = getattr(event, "view_direction", None)
        viewbox = getattr(event, "viewbox", None)
        yield
        dragged = False
        while event.type == "mouse_move":
            dragged = True
            yield
        if not dragged:
            self.inspect_position(position, view_direction, viewbox)

    # ---- inspecting ---------------------------------------------------------------------------------
    def inspect_position(self, position, view_direction=None, viewbox=None):
        """Inspect the voxel at a world position (3-D view: the first mask voxel along the view ray).

        In grid mode (a study: a cell per subject) the click's ``viewbox`` names the cell, hence the subject, and
        that subject's brain becomes the selected layer (the other docks follow it). Returns the started Job, or
        None when no results store is open or the answer was shown at once.
        """
        from napari.utils.notifications import show_info

        brain = brain_layer(self.viewer, store_in_cell(self.viewer, viewbox))
        if brain is None:
            show_info("Open a napari-mine results folder (or the demo sample) to inspect voxels.")
            return None
        if self.viewer.layers.selection.active is not brain and store_in_cell(self.viewer, viewbox):
            self.viewer.layers.selection.active = brain
        meta = mine_meta(brain)
        store = meta["store"]
        position = np.asarray(position, dtype=float)
        ijk, ray = None, None
        if is_surface(brain):
            site = pick_site(self.viewer, store, position, view_direction)
            ijk = None if site is None else (site,)
        elif self.viewer.dims.ndisplay == 3 and view_direction is not None:
            start = brain.world_to_data(position)
            towards = brain.world_to_data(position + np.asarray(view_direction, dtype=float))
            ray = (start, towards - start)
        else:
            ijk = tuple(int(v) for v in np.rint(brain.world_to_data(position)))
        stimuli = self._stimuli_of(store)
        row = stimulus_row(self.viewer, stimuli) if stimuli is not None else None
        target = self._new_target(store, brain, stimuli)
        self._latest_click = self._latest_map = target.request
        job = (_tagged, target.request, inspect_voxel, store, ijk, ray, row, N_TOP_IMAGES, meta.get("vocabulary"),
               meta.get("checkpoint"), frozenset(r for s, r in self._icons if s == store))
        if ray is None and self._answers_here(store, ijk, meta.get("vocabulary")):
            self._on_report(run_here(*job))
            return None
        return start_job(self, *job, returned=self._on_report)

    def _answers_here(self, store: str, ijk, vocabulary) -> bool:
        """Whether a click's report is a few milliseconds of work: everything it reads is in memory but its top
        images, one read each, and the slider image's token chunk (~20 ms in all for a new voxel of a ViT-B/16
        store). A worker's hand-off costs more: the report then competes for the GIL with the redraw, 100 ms and
        more on 2 cores."""
        view = open_results(store)
        if ijk is None or not view.loaded([], vocabulary):
            return False
        voxel = view.space.target_at(ijk)
        return voxel is None or view.profile_loaded(voxel, vocabulary)  # None: a message only

    def _new_target(self, store, brain, stimuli) -> _Target:
        self._request += 1
        target = _Target(self._request, store, brain, stimuli)
        self._targets = {k: v for k, v in self._targets.items() if k in (self._latest_click, self._latest_map)}
        self._targets[self._request] = target
        return target

    def _stimuli_of(self, store):
        layers = store_layers(self.viewer, role="stimuli", store=store)
        return layers[0] if layers else None

    def _on_report(self, value) -> None:
        if report_failure(value):
            self.updated.emit("failed")
            return
        request, result = value
        target = self._targets.get(request)
        if target is None or request != self._latest_click:
            return
        if isinstance(result, dict):
            from napari.utils.notifications import show_info

            outside = result["outside"]
            site = "vertex" if outside is not None and len(outside) == 1 else "voxel"  # a surface site is (vertex,)
            where = f" {outside[0] if site == 'vertex' else outside}" if outside is not None else ""
            show_info(f"The {site}{where} is outside the brain mask: click inside the coloured map.")
            self.updated.emit("outside")
            return
        report, note = result
        self._show_report(target, report, note)
        self.updated.emit("report")
        self._compare_subjects(target, report.info.target)

    def _compare_subjects(self, target: _Target, voxel: int):
        """In a study, the selection in every subject, read in a worker and shown beside the clicked subject's;
        returns the Job (None for a single results folder)."""
        subject = study_of(self.viewer, target.store)
        if subject is None:
            self.subjects.setVisible(False)
            return None
        meta = mine_meta(target.brain)
        return start_job(self, _tagged, target.request, compare_subjects, *subject, voxel, meta.get("vocabulary"),
                         meta.get("checkpoint"), returned=self._on_comparison)

    def _on_comparison(self, value) -> None:
        if report_failure(value):
            self.updated.emit("failed")
            return
        request, selection = value
        if request != self._latest_click:
            return
        self.subjects.show_selection(selection)
        show_linked_selection(self.viewer, selection, VOXEL_LAYER)
        self.updated.emit("subjects")

    def _show_report(self, target: _Target, report: TargetReport, note: str) -> None:
        info = report.info
        self._selected = (target.store, info.target)
        self._mark_voxel(target, info.ijk, info.target)
        self.status.setText(f"Voxel {info.target} of {Path(target.store).name}")
        self.fields["ijk"].setText(index_text(target.brain, info.ijk))
        self.fields["world"].setText("(" + ", ".join(f"{v:.1f}" for v in info.world) + ")")
        self.fields["roi"].setText(", ".join(info.rois) or "none")
        self.fields["r"].setText(_number(info.r))
        self.fields["normalized_r"].setText(_number(info.normalized_r))
        self.fields["noise_ceiling"].setText(
            "–" if info.noise_ceiling is None else f"{info.noise_ceiling:.1f} % of variance")
        self.top_rows = [int(row) for row in report.top_rows]
        for index, button in enumerate(self.thumbnails):
            if index < len(self.top_rows):
                button.setIcon(self._icon(target.store, self.top_rows[index], report.thumbnails[index]))
                button.setText(f"#{self.top_rows[index]}\nŷ {report.top_values[index]:.2f}")
                button.setEnabled(target.stimuli is not None)
            else:
                button.setIcon(QIcon())
                button.setText("")
                button.setEnabled(False)
        if report.profile:
            concepts, scores = zip(*report.profile)
            self.profile_chart.set_bars(concepts, scores, f"MINE profile score ({report.vocabulary} vocabulary)")
        else:
            self.profile_chart.set_bars([], [], "")
        self.note.setText(note)
        if not report.top_rows.size:
            self.map_label.setText("This store has no fitted encoder yet: run Fit to see attributions.")
        elif report.image is not None and target.stimuli is not None and target.request == self._latest_map:
            self._show_attribution(target, report.image)

    def _icon(self, store: str, row: int, image) -> QIcon:
        """The thumbnail of a stimulus, drawn once per image (``image`` is None when it was drawn before)."""
        key = (store, row)
        if key in self._icons:
            self._icons.move_to_end(key)
            return self._icons[key]
        if image is None:  # dropped from the kept ones while the job ran
            return QIcon()
        icon = self._icons[key] = QIcon(to_pixmap(image, THUMBNAIL_PX))
        while len(self._icons) > THUMBNAILS_KEPT:
            self._icons.popitem(last=False)
        return icon

    def _mark_voxel(self, target: _Target, ijk, voxel: int) -> None:
        """Put the selected voxel on the store's "selected voxel" Points layer (shared with other widgets)."""
        if is_surface(target.brain):
            mark_site(self.viewer, target.store, voxel, ijk, VOXEL_LAYER)
            return
        marker = self._marker_layer(target)
        if marker.data.shape == (1, len(ijk)):  # moved in place: a new .data re-slices every layer
            marker.data[0] = ijk
            marker.refresh(highlight=False)
        else:
            marker.data = np.asarray([ijk], dtype=float)
        marker.metadata = layer_metadata(target.store, "voxel", voxel=int(voxel), ijk=list(ijk))

    def _marker_layer(self, target: _Target):
        """The store's "selected voxel" layer (a ring; made empty the first time)."""
        layers = store_layers(self.viewer, role="voxel", store=target.store)
        if layers:
            return layers[0]
        marker = self.viewer.add_points(
            np.zeros((0, 3)), name=VOXEL_LAYER, ndim=3, scale=target.brain.scale, translate=target.brain.translate,
            size=3, symbol="ring", face_color="#00e5ff", border_width=0,
            metadata=layer_metadata(target.store, "voxel"),
        )
        self.viewer.layers.selection.active = target.brain
        return marker

    # ---- the attribution overlay ------------------------------------------------------------------
    def _on_dims_step(self, event=None):
        if self._selected is None:
            return None
        store, voxel = self._selected
        stimuli = self._stimuli_of(store)
        if stimuli is None:
            return None
        row = stimulus_row(self.viewer, stimuli)
        if row == self._overlay_row:
            return None
        brain = brain_layer(self.viewer, store)
        meta = mine_meta(brain) if brain is not None else {}
        target = self._new_target(store, brain, stimuli)
        self._latest_map = target.request
        self._overlay_row = row
        job = (_tagged, target.request, attribution_on_image, store, voxel, row, meta.get("vocabulary"),
               meta.get("checkpoint"))
        if open_results(store).loaded([], meta.get("vocabulary")):  # a few ms (a token chunk's read: 3-15 ms)
            self._on_attribution(run_here(*job))  # answered before the redraw
            return None
        return start_job(self, *job, returned=self._on_attribution)

    def refresh_overlay(self):
        """Recompute the overlay for the current voxel and image (returns the Job, or None when it was
        answered at once)."""
        self._overlay_row = None
        return self._on_dims_step()

    def _on_attribution(self, value) -> None:
        if report_failure(value):
            self.updated.emit("failed")
            return
        request, attribution = value
        target = self._targets.get(request)
        if request == self._latest_map and target is not None and target.stimuli in self.viewer.layers:
            self._show_attribution(target, attribution)
            self.updated.emit("overlay")
            self._read_ahead(target.store, attribution.row)

    def _read_ahead(self, store: str, row: int) -> None:
        """Read the token chunks before and after the slider's image in the background, so that scrubbing
        across a chunk's edge finds the next image in memory too."""
        if self._reading is not None and self._reading.running:
            return
        view = open_results(store)
        step = view.token_rows_per_chunk
        rows = [r for r in (row - step, row + step) if 0 <= r < view.n_images and not view.tokens_loaded([r])]
        if rows:
            self._reading = start_job(self, read_tokens, store, rows, returned=report_failure)

    def _show_attribution(self, target: _Target, attribution: ImageAttribution) -> None:
        self._overlay_row = attribution.row
        overlay = self._overlay_layer(target, attribution.grid_map.shape)
        overlay.metadata = layer_metadata(target.store, "attribution", voxel=attribution.target,
                                          image=attribution.row, raw=attribution.grid_map)
        overlay.name = f"attribution of voxel {attribution.target}"
        self._apply_threshold(overlay)
        grid = attribution.grid_map
        positive, negative = float(grid[grid > 0].sum()), float(grid[grid < 0].sum())
        self.map_label.setText(
            f"Image #{attribution.row}: predicted ŷ = {attribution.predicted:.3f}. Red patches raise it by "
            f"{positive:.3f} in all, blue ones lower it by {-negative:.3f}; the patches carry "
            f"{100 * attribution.spatial_fraction:.0f} % of the prediction's terms (the rest is the class "
            "token, non-spatial terms and the bias)."
        )
        if attribution.description:
            concepts = ", ".join(f"{name} {score:.2f}" for name, score in attribution.concepts[:5])
            self.description.setText(f"<b>{attribution.description}</b><br>{concepts}")
        else:
            self.description.setText("no patch raises the prediction on this image")

    def _overlay_layer(self, target: _Target, grid_shape):
        """The store's attribution layer, laid exactly over the stimulus image (one cell per patch)."""
        for layer in store_layers(self.viewer, role="attribution", store=target.store):
            if layer.data.shape[1:] == tuple(grid_shape):
                return layer
            self.viewer.layers.remove(layer)
        stimuli = target.stimuli
        height, width = stimuli.data.shape[-3:-1] if stimuli.rgb else stimuli.data.shape[-2:]
        pixel = np.asarray(stimuli.scale[-2:], dtype=float)
        cell = pixel * np.array([height, width]) / np.asarray(grid_shape)
        origin = np.asarray(stimuli.translate[-2:], dtype=float) - pixel / 2 + cell / 2
        layer = self.viewer.add_image(
            np.zeros((1,) + tuple(grid_shape), dtype=np.float32), name="attribution",
            scale=(stimuli.scale[-3], *cell), translate=(stimuli.translate[-3], *origin),
            colormap=attribution_colormap(), contrast_limits=(-1.0, 1.0),  # 0 in the middle: transparent until a map
            opacity=self.opacity.value() / 100, blending="translucent",
            interpolation2d="nearest", metadata=layer_metadata(target.store, "attribution"),
        )
        self.viewer.layers.selection.active = target.brain
        return layer

    def _apply_threshold(self, overlay) -> None:
        raw = np.asarray(mine_meta(overlay).get("raw"), dtype=np.float32)
        if raw.ndim != 2:
            return
        peak = float(np.abs(raw).max()) or 1.0
        # In place: setting .data would recompute the viewer's dims. The data first, so that the thumbnail the
        # contrast limits redraw (from the slice, a view of .data) is already the new map's; the refresh then
        # only uploads the texture (a second thumbnail would be the same).
        overlay.data[0] = np.where(np.abs(raw) >= self.threshold.value() / 100 * peak, raw, 0.0)
        overlay.contrast_limits = (-peak, peak)
        overlay.refresh(extent=False, highlight=False, thumbnail=False)

    def _on_threshold(self) -> None:
        for layer in store_layers(self.viewer, role="attribution"):
            self._apply_threshold(layer)

    def _on_opacity(self) -> None:
        for layer in store_layers(self.viewer, role="attribution"):
            layer.opacity = self.opacity.value() / 100

    def _on_thumbnail(self, index: int) -> None:
        if self._selected is None or index >= len(self.top_rows):
            return
        stimuli = self._stimuli_of(self._selected[0])
        if stimuli is not None:
            set_stimulus_row(self.viewer, stimuli, self.top_rows[index])


def _detach(viewer, mouse_callback, dims_callback, layers_callback) -> None:
    if mouse_callback in viewer.mouse_drag_callbacks:
        viewer.mouse_drag_callbacks.remove(mouse_callback)
    viewer.dims.events.current_step.disconnect(dims_callback)
    viewer.layers.events.inserted.disconnect(layers_callback)


def _number(value) -> str:
    return "–" if value is None else f"{value:.3f}"
