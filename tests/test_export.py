"""Export of per-target maps (NIfTI volumes, MGH / GIfTI surfaces) and the napari writers, read back with nibabel.

The results folders are written through ResultsStore (brain, encoder, profiles steps and the profile step's
cluster volumes) without a model: export reads arrays only.
"""

import nibabel as nib
import numpy as np
import pytest

from napari_mine import cli
from napari_mine.data.dataset import read_label_table
from napari_mine.describe import labels_volume, save_labels_nifti
from napari_mine.errors import MineInputError
from napari_mine.export import export_maps
from napari_mine.results import Results
from napari_mine.spaces import SurfaceLayout
from napari_mine.store import ResultsStore, write_arrays

AFFINE = np.array([[-1.8, 0, 0, 70.0], [0, 1.8, 0, -100.0], [0, 0, 2.0, -60.0], [0, 0, 0, 1]])
CONCEPTS = ["face", "house", "red car"]
HEMISPHERES = {"lh": 30, "rh": 26}


def _fill(store, mask, rng, brain_settings):
    """Brain (mask, ROI), encoder accuracy and profiles steps over the targets of ``mask``."""
    n_targets = int(mask.sum())
    faces = np.where(mask, 0, -1).astype(np.int16)
    faces.flat[np.flatnonzero(mask)[: n_targets // 2]] = 2
    with store.write_step("brain", {"roi_labels": {"floc-faces": {"2": "FFA-1"}}, **brain_settings}) as group:
        arrays = {"mask": mask, "roi/floc-faces": faces}
        if "space" not in brain_settings:
            arrays["affine"] = AFFINE
        write_arrays(group, arrays)
    accuracy = {"r": rng.random(n_targets).astype(np.float32), "noise_ceiling": rng.random(n_targets) * 80,
                "normalized_r": rng.random(n_targets)}
    with store.write_step("encoder", {}) as group:
        write_arrays(group, {f"accuracy/{k}": np.asarray(v, np.float32) for k, v in accuracy.items()})
    profiled = np.arange(0, n_targets, 2)
    scores = rng.random((len(profiled), len(CONCEPTS))).astype(np.float32)
    with store.write_step("profiles", {"vocabulary": "test"}) as group:
        write_arrays(group, {"scores": scores, "voxels": profiled})
        group.attrs["concepts"] = CONCEPTS
    ffa = np.arange(n_targets // 2)
    clusters = labels_volume(1 + ffa % 2, mask, ffa)
    save_labels_nifti(clusters, AFFINE if mask.ndim == 3 else np.eye(4), store.root / "clusters" / "FFA-1.nii.gz")
    top = np.zeros(n_targets, np.int32)
    top[profiled] = scores.argmax(1) + 1
    cluster_of = np.zeros(n_targets, np.int32)
    cluster_of[ffa] = 1 + ffa % 2
    return accuracy, top, cluster_of


@pytest.fixture
def volume_results(tmp_path):
    rng = np.random.default_rng(0)
    mask = np.zeros((6, 7, 5), bool)
    mask[1:5, 2:6, 1:4] = True
    store = ResultsStore.create(tmp_path / "volume", model={"id": "test:0"}, dataset={})
    truth = _fill(store, mask, rng, {})
    return Results.open(store.root), mask, truth


@pytest.fixture
def surface_results(tmp_path):
    rng = np.random.default_rng(1)
    mask = rng.random(sum(HEMISPHERES.values())) > 0.3
    store = ResultsStore.create(tmp_path / "surface", model={"id": "test:0"}, dataset={})
    layout = SurfaceLayout("fsaverage5", HEMISPHERES)
    truth = _fill(store, mask, rng, {"space": layout.to_dict()})
    return Results.open(store.root), mask, truth


def test_volume_maps_round_trip_as_nifti_with_the_source_affine(volume_results, tmp_path):
    results, mask, (accuracy, top, cluster_of) = volume_results
    paths = export_maps(results, ["accuracy", "r", "top-concept", "clusters"], "nifti", tmp_path / "out")
    assert sorted(p.name for p in paths) == ["accuracy.nii.gz", "clusters.ctab", "clusters.nii.gz", "r.nii.gz",
                                             "top-concept.ctab", "top-concept.nii.gz"]
    image = nib.load(tmp_path / "out" / "accuracy.nii.gz")
    np.testing.assert_allclose(image.affine, AFFINE)
    data = np.asarray(image.dataobj)
    assert data.shape == mask.shape and np.isnan(data[~mask]).all()
    np.testing.assert_allclose(data[mask], accuracy["normalized_r"], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(nib.load(tmp_path / "out" / "r.nii.gz").dataobj)[mask], accuracy["r"])
    labels = nib.load(tmp_path / "out" / "top-concept.nii.gz")
    assert labels.get_data_dtype() == np.int32 and labels.header.get_intent()[0] == "label"
    np.testing.assert_array_equal(np.asarray(labels.dataobj)[mask], top)
    assert read_label_table(tmp_path / "out" / "top-concept.ctab") == {1: "face", 2: "house", 3: "red_car"}
    clusters = np.asarray(nib.load(tmp_path / "out" / "clusters.nii.gz").dataobj)
    np.testing.assert_array_equal(clusters[mask], cluster_of)
    assert read_label_table(tmp_path / "out" / "clusters.ctab") == {1: "FFA-1-sub1", 2: "FFA-1-sub2"}


def test_exported_labels_open_as_labels_in_the_nifti_reader(volume_results, tmp_path):
    from napari_mine._reader import read_nifti

    results, mask, (_, top, _) = volume_results
    export_maps(results, ["top-concept"], "nifti", tmp_path)
    [(data, kwargs, kind)] = read_nifti(tmp_path / "top-concept.nii.gz")
    assert kind == "labels" and kwargs["features"]["name"] == ["none", "face", "house", "red_car"]
    np.testing.assert_array_equal(data[mask], top)
    np.testing.assert_allclose(kwargs["metadata"]["affine"], AFFINE)


def test_a_values_array_is_exported_under_its_name(volume_results, tmp_path):
    results, mask, _ = volume_results
    delta = np.linspace(-1, 1, int(mask.sum()))
    np.save(tmp_path / "delta.npy", delta)
    assert cli.main(["export", str(results.root), "--map", "values", "--values", str(tmp_path / "delta.npy"),
                     "--out", str(tmp_path / "out")]) == 0
    np.testing.assert_allclose(np.asarray(nib.load(tmp_path / "out" / "delta.nii.gz").dataobj)[mask], delta,
                               rtol=1e-6)


def test_surface_maps_round_trip_as_mgh_per_hemisphere(surface_results, tmp_path):
    results, mask, (accuracy, top, _) = surface_results
    export_maps(results, ["noise-ceiling", "top-concept"], "mgh", tmp_path)
    split = np.cumsum(list(HEMISPHERES.values()))[:-1]
    expected = np.full(mask.shape, np.nan, np.float32)
    expected[mask] = accuracy["noise_ceiling"]
    expected_top = np.zeros(mask.shape, np.int32)
    expected_top[mask] = top
    for hemi, part, part_top in zip(HEMISPHERES, np.split(expected, split), np.split(expected_top, split)):
        image = nib.load(tmp_path / f"{hemi}.noise-ceiling.mgh")
        assert image.shape == (HEMISPHERES[hemi], 1, 1)
        assert image.get_data_dtype() == np.dtype(">f4")  # MGH stores big-endian float32
        np.testing.assert_allclose(np.asarray(image.dataobj).ravel(), part, rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / f"{hemi}.top-concept.mgh").dataobj).ravel(),
                                      part_top)
    assert read_label_table(tmp_path / "top-concept.ctab")[3] == "red_car"


def test_surface_maps_round_trip_as_gifti_with_a_label_table(surface_results, tmp_path):
    results, mask, (accuracy, _, cluster_of) = surface_results
    export_maps(results, ["accuracy", "clusters"], "gifti", tmp_path)
    lh = nib.load(tmp_path / "lh.accuracy.func.gii")
    assert lh.meta["AnatomicalStructurePrimary"] == "CortexLeft"
    values = np.concatenate([nib.load(tmp_path / f"{h}.accuracy.func.gii").agg_data() for h in HEMISPHERES])
    assert len(values) == mask.size and np.isnan(values[~mask]).all()
    np.testing.assert_allclose(values[mask], accuracy["normalized_r"], rtol=1e-6)
    labels = nib.load(tmp_path / "rh.clusters.label.gii")
    assert labels.labeltable.get_labels_as_dict() == {0: "none", 1: "FFA-1-sub1", 2: "FFA-1-sub2"}
    both = np.concatenate([nib.load(tmp_path / f"{h}.clusters.label.gii").agg_data() for h in HEMISPHERES])
    np.testing.assert_array_equal(both[mask], cluster_of)


@pytest.mark.parametrize("args, message", [
    (["--map", "colour"], "there is no map 'colour' to export; choose one of accuracy, r, noise-ceiling"),
    (["--format", "mgh"], "holds volume results (voxels on a grid), which mgh cannot place; export them with "
                          "--format nifti."),
    (["--map", "values"], "the 'values' map needs a per-target array"),
])
def test_bad_export_requests_get_one_sentence(volume_results, tmp_path, capsys, args, message):
    results, _, _ = volume_results
    assert cli.main(["export", str(results.root), "--out", str(tmp_path / "out"), *args]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("napari-mine export: ") and message in error[0]


def test_nifti_is_refused_for_surface_results_and_short_values_for_any(surface_results, tmp_path):
    results, _, _ = surface_results
    with pytest.raises(MineInputError, match="holds surface results .*--format mgh or --format gifti"):
        export_maps(results, ["accuracy"], "nifti", tmp_path)
    with pytest.raises(MineInputError, match=r"values of shape \(3,\) .* are not one number per target"):
        export_maps(results, ["values"], "gifti", tmp_path, values=np.zeros(3))


# ---- napari writers ---------------------------------------------------------------------------------------
@pytest.fixture
def plugins():
    """The installed plugins' manifests (napari.yaml included), as napari reads them when it starts."""
    import npe2

    npe2.PluginManager.instance().discover(include_npe1=False)


def _layer(layer_tuple):
    from napari.layers import Layer

    return Layer.create(*layer_tuple)


def test_a_results_volume_layer_saves_as_nifti_with_the_grid_affine(volume_results, tmp_path, monkeypatch, plugins):
    import napari

    from napari_mine._reader import read_store

    monkeypatch.setattr("napari.utils.notifications.show_warning", lambda message: None)
    results, mask, (accuracy, _, _) = volume_results
    layers = {kwargs["name"]: (data, kwargs, kind) for data, kwargs, kind in read_store(results.root)}
    accuracy_layer = _layer(layers["accuracy (r / noise ceiling)"])
    written = napari.save_layers(str(tmp_path / "accuracy.nii.gz"), [accuracy_layer], plugin="napari-mine")
    image = nib.load(written[0])
    np.testing.assert_allclose(image.affine, AFFINE)  # the flipped x axis survives: not just scale and translate
    np.testing.assert_allclose(np.asarray(image.dataobj)[mask], accuracy["normalized_r"], rtol=1e-6)
    roi = _layer(layers["ROI floc-faces"])
    written = napari.save_layers(str(tmp_path / "faces.nii.gz"), [roi], plugin="napari-mine")
    assert [p.rsplit("/", 1)[-1] for p in written] == ["faces.nii.gz", "faces.ctab"]
    assert read_label_table(tmp_path / "faces.ctab") == {2: "FFA-1"}
    np.testing.assert_array_equal(np.asarray(nib.load(written[0]).dataobj), roi.data)


def test_a_layer_without_results_metadata_saves_with_its_scale_and_translate(tmp_path):
    from napari_mine._writer import write_nifti_image

    placement = {"scale": [2, 3, 4], "translate": [1, 2, 3]}
    [path] = write_nifti_image(str(tmp_path / "plain"), np.ones((2, 3, 4)), placement)
    image = nib.load(path)
    assert path.endswith("plain.nii.gz")
    np.testing.assert_allclose(image.affine, [[2, 0, 0, 1], [0, 3, 0, 2], [0, 0, 4, 3], [0, 0, 0, 1]])
    with pytest.raises(MineInputError, match="has 4 dimensions .*save a brain volume layer"):
        write_nifti_image(str(tmp_path / "stack.nii.gz"), np.zeros((2, 1, 3, 3)), {"name": "stimuli"})


def test_a_surface_layer_saves_as_gifti_with_its_mesh_and_values(tmp_path, plugins):
    import napari

    from napari_mine._reader import layer_metadata

    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    faces = np.array([[0, 1, 2], [0, 1, 3], [0, 2, 3]])
    values = np.array([0.5, -1.0, 2.0, np.nan], np.float32)
    surface = napari.layers.Surface((vertices, faces, values), name="lh accuracy",
                                    metadata=layer_metadata(tmp_path, "accuracy", hemi="lh"))
    [path] = napari.save_layers(str(tmp_path / "lh.accuracy.gii"), [surface], plugin="napari-mine")
    image = nib.load(path)
    assert image.meta["AnatomicalStructurePrimary"] == "CortexLeft"
    points, triangles, saved = (array.data for array in image.darrays)
    np.testing.assert_array_equal(points, vertices)
    np.testing.assert_array_equal(triangles, faces)
    np.testing.assert_array_equal(saved, values)
