"""The dock widgets driven as a user would: open data, click voxels, move the stimulus slider, fit, cancel,
edit an image for a voxel.

One tiny synthetic world (150 images) and its fitted results store are built once per session through
the real pipeline (loader → shipped mine-small → features → encoder) and only read afterwards; tests that
write (Data and model, Fit) use fresh results folders.
"""

from __future__ import annotations

import re
import time
from types import SimpleNamespace

import numpy as np
import pytest

from napari_mine._reader import META
from napari_mine.models.backbone import import_torch

# Load torch, open_clip and triton before any napari canvas exists: with Mesa's software OpenGL (Xvfb) in
# the process, a first import of triton afterwards (open_clip → torchvision → torch._dynamo) crashes it.
# The plugin guards its own imports; importing here keeps every test module of the session safe too.
import_torch()

from qtpy.QtWidgets import QApplication  # noqa: E402 - after torch (above)

from napari_mine._widgets._common import dock_jobs, marked_voxels  # noqa: E402

pytestmark = pytest.mark.gui
N_IMAGES = 150
TIMEOUT_MS = 120_000


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """A synthetic world in the NSD layout: 150 images, 30 of them shown 3 times, two sessions."""
    from napari_mine.synthetic.write_nsd import write_world

    root = tmp_path_factory.mktemp("viewer") / "world"
    write_world(root, seed=3, n_images=N_IMAGES, n_shared=30, repeats=3, trials_per_session=105)
    return root


@pytest.fixture(scope="session")
def fitted_store(tiny_world):
    """The world's results store with features and a fitted encoder (read-only for the tests)."""
    from napari_mine.data import load_nsd
    from napari_mine.pipeline import compute_features, fit_encoder_step
    from napari_mine.results import shared_backbone
    from napari_mine.store import ResultsStore

    dataset = load_nsd(tiny_world, subject=1)
    backbone = shared_backbone("mine-small", None, None)
    store = ResultsStore.create(tiny_world.parent / "results", model=backbone.record, dataset=dataset.source)
    compute_features(dataset, backbone, store)
    fit_encoder_step(dataset, store)
    return store.root.resolve()


@pytest.fixture
def viewer_with_store(make_napari_viewer, fitted_store):
    viewer = make_napari_viewer()
    viewer.open(str(fitted_store), plugin="napari-mine")
    return viewer


def dock(viewer, name):
    _, widget = viewer.window.add_plugin_dock_widget("napari-mine", name)
    if name == "Voxel inspector":  # its preload of an open store adds the marker and overlay layers: done first
        deadline = time.monotonic() + TIMEOUT_MS / 1000
        while dock_jobs(widget) and time.monotonic() < deadline:
            QApplication.processEvents()
            time.sleep(0.01)
    return widget


def layer_of(viewer, role):
    return next(layer for layer in viewer.layers if layer.metadata.get(META, {}).get("role") == role)


def world_position(viewer, ijk):
    """The world position of a voxel's centre (and the current stimulus), as napari reports a click."""
    brain = layer_of(viewer, "accuracy")
    position = np.array(viewer.dims.point, dtype=float)
    position[-3:] = brain.data_to_world(ijk)
    viewer.dims.set_point(range(viewer.dims.ndim - 3, viewer.dims.ndim), position[-3:])
    return position


def click(viewer, widget, position, view_direction=None):
    """Press and release (no move) through the widget's own viewer mouse callback, as napari drives it."""
    [callback] = [cb for cb in viewer.mouse_drag_callbacks if getattr(cb, "__self__", None) is widget]
    event = SimpleNamespace(type="mouse_press", position=tuple(position), button=1, modifiers=[],
                            view_direction=view_direction, dims_displayed=list(viewer.dims.displayed))
    gesture = callback(viewer, event)
    next(gesture)
    event.type = "mouse_release"
    with pytest.raises(StopIteration):
        next(gesture)


def good_voxel(store):
    """A well-predicted voxel with a labelled category ROI (what a researcher would click)."""
    from napari_mine.results import open_results

    view = open_results(store)
    faces = view.space.roi_values("floc-faces") > 0
    voxel = int(np.nanargmax(np.where(faces, view.accuracy["r"], -np.inf)))
    return voxel, view.space.ijk_of(voxel)


# ---- sample data and the viewer helper ----------------------------------------------------------------
def test_sample_data_reuses_a_built_demo_store(fitted_store, tmp_path, monkeypatch, make_napari_viewer):
    from napari_mine import _sample_data

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / f"demo-seed{_sample_data.SAMPLE_SEED}-{_sample_data.SAMPLE_IMAGES}").symlink_to(fitted_store)
    monkeypatch.setenv("NAPARI_MINE_CACHE", str(cache))
    monkeypatch.setattr("napari_mine.demo.run_demo", lambda *a, **k: pytest.fail("the demo was rebuilt"))
    viewer = make_napari_viewer()
    viewer.open_sample("napari-mine", "demo-world")
    roles = {layer.metadata[META]["role"] for layer in viewer.layers}
    assert {"anatomy", "accuracy", "roi", "stimuli"} <= roles
    stimuli = layer_of(viewer, "stimuli")
    assert stimuli.data.shape[:2] == (N_IMAGES, 1) and stimuli.rgb


