"""Surface results in napari: both hemispheres as layers, a click on a vertex (flat map in 2-D, a ray in 3-D)
through our own picking into the inspector, the ROI explorer's clusters and the editor's Δ as vertex values.

The surface results folder is built once per session through the real pipeline: a small synthetic world's
per-image mean responses, voxel by voxel, put on occipital fsaverage5 vertices of both hemispheres with their ROI
labels (the tuning and the ROIs stay known), then features, encoder fit and the layers read from the folder.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from napari_mine._reader import META
from napari_mine.models.backbone import import_torch

import_torch()  # torch before any napari canvas (see test_widgets)

pytestmark = pytest.mark.gui
N_IMAGES = 120
TIMEOUT_MS = 120_000
LAYOUT_MESH, N_PER_HEMI = "fsaverage5", 10242


def occipital_sites(n_sites: int) -> np.ndarray:
    """``n_sites`` sites over both hemispheres (half each): the flat map's most posterior vertices."""
    from napari_mine.surfaces import fsaverage_mesh

    sites = []
    for offset, hemi in ((0, "lh"), (N_PER_HEMI, "rh")):
        drawn = np.unique(fsaverage_mesh(hemi, "flat").faces)
        posterior = drawn[np.argsort(fsaverage_mesh(hemi, "white").vertices[drawn, 1], kind="stable")]
        sites.append(offset + posterior[: (n_sites + (hemi == "lh")) // 2])
    return np.sort(np.concatenate(sites))


def surface_dataset(volume):
    """The volume dataset's per-image means on fsaverage5 vertices: voxel j of the mask becomes target j."""
    from napari_mine.data import Dataset, RoiVolume
    from napari_mine.spaces import SurfaceLayout
    from napari_mine.surfaces import sulcal_depth

    image_ids, means, repeats = volume.image_responses()
    sites = occipital_sites(volume.n_voxels)
    mask = np.zeros(2 * N_PER_HEMI, bool)
    mask[sites] = True

    def on_sites(values, fill=0):
        out = np.full(mask.shape, fill, dtype=np.asarray(values).dtype)
        out[sites] = values
        return out

    rois = {name: RoiVolume(name, on_sites(np.asarray(roi.volume)[volume.mask]), roi.labels)
            for name, roi in volume.rois.items()}
    return Dataset(
        name="synthetic world on fsaverage5", images=volume.images, responses=means, trial_images=image_ids,
        mask=mask, affine=np.eye(4), rois=rois, ncsnr=volume.ncsnr,
        test_images=volume.test_images, anatomy=np.concatenate([sulcal_depth("lh"), sulcal_depth("rh")]),
        source=volume.source, surface=SurfaceLayout(LAYOUT_MESH, {"lh": N_PER_HEMI, "rh": N_PER_HEMI}),
        n_repeats=repeats)


@pytest.fixture(scope="session")
def surface_store(tmp_path_factory):
    """A fitted surface results folder (read-only for the tests)."""
    from napari_mine.data import load_nsd
    from napari_mine.pipeline import compute_features, fit_encoder_step
    from napari_mine.results import shared_backbone
    from napari_mine.store import ResultsStore
    from napari_mine.synthetic.write_nsd import write_world

    root = tmp_path_factory.mktemp("surface")
    write_world(root / "world", seed=3, n_images=N_IMAGES, n_shared=30, repeats=3, trials_per_session=90)
    dataset = surface_dataset(load_nsd(root / "world", subject=1))
    backbone = shared_backbone("mine-small", None, None)
    store = ResultsStore.create(root / "results", model=backbone.record, dataset=dataset.source)
    compute_features(dataset, backbone, store)
    fit_encoder_step(dataset, store)
    return store.root.resolve()


@pytest.fixture
def viewer_with_surface(make_napari_viewer, surface_store):
    viewer = make_napari_viewer()
    viewer.open(str(surface_store), plugin="napari-mine")
    return viewer


def dock(viewer, name):
    _, widget = viewer.window.add_plugin_dock_widget("napari-mine", name)
    return widget


def layers_of(viewer, role):
    return [layer for layer in viewer.layers if layer.metadata.get(META, {}).get("role") == role]


def of_hemi(layers, hemi):
    return next(layer for layer in layers if layer.metadata[META]["hemi"] == hemi)


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


def good_vertex(store, hemi="rh"):
    """A well-predicted target in a face ROI on one hemisphere: (target, vertex in the hemisphere)."""
    from napari_mine.results import open_results

    space = open_results(store).space
    on_hemi = np.array([space.hemisphere_of(t)[0] == hemi for t in range(space.n_targets)])
    faces = (space.roi_values("floc-faces") > 0) & on_hemi
    target = int(np.nanargmax(np.where(faces, open_results(store).accuracy["r"], -np.inf)))
    return target, space.hemisphere_of(target)[1]


def world_of_vertex(viewer, layer, vertex):
    """The world position of a vertex as a click reports it (the current stimulus on the image axis)."""
    position = np.array(viewer.dims.point, dtype=float)
    position[-3:] = layer.data_to_world(layer.vertices[vertex])
    return position


# ---- layers ----------------------------------------------------------------------------------------
def test_a_surface_store_opens_as_layers_per_hemisphere(viewer_with_surface, surface_store):
    from napari.layers import Surface

    from napari_mine.results import open_results

    viewer = viewer_with_surface
    results = open_results(surface_store)
    space = results.space
    for role in ("anatomy", "accuracy", "roi"):
        assert {layer.metadata[META]["hemi"] for layer in layers_of(viewer, role)} == {"lh", "rh"}
        assert all(isinstance(layer, Surface) for layer in layers_of(viewer, role))
    accuracy = space.per_hemisphere(space.unmask(results.accuracy["normalized_r"]))
    for hemi in ("lh", "rh"):
        layer = of_hemi(layers_of(viewer, "accuracy"), hemi)
        inside = space.per_hemisphere(space.mask)[hemi]
        np.testing.assert_allclose(layer.vertex_values[inside], np.nan_to_num(accuracy[hemi][inside]), atol=1e-6)
        assert inside[layer.faces].all()  # only faces on the mask: the sulcal depth shows elsewhere
        assert len(of_hemi(layers_of(viewer, "anatomy"), hemi).faces) > len(layer.faces)
        assert layer.colormap.name == "inferno"
    left, right = (of_hemi(layers_of(viewer, "anatomy"), hemi).vertices for hemi in ("lh", "rh"))
    assert left[:, 2].max() < right[:, 2].min()  # the flat maps side by side
    stimuli = layers_of(viewer, "stimuli")[0]
    assert stimuli.data.shape[:2] == (N_IMAGES, 1)
    assert stimuli.translate[-1] - stimuli.scale[-1] / 2 > right[:, 2].max()  # beside the cortex


# ---- voxel inspector on vertices -----------------------------------------------------------------------
def test_click_on_the_flat_map_fills_the_inspector_with_that_vertex(viewer_with_surface, surface_store, qtbot):
    viewer = viewer_with_surface
    inspector = dock(viewer, "Voxel inspector")
    target, vertex = good_vertex(surface_store, "rh")
    assert viewer.dims.ndisplay == 2
    layer = of_hemi(layers_of(viewer, "accuracy"), "rh")
    with qtbot.waitSignal(inspector.updated, timeout=TIMEOUT_MS) as blocker:
        click(viewer, inspector, world_of_vertex(viewer, layer, vertex) + [0, 0, 0.2, -0.1])
    assert blocker.args == ["report"]
    assert inspector.fields["ijk"].text() == f"rh vertex {vertex}"
    assert "FFA" in inspector.fields["roi"].text() or "OFA" in inspector.fields["roi"].text() \
        or "faces" in inspector.fields["roi"].text()
    assert float(inspector.fields["r"].text()) > 0 and len(inspector.top_rows) == 8
    marker = layers_of(viewer, "voxel")[0]
    assert marker.metadata[META]["voxel"] == target and marker.metadata[META]["ijk"] == [1, vertex]
    np.testing.assert_allclose(marker.data[0], layer.vertices[vertex])
    assert layers_of(viewer, "attribution")[0].metadata[META]["voxel"] == target


def test_a_click_beside_the_map_or_off_the_mask_only_informs(viewer_with_surface, surface_store, qtbot):
    from napari.utils.notifications import notification_manager

    viewer = viewer_with_surface
    inspector = dock(viewer, "Voxel inspector")
    anatomy = of_hemi(layers_of(viewer, "anatomy"), "lh")
    far = world_of_vertex(viewer, anatomy, 0)
    far[-2] = anatomy.vertices[:, 1].max() + 50  # below the flat maps
    n_layers = len(viewer.layers)
    for position in (far, world_of_vertex(viewer, anatomy, int(anatomy.faces[0, 0]))):
        with qtbot.waitSignal(inspector.updated, timeout=TIMEOUT_MS) as blocker:
            click(viewer, inspector, position)
        assert blocker.args == ["outside"]
        assert "outside the brain mask" in str(notification_manager.records[-1].message)
    assert len(viewer.layers) == n_layers and inspector.fields["ijk"].text() == "–"


def test_click_on_the_inflated_cortex_picks_the_first_vertex_along_the_ray(viewer_with_surface, surface_store,
                                                                            qtbot):
    from napari.utils.geometry import find_nearest_triangle_intersection

    from napari_mine._widgets._surface import SurfaceViewChoice
    from napari_mine.results import open_results

    viewer = viewer_with_surface
    inspector = dock(viewer, "Voxel inspector")
    choice = inspector.findChild(SurfaceViewChoice)
    assert choice.isVisibleTo(inspector) and choice.view.currentText() == "flat"
    choice.view.setCurrentText("inflated")
    assert viewer.dims.ndisplay == 3
    _, vertex = good_vertex(surface_store, "lh")
    layer = of_hemi(layers_of(viewer, "anatomy"), "lh")
    assert layer.metadata[META]["view"] == "inflated" and len(layer.faces) == 20480
    centre = layer.vertices.mean(axis=0)
    towards = (centre - layer.vertices[vertex]) / np.linalg.norm(centre - layer.vertices[vertex])
    start = layer.vertices[vertex] - 300 * towards  # seen from outside the hemisphere, through the vertex
    position = np.array(viewer.dims.point, dtype=float)
    position[-3:] = layer.data_to_world(start)
    direction = np.zeros(viewer.dims.ndim)
    direction[-3:] = towards
    hits = {}
    for hemi in ("lh", "rh"):  # napari's own ray cast over every face is the reference
        mesh = of_hemi(layers_of(viewer, "anatomy"), hemi)
        index, point = find_nearest_triangle_intersection(start, towards, mesh.vertices[mesh.faces])
        if index is not None:
            corners = mesh.faces[index]
            hits[hemi] = (float(np.dot(point - start, towards)),
                          int(corners[np.argmin(np.linalg.norm(mesh.vertices[corners] - point, axis=1))]))
    hemi, (_, expected) = min(hits.items(), key=lambda item: item[1][0])
    space = open_results(surface_store).space
    with qtbot.waitSignal(inspector.updated, timeout=TIMEOUT_MS) as blocker:
        click(viewer, inspector, position, view_direction=direction)
    if space.target_at_vertex(hemi, expected) is None:
        assert blocker.args == ["outside"]
    else:
        assert blocker.args == ["report"] and inspector.fields["ijk"].text() == f"{hemi} vertex {expected}"
        marker = layers_of(viewer, "voxel")[0]
        np.testing.assert_allclose(marker.data[0], of_hemi(layers_of(viewer, "anatomy"), hemi).vertices[expected])
    choice.view.setCurrentText("flat")  # back to the flat map: the marker follows its vertex
    assert viewer.dims.ndisplay == 2 and layer.metadata[META]["view"] == "flat"


def test_hovering_a_surface_uses_our_picking(viewer_with_surface, surface_store):
    viewer = viewer_with_surface
    dock(viewer, "Voxel inspector")
    target, vertex = good_vertex(surface_store, "rh")
    layer = of_hemi(layers_of(viewer, "accuracy"), "rh")
    position = world_of_vertex(viewer, layer, vertex)
    value = layer.get_value(position, view_direction=np.r_[0, 1.0, 0, 0], dims_displayed=[2, 3], world=True)
    assert value == (pytest.approx(float(layer.vertex_values[vertex])), f"rh vertex {vertex}")
    assert f"rh vertex {vertex}" in layer.get_status(position, view_direction=np.r_[0, 1.0, 0, 0],
                                                       dims_displayed=[2, 3], world=True)["value"]


# ---- ROI explorer and editor on vertices ---------------------------------------------------------------
def select_vertex(viewer, surface_store, qtbot, hemi="rh"):
    """Click a well-predicted face vertex on the flat map; returns (inspector, target)."""
    inspector = dock(viewer, "Voxel inspector")
    target, vertex = good_vertex(surface_store, hemi)
    with qtbot.waitSignal(inspector.updated, timeout=TIMEOUT_MS):
        click(viewer, inspector, world_of_vertex(viewer, of_hemi(layers_of(viewer, "accuracy"), hemi), vertex))
    return inspector, target


def test_roi_explorer_draws_the_clusters_as_vertex_values(viewer_with_surface, surface_store, qtbot):
    from napari_mine.results import open_results

    viewer = viewer_with_surface
    explorer = dock(viewer, "ROI explorer")
    qtbot.waitUntil(lambda: explorer.roi.count() > 0, timeout=TIMEOUT_MS)
    select_vertex(viewer, surface_store, qtbot)
    assert explorer.use_selected_voxel() and explorer.roi.currentText() == "floc-faces"
    with qtbot.waitSignal(explorer.updated, timeout=TIMEOUT_MS) as blocker:
        explorer.run()
    assert blocker.args == ["report"]
    space = open_results(surface_store).space
    region = space.per_hemisphere(space.unmask(space.roi_values("floc-faces") == explorer.label.currentData(),
                                               False))
    clusters = layers_of(viewer, "clusters")
    assert clusters and all(layer.name == f"{layer.metadata[META]['hemi']} clusters in "
                                          f"{explorer.label.currentText()}" for layer in clusters)
    for layer in clusters:
        inside = region[layer.metadata[META]["hemi"]]
        assert layer.vertex_values[inside].min() >= 1 and layer.vertex_values[~inside].max() == 0
        assert inside[layer.faces].all()


def test_editor_draws_every_vertexs_delta_on_both_hemispheres(viewer_with_surface, surface_store, tmp_path, qtbot):
    from napari_mine._widgets._editor import DIFFUSERS
    from napari_mine.counterfactual import edit_for_voxel
    from napari_mine.generate import DiffusionGenerator, random_pipeline
    from napari_mine.results import open_results, shared_backbone
    from napari_mine.validate import open_workbench

    viewer = viewer_with_surface
    _, target = select_vertex(viewer, surface_store, qtbot)
    editor = dock(viewer, "Counterfactual editor")
    qtbot.waitUntil(lambda: editor.concept.count() > 0, timeout=TIMEOUT_MS)
    random_pipeline("tiny", seed=0).save_pretrained(tmp_path / "sd")
    editor.generator.setCurrentText(DIFFUSERS)
    editor.model.setText(str(tmp_path / "sd"))
    editor.steps.setValue(2)
    with qtbot.waitSignal(editor.job_finished, timeout=TIMEOUT_MS) as blocker:
        editor.run()
    assert blocker.args == ["done"]
    view = open_results(surface_store)
    bench = open_workbench(view, DiffusionGenerator.load(tmp_path / "sd", steps=2), images=view.images,
                       backbone=shared_backbone("mine-small", None, None))
    expected = view.space.per_hemisphere(view.space.unmask(edit_for_voxel(bench, target, editor._target[2],
                                                                          "remove").brain_delta))
    deltas = layers_of(viewer, "delta")
    assert {layer.metadata[META]["hemi"] for layer in deltas} == {"lh", "rh"}
    for layer in deltas:
        hemi = layer.metadata[META]["hemi"]
        inside = np.isfinite(expected[hemi])
        np.testing.assert_allclose(layer.vertex_values[inside], expected[hemi][inside], atol=2e-3)
        assert layer.metadata[META]["voxel"] == target and inside[layer.faces].all()
        low, high = layer.contrast_limits
        assert low == -high and high > 0
