"""A study of several subjects in napari: one grid cell per subject, a click in one subject's cell linked to the same
ROI in the other, and both subjects' values and ROI profiles side by side in the inspector and the ROI explorer.

The study is built once per module through the real CLI (a two-subject synthetic world in volume space, whose
subjects have different grids: ``features --subject 1 2``, ``fit``, ``profile``) and only read afterwards.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from napari_mine._reader import META
from napari_mine.models.backbone import import_torch

import_torch()  # torch before any napari canvas (see test_widgets)

pytestmark = pytest.mark.gui
TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def volume_study(fitted_study):
    return fitted_study  # conftest: three subjects in volume space, fitted and profiled


@pytest.fixture
def study_viewer(make_napari_viewer, volume_study, qtbot):
    viewer = make_napari_viewer()
    viewer.open(str(volume_study), plugin="napari-mine")
    return viewer


def dock(viewer, name):
    _, widget = viewer.window.add_plugin_dock_widget("napari-mine", name)
    return widget


def meta(layer) -> dict:
    return layer.metadata.get(META, {})


def subject_layer(viewer, subject, role, roi=None):
    return next(layer for layer in viewer.layers if meta(layer).get("subject") == subject
                and meta(layer).get("role") == role and (roi is None or meta(layer).get("roi") == roi))


def cell_subjects(viewer) -> list[set]:
    """The subjects (by store) whose layers each grid cell holds, cell by cell."""
    stores = {meta(layer)["store"]: meta(layer)["subject"] for layer in viewer.layers if "subject" in meta(layer)}
    grid = viewer.canvas.grid
    return [{stores.get(meta(viewer.layers[i]).get("store")) for i in indices}
            for _, indices in grid.iter_viewboxes(viewer.layers)]


def click(viewer, widget, position, viewbox):
    """Press and release (no move) in grid cell ``viewbox`` through the widget's mouse callback, as napari does."""
    [callback] = [cb for cb in viewer.mouse_drag_callbacks if getattr(cb, "__self__", None) is widget]
    event = SimpleNamespace(type="mouse_press", position=tuple(position), button=1, modifiers=[],
                            view_direction=None, dims_displayed=list(viewer.dims.displayed), viewbox=viewbox)
    gesture = callback(viewer, event)
    next(gesture)
    event.type = "mouse_release"
    with pytest.raises(StopIteration):
        next(gesture)


def face_voxel(results):
    """A subject's best-predicted voxel of a face ROI, and its label."""
    faces = results.space.roi_values("floc-faces")
    voxel = int(np.nanargmax(np.where(faces > 0, results.accuracy["r"], -np.inf)))
    return voxel, results.space.rois["floc-faces"][1][int(faces[voxel])]


def world_position(viewer, brain, ijk):
    position = np.array(viewer.dims.point, dtype=float)
    position[-3:] = brain.data_to_world(ijk)
    viewer.dims.set_point(range(viewer.dims.ndim - 3, viewer.dims.ndim), position[-3:])
    return position


def click_face_voxel(viewer, inspector, study_root, subject, qtbot):
    """Click a subject's best face voxel in its cell and wait for the other subjects' values; returns the label."""
    from napari_mine.study import Study

    results = Study.open(study_root).results(subject)
    voxel, label = face_voxel(results)
    position = world_position(viewer, subject_layer(viewer, subject, "accuracy"), results.space.ijk_of(voxel))
    answers = []
    inspector.updated.connect(answers.append)
    click(viewer, inspector, position, (0, subject - 1))
    qtbot.waitUntil(lambda: "subjects" in answers or "failed" in answers, timeout=TIMEOUT_MS)  # after "report"
    assert answers == ["report", "subjects"] and inspector.subjects.selection.clicked == subject
    return voxel, label


def expected_profile(results, label):
    """A subject's mean saved profile over an ROI label's voxels (what the side-by-side bars show)."""
    space = results.concept_space()
    value = results.space.label_value("floc-faces", label)
    members = np.flatnonzero(results.space.roi_values("floc-faces") == value)
    return dict(zip(space.vocabulary.concepts, results.profiles(space, members).scores.mean(axis=0))), members