def test_view_results_docks_the_widgets_on_the_store(fitted_store, qtbot):
    from napari_mine.viewer import view_results

    viewer = view_results(fitted_store, block=False, show=False)
    try:
        assert {"Voxel inspector (napari-mine)", "ROI explorer (napari-mine)"} <= set(viewer.window.dock_widgets)
        assert layer_of(viewer, "accuracy").visible
    finally:
        viewer.close()


def test_stimuli_are_read_lazily_in_store_row_order(viewer_with_store, fitted_store):
    from napari_mine.results import open_results

    stimuli = layer_of(viewer_with_store, "stimuli")
    images = open_results(fitted_store).images
    np.testing.assert_array_equal(np.asarray(stimuli.data[7, 0]), images[7])


# ---- voxel inspector --------------------------------------------------------------------------------
def test_click_on_a_voxel_fills_the_inspector(viewer_with_store, fitted_store, qtbot):
    viewer = viewer_with_store
    inspector = dock(viewer, "Voxel inspector")
    voxel, ijk = good_voxel(fitted_store)
    with qtbot.waitSignal(inspector.updated, timeout=TIMEOUT_MS) as blocker:
        click(viewer, inspector, world_position(viewer, ijk))
    assert blocker.args == ["report"]
    assert inspector.fields["ijk"].text() == str(tuple(ijk))
    assert "FFA" in inspector.fields["roi"].text() or "OFA" in inspector.fields["roi"].text() \
        or "faces" in inspector.fields["roi"].text()
    assert "% of variance" in inspector.fields["noise_ceiling"].text()
    assert float(inspector.fields["r"].text()) > 0
    brain = layer_of(viewer, "accuracy")
    world = [float(v) for v in inspector.fields["world"].text().strip("()").split(",")]
    np.testing.assert_allclose(world, brain.data_to_world(ijk), atol=0.06)
    marker = layer_of(viewer, "voxel")
    np.testing.assert_array_equal(marker.data, [ijk])
    assert marker.metadata[META]["voxel"] == voxel
    assert len(inspector.top_rows) == 8 and all(not button.icon().isNull() for button in inspector.thumbnails)
    assert len(inspector.profile_chart.labels) == 10
    assert inspector.description.text() not in ("", "–")
    overlay = layer_of(viewer, "attribution")
    assert overlay.metadata[META]["voxel"] == voxel and overlay.data.shape == (1, 8, 8)


def test_moving_the_stimulus_slider_recomputes_the_overlay(viewer_with_store, fitted_store, qtbot):
    viewer = viewer_with_store
    inspector = dock(viewer, "Voxel inspector")
    _, ijk = good_voxel(fitted_store)
    with qtbot.waitSignal(inspector.updated, timeout=TIMEOUT_MS):
        click(viewer, inspector, world_position(viewer, ijk))
    overlay = layer_of(viewer, "attribution")
    before = overlay.metadata[META]["raw"].copy()
    shown_before = overlay.data.copy()
    with qtbot.waitSignal(inspector.updated, timeout=TIMEOUT_MS) as blocker:
        viewer.dims.set_current_step(0, 42)
    assert blocker.args == ["overlay"]
    assert overlay.metadata[META]["image"] == 42
    assert not np.allclose(overlay.metadata[META]["raw"], before)
    assert not np.array_equal(overlay.data, shown_before)
    assert "#42" in inspector.map_label.text()


def test_overlay_controls_set_opacity_and_hide_small_patches(viewer_with_store, fitted_store, qtbot):
    viewer = viewer_with_store
    inspector = dock(viewer, "Voxel inspector")
    _, ijk = good_voxel(fitted_store)
    with qtbot.waitSignal(inspector.updated, timeout=TIMEOUT_MS):
        click(viewer, inspector, world_position(viewer, ijk))
    overlay = layer_of(viewer, "attribution")
    inspector.opacity.setValue(40)
    assert overlay.opacity == pytest.approx(0.4)
    inspector.threshold.setValue(0)
    all_patches = np.count_nonzero(overlay.data)
    inspector.threshold.setValue(90)
    raw = overlay.metadata[META]["raw"]
    assert np.count_nonzero(overlay.data) == np.count_nonzero(np.abs(raw) >= 0.9 * np.abs(raw).max())
    assert np.count_nonzero(overlay.data) < all_patches


def test_thumbnail_moves_the_stimulus_slider_to_that_image(viewer_with_store, fitted_store, qtbot):
    viewer = viewer_with_store
    inspector = dock(viewer, "Voxel inspector")
    _, ijk = good_voxel(fitted_store)
    with qtbot.waitSignal(inspector.updated, timeout=TIMEOUT_MS):
        click(viewer, inspector, world_position(viewer, ijk))
    shown = viewer.dims.current_step[0]
    index = next(i for i, row in enumerate(inspector.top_rows) if row != shown)  # a thumbnail not on screen yet
    best = inspector.top_rows[index]
    with qtbot.waitSignal(inspector.updated, timeout=TIMEOUT_MS):
        inspector.thumbnails[index].click()
    assert viewer.dims.current_step[0] == best
    assert layer_of(viewer, "attribution").metadata[META]["image"] == best


def test_click_outside_the_mask_only_informs(viewer_with_store, qtbot):
    from napari.utils.notifications import notification_manager

    viewer = viewer_with_store
    inspector = dock(viewer, "Voxel inspector")
    n_layers = len(viewer.layers)
    with qtbot.waitSignal(inspector.updated, timeout=TIMEOUT_MS) as blocker:
        click(viewer, inspector, world_position(viewer, (0, 0, 0)))
    assert blocker.args == ["outside"]
    assert "outside the brain mask" in str(notification_manager.records[-1].message)
    assert len(viewer.layers) == n_layers and inspector.fields["ijk"].text() == "–"


def test_click_in_3d_picks_the_first_mask_voxel_along_the_ray(viewer_with_store, fitted_store, qtbot):
    from napari_mine.results import open_results

    viewer = viewer_with_store
    inspector = dock(viewer, "Voxel inspector")
    viewer.dims.ndisplay = 3
    mask = open_results(fitted_store).space.mask
    _, ijk = good_voxel(fitted_store)
    first = next(i for i in range(mask.shape[0]) if mask[i, ijk[1], ijk[2]])  # along +x from outside
    brain = layer_of(viewer, "accuracy")
    position = np.array(viewer.dims.point, dtype=float)
    position[-3:] = brain.data_to_world((-5, ijk[1], ijk[2]))
    direction = np.zeros(viewer.dims.ndim)
    direction[-3] = 1.0
    with qtbot.waitSignal(inspector.updated, timeout=TIMEOUT_MS):
        click(viewer, inspector, position, view_direction=direction)
    assert inspector.fields["ijk"].text() == str((first, ijk[1], ijk[2]))


def test_a_failing_job_shows_an_error_and_the_viewer_keeps_working(viewer_with_store, fitted_store, qtbot,
                                                                   monkeypatch):
    from napari.utils.notifications import notification_manager

    from napari_mine.results import Results

    viewer = viewer_with_store
    inspector = dock(viewer, "Voxel inspector")
    _, ijk = good_voxel(fitted_store)
    with monkeypatch.context() as patch:
        patch.setattr(Results, "report", lambda *args, **kwargs: (_ for _ in ()).throw(RuntimeError("disk vanished")))
        with qtbot.waitSignal(inspector.updated, timeout=TIMEOUT_MS) as blocker:
            click(viewer, inspector, world_position(viewer, ijk))
    assert blocker.args == ["failed"]
    assert any("disk vanished" in str(record.message) for record in notification_manager.records)
    with qtbot.waitSignal(inspector.updated, timeout=TIMEOUT_MS) as blocker:
        click(viewer, inspector, world_position(viewer, ijk))
    assert blocker.args == ["report"]


def test_removing_the_dock_detaches_the_mouse_callback(viewer_with_store):
    viewer = viewer_with_store
    inspector = dock(viewer, "Voxel inspector")
    assert any(getattr(cb, "__self__", None) is inspector for cb in viewer.mouse_drag_callbacks)
    viewer.window.remove_dock_widget(inspector)
    assert not any(getattr(cb, "__self__", None) is inspector for cb in viewer.mouse_drag_callbacks)


# ---- the inspector where people look: preload, stored text embeddings, layers updated in place ----------
def fresh_copy(fitted_store, tmp_path, monkeypatch):
    """A copy of the fitted store nobody has opened (no stored text embeddings), an empty user cache and no
    open read sessions: what a researcher has before the first look."""
    import shutil
    from collections import OrderedDict

    from napari_mine import results

    copy = tmp_path / "results"
    shutil.copytree(fitted_store, copy, ignore=shutil.ignore_patterns("concepts"))
    monkeypatch.setenv("NAPARI_MINE_CACHE", str(tmp_path / "user-cache"))
    monkeypatch.setattr(results, "_sessions", OrderedDict())
    return copy.resolve()


def count_text_tower(monkeypatch) -> list[str]:
    """Record the thread of every text-tower call (the backbone's ``encode_text``)."""
    import threading

    from napari_mine.models.backbone import Backbone

    calls, encode_text = [], Backbone.encode_text

    def recorded(self, texts):
        calls.append(threading.current_thread().name)
        return encode_text(self, texts)

    monkeypatch.setattr(Backbone, "encode_text", recorded)
    return calls


def open_preloaded(make_napari_viewer, store, qtbot):
    viewer = make_napari_viewer()
    inspector = dock(viewer, "Voxel inspector")
    with qtbot.waitSignal(inspector.preloaded, timeout=TIMEOUT_MS) as blocker:
        viewer.open(str(store), plugin="napari-mine")
    assert blocker.args == [str(store)]
    return viewer, inspector


def test_the_preload_embeds_the_vocabulary_once_so_the_first_click_loads_no_model(make_napari_viewer, fitted_store,
                                                                                tmp_path, monkeypatch, qtbot):
    from napari_mine import results

    store = fresh_copy(fitted_store, tmp_path, monkeypatch)
    text_calls = count_text_tower(monkeypatch)
    viewer, inspector = open_preloaded(make_napari_viewer, store, qtbot)
    assert text_calls and "MainThread" not in text_calls  # embedded by the preload, in the background
    assert len(list((store / results.CONCEPTS_DIR).glob("*.npz"))) == 1  # and stored in the folder
    monkeypatch.setattr(results, "shared_backbone", lambda *a, **k: pytest.fail("the click loaded the model"))
    text_calls.clear()
    _, ijk = good_voxel(store)
    with qtbot.waitSignal(inspector.updated, timeout=TIMEOUT_MS) as blocker:
        click(viewer, inspector, world_position(viewer, ijk))
    assert blocker.args == ["report"] and not text_calls
    assert inspector.description.text() not in ("", "–") and len(inspector.profile_chart.labels) == 10