# ---- one viewer per test: reading the study's layers is most of a test's time ---------------------------------
def test_a_click_in_one_subjects_cell_selects_the_same_roi_in_every_subject(study_viewer, volume_study, qtbot):
    from napari_mine.study import Study

    viewer = study_viewer
    inspector = dock(viewer, "Voxel inspector")
    grid = viewer.canvas.grid
    qtbot.waitUntil(lambda: grid.enabled, timeout=TIMEOUT_MS)
    subjects = (1, 2, 3)
    for subject in subjects:
        layers = [layer for layer in viewer.layers if meta(layer).get("subject") == subject]
        assert all(layer.name.startswith(f"subj0{subject} · ") for layer in layers)
        assert {meta(layer)["study"] for layer in layers} == {str(volume_study)}
        assert {meta(layer)["store"] for layer in layers} == {str(volume_study / f"subj0{subject}")}
        assert {"anatomy", "accuracy", "roi", "stimuli"} <= {meta(layer)["role"] for layer in layers}
        assert grid.stride == len(layers)
    assert grid.shape[0] * grid.shape[1] >= len(subjects) and cell_subjects(viewer) == [{1}, {2}, {3}]
    first, second = (subject_layer(viewer, s, "accuracy") for s in (1, 2))
    assert first.data.shape != second.data.shape  # the subjects' own grids, each in its own cell

    voxel, label = click_face_voxel(viewer, inspector, volume_study, 1, qtbot)
    assert inspector.status.text() == f"Voxel {voxel} of subj01"
    study = Study.open(volume_study)
    for subject in subjects:
        results = study.results(subject)
        roi = subject_layer(viewer, subject, "roi", "floc-faces")
        assert roi.show_selected_label and roi.visible
        assert roi.selected_label == results.space.label_value("floc-faces", label)
        values = inspector.subjects.selection.of(subject)
        profile, members = expected_profile(results, label)
        assert values.region_size == len(members)
        assert values.region_accuracy == pytest.approx(np.nanmedian(results.accuracy["normalized_r"][members]))
        shown = inspector.subjects.chart.series[f"subj0{subject}"]
        assert shown == pytest.approx([profile[concept] for concept in inspector.subjects.chart.labels], abs=1e-5)
    assert inspector.subjects.selection.of(1).target == voxel and inspector.subjects.selection.of(2).target is None
    assert inspector.subjects.isVisibleTo(inspector)
    assert all(f"subj0{subject}" in inspector.subjects.table.text() for subject in subjects)
    assert len(inspector.subjects.chart.labels) == 8
    qtbot.waitUntil(lambda: cell_subjects(viewer) == [{1}, {2}, {3}], timeout=TIMEOUT_MS)  # the marker and overlay too
    marker = next(layer for layer in viewer.layers if meta(layer).get("role") == "voxel")
    assert meta(marker)["store"] == str(volume_study / "subj01")


def test_roi_explorer_shows_the_region_of_the_clicked_subject_in_every_subject(study_viewer, volume_study, qtbot):
    from napari_mine.study import Study

    viewer = study_viewer
    inspector = dock(viewer, "Voxel inspector")
    explorer = dock(viewer, "ROI explorer")
    qtbot.waitUntil(lambda: viewer.canvas.grid.enabled and explorer.roi.count() > 0, timeout=TIMEOUT_MS)
    voxel, label = click_face_voxel(viewer, inspector, volume_study, 2, qtbot)  # in the second cell
    assert inspector.status.text() == f"Voxel {voxel} of subj02"
    assert viewer.layers.selection.active is subject_layer(viewer, 2, "accuracy")  # the docks follow the subject
    qtbot.waitUntil(lambda: explorer._store == str(volume_study / "subj02") and explorer.roi.count() > 0,
                    timeout=TIMEOUT_MS)
    assert explorer.use_selected_voxel() and explorer.label.currentText() == label
    answers = []
    explorer.updated.connect(answers.append)
    explorer.run()
    qtbot.waitUntil(lambda: {"report", "subjects"} <= set(answers) or "failed" in answers, timeout=TIMEOUT_MS)
    assert sorted(answers) == ["report", "subjects"]  # the clusters and the subjects' profiles, either first
    chart = explorer.subjects.chart
    assert list(chart.series) == ["subj01", "subj02", "subj03"] and explorer.subjects.selection.label == label
    study = Study.open(volume_study)
    for subject in (1, 2, 3):
        profile, _ = expected_profile(study.results(subject), label)
        assert chart.series[f"subj0{subject}"] == pytest.approx([profile[c] for c in chart.labels], abs=1e-5)