def test_text_embeddings_stored_in_the_folder_are_reused_on_the_next_open(make_napari_viewer, fitted_store,
                                                                          tmp_path, monkeypatch, qtbot):
    from napari_mine import results
    from napari_mine.results import Results

    store = fresh_copy(fitted_store, tmp_path, monkeypatch)
    Results.open(store).concept_space()  # the first session embeds the vocabulary and stores it in the folder
    monkeypatch.setenv("NAPARI_MINE_CACHE", str(tmp_path / "another-user-cache"))
    text_calls = count_text_tower(monkeypatch)
    monkeypatch.setattr(results, "shared_backbone", lambda *a, **k: pytest.fail("the model was loaded again"))
    viewer, inspector = open_preloaded(make_napari_viewer, store, qtbot)
    _, ijk = good_voxel(store)
    with qtbot.waitSignal(inspector.updated, timeout=TIMEOUT_MS) as blocker:
        click(viewer, inspector, world_position(viewer, ijk))
    assert blocker.args == ["report"] and not text_calls
    assert inspector.description.text() not in ("", "–")


def test_answers_on_the_qt_thread_use_one_blas_thread_and_give_the_others_back():
    from threadpoolctl import threadpool_info

    from napari_mine._widgets._common import Failure, run_here

    def blas_threads():
        return {library["num_threads"] for library in threadpool_info() if library["user_api"] == "blas"}

    before = blas_threads()
    assert run_here(blas_threads) == {1}  # no BLAS helper threads left busy-waiting beside the redraw
    assert blas_threads() == before
    assert isinstance(run_here(lambda: 1 / 0), Failure) and blas_threads() == before


def test_clicks_and_slider_moves_update_the_same_layers_in_place_without_a_worker(make_napari_viewer, fitted_store,
                                                                                tmp_path, monkeypatch, qtbot):
    store = fresh_copy(fitted_store, tmp_path, monkeypatch)
    viewer, inspector = open_preloaded(make_napari_viewer, store, qtbot)
    voxel, ijk = good_voxel(store)
    layers = list(viewer.layers)  # the preload made the (empty) marker and overlay the first click fills
    overlay, marker = layer_of(viewer, "attribution"), layer_of(viewer, "voxel")
    assert len(marker.data) == 0 and not overlay.data.any() and not marked_voxels(viewer)
    low, high = overlay.contrast_limits
    assert overlay.colormap.map(np.array([-low / (high - low)]))[0, 3] == 0  # transparent: the stimulus shows as is
    with qtbot.waitSignal(inspector.updated, timeout=TIMEOUT_MS):  # reads its top images' tokens (no saved profiles)
        click(viewer, inspector, world_position(viewer, ijk))
    assert marked_voxels(viewer) == [marker] and list(viewer.layers) == layers
    overlay_data, marker_data = overlay.data, marker.data
    answers = []
    inspector.updated.connect(answers.append)
    for row in (5, 6, 40):  # the tokens are in memory: each move is answered before the call returns
        viewer.dims.set_current_step(0, row)
        assert answers.pop() == "overlay" and overlay.metadata[META]["image"] == row
    click(viewer, inspector, world_position(viewer, ijk))  # its thumbnails are drawn: answered at once too
    assert answers == ["report"]
    other = next(t for t in inspector.top_rows if t != 40)
    inspector.thumbnails[inspector.top_rows.index(other)].click()
    assert answers[-1] == "overlay" and overlay.metadata[META]["image"] == other
    np.testing.assert_array_equal(overlay.data[0][overlay.data[0] != 0],
                                  overlay.metadata[META]["raw"][overlay.data[0] != 0])
    assert list(viewer.layers) == layers and overlay.data is overlay_data and marker.data is marker_data
    assert marker.metadata[META]["voxel"] == voxel


# ---- ROI explorer -------------------------------------------------------------------------------------
def test_roi_explorer_profiles_and_clusters_the_selected_voxels_roi(viewer_with_store, fitted_store, qtbot):
    viewer = viewer_with_store
    inspector = dock(viewer, "Voxel inspector")
    explorer = dock(viewer, "ROI explorer")
    qtbot.waitUntil(lambda: explorer.roi.count() > 0, timeout=TIMEOUT_MS)
    _, ijk = good_voxel(fitted_store)
    with qtbot.waitSignal(inspector.updated, timeout=TIMEOUT_MS):
        click(viewer, inspector, world_position(viewer, ijk))
    assert explorer.use_selected_voxel()
    assert explorer.roi.currentText() == "floc-faces"
    region = explorer.label.currentText()
    with qtbot.waitSignal(explorer.updated, timeout=TIMEOUT_MS) as blocker:
        explorer.run()
    assert blocker.args == ["report"]
    assert len(explorer.chart.labels) == 10
    clusters = layer_of(viewer, "clusters")
    assert clusters.name == f"clusters in {region}"
    roi = next(layer for layer in viewer.layers if layer.metadata.get(META, {}).get("roi") == "floc-faces")
    inside = roi.data == explorer.label.currentData()
    assert clusters.data[~inside].max() == 0 and clusters.data[inside].min() >= 1
    np.testing.assert_array_equal(clusters.scale, roi.scale)


# ---- Data and model, Fit -------------------------------------------------------------------------------
def open_nsd_folder(viewer, world, results, qtbot):
    """Open ``world`` into ``results`` through Data and model; returns the dock and what ``opened`` said."""
    widget = dock(viewer, "Data and model")
    widget.source.setCurrentText("NSD folder")
    widget.folder.setText(str(world))
    widget.results.setText(str(results))
    with qtbot.waitSignal(widget.opened, timeout=TIMEOUT_MS) as blocker:
        widget.open()
    return widget, blocker.args


def open_world(viewer, world, results, qtbot):
    widget, opened = open_nsd_folder(viewer, world, results, qtbot)
    assert opened == [str(results.resolve())]
    return widget


def test_opening_an_nsd_folder_shows_brain_rois_and_stimuli(make_napari_viewer, tiny_world, tmp_path, qtbot):
    viewer = make_napari_viewer()
    open_world(viewer, tiny_world, tmp_path / "results", qtbot)
    roles = [layer.metadata[META]["role"] for layer in viewer.layers]
    assert {"anatomy", "mask", "roi", "stimuli"} <= set(roles) and "accuracy" not in roles
    assert layer_of(viewer, "stimuli").data.shape[0] == N_IMAGES


def test_fit_runs_to_completion_and_shows_the_accuracy_map(make_napari_viewer, tiny_world, tmp_path, qtbot):
    from napari_mine.store import ResultsStore

    viewer = make_napari_viewer()
    open_world(viewer, tiny_world, tmp_path / "results", qtbot)
    fit = dock(viewer, "Fit")
    seen = []
    with qtbot.waitSignal(fit.job_finished, timeout=TIMEOUT_MS) as blocker:
        job = fit.run()
        job.worker.yielded.connect(seen.append)
    assert blocker.args == ["done"]
    reports = [report for report in seen if report is not None]  # None: the worker's heartbeats
    assert any(stage.startswith("Decomposing") and total == N_IMAGES for stage, _, total in reports)
    store = ResultsStore.open(tmp_path / "results")
    assert store.has("features") and store.has("encoder")
    accuracy = layer_of(viewer, "accuracy")
    mask = store.results().space.mask
    np.testing.assert_array_equal(accuracy.data[mask], store.results().accuracy["normalized_r"])
    assert np.isnan(accuracy.data[~mask]).all()
    assert not [layer for layer in viewer.layers if layer.metadata[META].get("role") == "mask"]
    assert "median r / noise ceiling" in fit.stage.text()


def test_fit_cancelled_during_features_leaves_the_store_unchanged(make_napari_viewer, tiny_world, tmp_path, qtbot):
    from napari_mine.store import ResultsStore

    viewer = make_napari_viewer()
    open_world(viewer, tiny_world, tmp_path / "results", qtbot)
    fit = dock(viewer, "Fit")
    said, aside = [], []

    def cancel_once(report):
        if report and report[0].startswith("Decomposing") and not said:
            fit.cancel()
            said.append(fit.stage.text())

    def on_finished(outcome):  # "Cancelled" is said only once the step has stopped writing
        aside.extend(p.name for p in (tmp_path / "results").iterdir() if p.name.startswith(".features"))

    fit.job_finished.connect(on_finished)
    with qtbot.waitSignal(fit.job_finished, timeout=TIMEOUT_MS) as blocker:
        job = fit.run()
        job.worker.yielded.connect(cancel_once)
    assert blocker.args == ["cancelled"]
    assert said == ["Cancelling…"] and "Cancelled" in fit.stage.text()
    assert set(aside) <= {".features.partial"}  # only the complete chunks, which the next run resumes from
    assert job.ended.is_set()
    store = ResultsStore.open(tmp_path / "results")
    assert not store.has("features") and not store.has("encoder")
    assert fit.run_button.isEnabled()


def fit_dock_on(make_napari_viewer, store):
    """A viewer showing ``store`` (opened as a user would) and its Fit dock."""
    viewer = make_napari_viewer()
    viewer.open(str(store), plugin="napari-mine")
    return viewer, dock(viewer, "Fit")


def record_activity(job) -> list[str]:
    """The descriptions the job's bar in napari's activity dock is given from now on (its stages)."""
    described, describe = [], job.progress.set_description

    def recorded(description, *args, **kwargs):
        described.append(description)
        return describe(description, *args, **kwargs)

    job.progress.set_description = recorded
    return described


def test_fit_then_profile_and_validate_from_the_dock(make_napari_viewer, fitted_store, tmp_path, monkeypatch, qtbot):
    import json

    from napari_mine._widgets import _fit
    from napari_mine.results import Manifest, open_results

    store = fresh_copy(fitted_store, tmp_path, monkeypatch)  # no stored text embeddings: the vocabulary is embedded
    monkeypatch.setattr(_fit, "PROFILE_BLOCK", 1000)  # 3 blocks of the world's 3,000 voxels
    monkeypatch.setattr(_fit, "VALIDATION_VOXELS", 8)
    fitted_before = Manifest.read(store).steps["encoder"].finished
    viewer, fit = fit_dock_on(make_napari_viewer, store)
    assert fit.validate.isEnabled() and "(synthetic vocabulary)" in fit.profile.text()
    assert fit.run_button.text() == "Fit"  # the features are there
    fit.profile.setChecked(True)
    assert fit.run_button.text() == "Profile"  # so is an encoder fitted on them: kept
    fit.validate.setChecked(True)
    assert fit.run_button.text() == "Profile and validate"
    fit.refit.setChecked(True)
    assert fit.run_button.text() == "Fit, profile and validate"
    fit.recompute.setChecked(True)
    assert fit.run_button.text() == "Compute features, fit, profile and validate"
    fit.recompute.setChecked(False)
    fit.refit.setChecked(False)
    seen = []
    with qtbot.waitSignal(fit.job_finished, timeout=TIMEOUT_MS) as blocker:
        job = fit.run()
        job.worker.yielded.connect(seen.append)
        described = record_activity(job)
    assert blocker.args == ["done"]
    reports = [report for report in seen if report is not None]
    n_voxels = len(open_results(store).accuracy["r"])
    assert any(stage == _fit.VOCABULARY and total > 0 for stage, _, total in reports)  # embedded, with progress
    assert (_fit.PROFILES, n_voxels, n_voxels) in reports and any(stage == _fit.VALIDATION and done > 0
                                                                  for stage, done, _ in reports)
    assert {_fit.VOCABULARY, _fit.PROFILES, _fit.VALIDATION} <= set(described) and _fit.ENCODER not in described
    assert Manifest.read(store).steps["encoder"].finished == fitted_before
    assert "median r / noise ceiling = " in fit.stage.text()  # the kept fit's summary
    assert (store / "profiles.zarr").is_dir()
    validation = json.loads((store / "summary.json").read_text())["validation"]
    assert validation["complete"] and validation["n_pairs"] > 0
    assert {"profiles", "clusters", "validation"} <= set(Manifest.read(store).steps)
    assert "Computed: features, encoder, profiles, validation." in fit.target.text()
    removal = validation["removal_sign_accuracy"]["predicted"]["value"]
    assert f"profiles of {n_voxels} voxels" in fit.stage.text()
    assert f"validation: sign accuracy of removal {removal:.2f}" in fit.stage.text()
    assert layer_of(viewer, "accuracy").metadata[META]["store"] == str(store)


def test_fit_cancelled_while_profiling_keeps_the_fit_and_the_complete_blocks(make_napari_viewer, fitted_store,
                                                                             tmp_path, monkeypatch, qtbot):
    from napari_mine._widgets import _fit
    from napari_mine.results import Manifest

    store = fresh_copy(fitted_store, tmp_path, monkeypatch)
    fitted_before = Manifest.read(store).steps["encoder"].finished
    monkeypatch.setattr(_fit, "PROFILE_BLOCK", 500)
    viewer, fit = fit_dock_on(make_napari_viewer, store)
    fit.profile.setChecked(True)
    fit.refit.setChecked(True)
    said = []

    def cancel_after_a_block(report):
        if report and report[0] == _fit.PROFILES and report[1] > 0 and not said:
            fit.cancel()
            said.append(fit.stage.text())

    with qtbot.waitSignal(fit.job_finished, timeout=TIMEOUT_MS) as blocker:
        job = fit.run()
        job.worker.yielded.connect(cancel_after_a_block)
    assert blocker.args == ["cancelled"] and said == ["Cancelling…"]
    assert fit.stage.text() == fit.CANCELLED and job.ended.is_set()
    steps = Manifest.read(store).steps
    assert "profiles" not in steps and steps["encoder"].finished != fitted_before  # this job's fit is kept
    assert (store / ".profiles.partial").is_dir()  # its complete blocks, which the next run resumes from
    assert fit.run_button.isEnabled() and fit.run_button.text() == "Fit and profile"


def test_fit_dock_validates_only_results_of_the_synthetic_world(make_napari_viewer, fitted_store, tmp_path,
                                                                monkeypatch):
    import json

    from napari_mine._reader import read_store
    from napari_mine._widgets import FitWidget
    from napari_mine._widgets._fit import NO_WORLD

    store = fresh_copy(fitted_store, tmp_path, monkeypatch)
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["dataset"]["root"] = str(tmp_path / "elsewhere")  # a real dataset: no ground truth beside it
    (store / "manifest.json").write_text(json.dumps(manifest))
    viewer = make_napari_viewer()
    for data, kwargs, kind in read_store(store, stimuli=False):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    widget = FitWidget(viewer)
    assert not widget.validate.isEnabled() and widget.validate.toolTip() == NO_WORLD
    assert "(general vocabulary)" in widget.profile.text()
    started = []
    monkeypatch.setattr(widget, "run_staged", lambda description, job, *args: started.append(args))
    widget.validate.setChecked(True)
    widget.profile.setChecked(True)
    widget.run()
    assert started == [(str(store), None, False, "float32", True, None, False, False)]


def test_opening_a_missing_folder_reports_an_error(make_napari_viewer, tmp_path, qtbot):
    from napari.utils.notifications import notification_manager

    viewer = make_napari_viewer()
    widget = dock(viewer, "Data and model")
    widget.folder.setText(str(tmp_path / "nothing-here"))
    with qtbot.waitSignal(widget.opened, timeout=TIMEOUT_MS) as blocker:
        widget.open()
    assert blocker.args == [""]
    assert "not a napari-mine results folder" in str(notification_manager.records[-1].message)
    assert len(viewer.layers) == 0


def test_an_older_results_format_is_named_and_the_viewer_keeps_working(make_napari_viewer, fitted_store, tmp_path,
                                                                        qtbot):
    import json
    import shutil

    from napari.utils.notifications import notification_manager

    old = tmp_path / "old-results"
    shutil.copytree(fitted_store, old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["version"] = 0
    (old / "manifest.json").write_text(json.dumps(manifest))
    viewer = make_napari_viewer()
    widget = dock(viewer, "Data and model")
    for folder, outcome in ((old, ""), (fitted_store, str(fitted_store))):
        widget.folder.setText(str(folder))
        with qtbot.waitSignal(widget.opened, timeout=TIMEOUT_MS) as blocker:
            widget.open()
        assert blocker.args == [outcome]
        if not outcome:
            assert "results format 0" in str(notification_manager.records[-1].message)
            assert len(viewer.layers) == 0
    assert layer_of(viewer, "accuracy") is not None


def test_a_results_folder_of_another_model_is_refused(make_napari_viewer, tiny_world, fitted_store, tmp_path, qtbot):
    import json
    import shutil

    from napari.utils.notifications import notification_manager

    other = tmp_path / "other-model"
    shutil.copytree(fitted_store, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["model"]["id"] = "ViT-B-16:laion2b_s34b_b88k:sha256:0"
    (other / "manifest.json").write_text(json.dumps(manifest))
    before = (other / "manifest.json").read_text()
    viewer = make_napari_viewer()
    _, opened = open_nsd_folder(viewer, tiny_world, other, qtbot)
    assert opened == [""]
    assert "already holds results of model 'ViT-B-16" in str(notification_manager.records[-1].message)
    assert (other / "manifest.json").read_text() == before and len(viewer.layers) == 0


# ---- counterfactual editor ------------------------------------------------------------------------------
def select_voxel_and_top_image(viewer, fitted_store, qtbot):
    """Click a well-predicted face voxel and move the stimulus slider to its best image (the editor's target)."""
    inspector = dock(viewer, "Voxel inspector")
    voxel, ijk = good_voxel(fitted_store)
    with qtbot.waitSignal(inspector.updated, timeout=TIMEOUT_MS):
        click(viewer, inspector, world_position(viewer, ijk))
    row = inspector.top_rows[0]
    viewer.dims.set_current_step(0, row)
    return voxel, row


def open_editor(viewer, qtbot):
    editor = dock(viewer, "Counterfactual editor")
    qtbot.waitUntil(lambda: editor.concept.count() > 0, timeout=TIMEOUT_MS)
    return editor


def editor_workbench(fitted_store, world):
    """The workbench the editor builds for the synthetic world (procedural generator and true brain)."""
    from napari_mine.results import shared_backbone
    from napari_mine.generate import ProceduralGenerator
    from napari_mine.store import ResultsStore
    from napari_mine.synthetic.truth import load_truth
    from napari_mine.validate import open_workbench

    return open_workbench(ResultsStore.open(fitted_store).results(), ProceduralGenerator.from_world(world),
                      load_truth(world), backbone=shared_backbone("mine-small", None, None))


def test_editor_removes_the_driving_feature_then_a_cancelled_edit_adds_nothing(viewer_with_store, fitted_store,
                                                                               tiny_world, qtbot):
    from napari_mine._widgets._editor import PROCEDURAL
    from napari_mine.results import open_results
    from napari_mine.counterfactual import edit_for_voxel

    viewer = viewer_with_store
    voxel, row = select_voxel_and_top_image(viewer, fitted_store, qtbot)
    editor = open_editor(viewer, qtbot)
    assert editor.target.text().startswith(f"Voxel {voxel} of ") and f"image #{row} " in editor.target.text()
    assert editor.generator.currentText() == PROCEDURAL and editor.action.currentData() == "remove"
    with qtbot.waitSignal(editor.job_finished, timeout=TIMEOUT_MS) as blocker:
        editor.run()
    assert blocker.args == ["done"]
    bench = editor_workbench(fitted_store, tiny_world)
    expected = edit_for_voxel(bench, voxel, row, "remove")
    assert f"Δ = {expected.delta:+.3f}" in editor.delta.text() and expected.delta < 0
    assert f"True simulated brain: Δ = {expected.true_delta:+.3f}" in editor.delta.text()
    edited, stimuli = layer_of(viewer, "edit"), layer_of(viewer, "stimuli")
    assert edited.rgb and edited.data.shape == (1, *stimuli.data.shape[2:])
    np.testing.assert_array_equal(edited.data[0], expected.edited)
    assert edited.translate[-1] > stimuli.translate[-1] + stimuli.scale[-1] * stimuli.data.shape[3] / 2
    delta_map, mask = layer_of(viewer, "delta"), open_results(fitted_store).space.mask
    assert delta_map.data.shape == layer_of(viewer, "accuracy").data.shape == mask.shape
    np.testing.assert_allclose(delta_map.data[mask], expected.brain_delta, atol=1e-5)
    assert np.isnan(delta_map.data[~mask]).all()
    low, high = delta_map.contrast_limits
    assert low == -high and high == pytest.approx(np.abs(expected.brain_delta).max(), rel=1e-5)

    n_layers, shown = len(viewer.layers), edited.data.copy()
    editor.action.setCurrentIndex(editor.action.findData("regenerate"))
    with qtbot.waitSignal(editor.job_finished, timeout=TIMEOUT_MS) as blocker:
        editor.run()
        editor.cancel()
    assert blocker.args == ["cancelled"]
    assert "Cancelled" in editor.stage.text() and editor.run_button.isEnabled()
    assert len(viewer.layers) == n_layers and np.array_equal(edited.data, shown)
    assert f"Δ = {expected.delta:+.3f}" in editor.delta.text()
    with qtbot.waitSignal(editor.job_finished, timeout=TIMEOUT_MS) as blocker:
        editor.run()
    assert blocker.args == ["done"] and len(viewer.layers) == n_layers
    regenerated = edit_for_voxel(bench, voxel, row, "regenerate")
    assert f"regenerated from “{regenerated.text}”" in editor.delta.text()
    np.testing.assert_array_equal(edited.data[0], regenerated.edited)


def test_editor_inserts_a_concept_picked_from_the_voxels_profile(viewer_with_store, fitted_store, tiny_world,
                                                                  qtbot):
    from napari_mine.results import open_results
    from napari_mine.counterfactual import edit_for_voxel, profile_concepts

    viewer = viewer_with_store
    voxel, row = select_voxel_and_top_image(viewer, fitted_store, qtbot)
    editor = open_editor(viewer, qtbot)
    view = open_results(fitted_store)
    space = view.concept_space()
    suggested = profile_concepts(view.profiles(space, [voxel]).scores[0], space.vocabulary)
    assert [editor.concept.itemText(i) for i in range(editor.concept.count())] == suggested
    editor.action.setCurrentIndex(editor.action.findData("insert"))
    assert editor.concept.isEnabled() and editor.region.value() == 15
    editor.concept.setCurrentIndex(1)  # the profile's best category on its own
    with qtbot.waitSignal(editor.job_finished, timeout=TIMEOUT_MS) as blocker:
        editor.run()
    assert blocker.args == ["done"]
    expected = edit_for_voxel(editor_workbench(fitted_store, tiny_world), voxel, row, "insert", concept=suggested[1])
    assert f"Δ = {expected.delta:+.3f}" in editor.delta.text()
    assert f"inserted “{suggested[1]}”" in editor.delta.text()
    edited = layer_of(viewer, "edit")
    assert edited.metadata[META]["action"] == "insert" and edited.metadata[META]["text"] == suggested[1]
    np.testing.assert_array_equal(edited.data[0], expected.edited)


def test_a_failing_generator_is_reported_and_the_editor_keeps_working_with_diffusers(viewer_with_store, fitted_store,
                                                                                      tmp_path, qtbot):
    """A folder without a pipeline fails with a notification; a tiny random diffusers pipeline then edits pixels."""
    from napari.utils.notifications import notification_manager

    from napari_mine._widgets._editor import DIFFUSERS
    from napari_mine.results import open_results, shared_backbone
    from napari_mine.counterfactual import edit_for_voxel
    from napari_mine.generate import DiffusionGenerator, random_pipeline
    from napari_mine.validate import open_workbench

    viewer = viewer_with_store
    voxel, row = select_voxel_and_top_image(viewer, fitted_store, qtbot)
    editor = open_editor(viewer, qtbot)
    editor.generator.setCurrentText(DIFFUSERS)
    editor.model.setText(str(tmp_path))  # a folder without a diffusers pipeline
    n_layers = len(viewer.layers)
    with qtbot.waitSignal(editor.job_finished, timeout=TIMEOUT_MS) as blocker:
        editor.run()
    assert blocker.args == ["failed"]
    assert any("holds no diffusers pipeline" in str(record.message) for record in notification_manager.records)
    assert len(viewer.layers) == n_layers and "Failed" in editor.stage.text()

    random_pipeline("tiny", seed=0).save_pretrained(tmp_path / "sd")
    editor.model.setText(str(tmp_path / "sd"))
    editor.steps.setValue(2)
    with qtbot.waitSignal(editor.job_finished, timeout=TIMEOUT_MS) as blocker:
        editor.run()
    assert blocker.args == ["done"]
    view = open_results(fitted_store)
    bench = open_workbench(view, DiffusionGenerator.load(tmp_path / "sd", steps=2), images=view.images,
                       backbone=shared_backbone("mine-small", None, None))
    expected = edit_for_voxel(bench, voxel, row, "remove")
    shown = float(re.search(r"Δ = ([+-][0-9.]+)", editor.delta.text()).group(1))
    assert shown == pytest.approx(expected.delta, abs=2e-3)
    edited, stimuli = layer_of(viewer, "edit"), layer_of(viewer, "stimuli")
    assert edited.data.shape == (1, 16, 16, 3)  # the tiny model's size, drawn as tall as the stimulus
    assert edited.scale[-1] * 16 == pytest.approx(stimuli.scale[-1] * stimuli.data.shape[3])
