"""The npe2 readers: NIfTI placement from the affine, label volumes, 4-D and oblique files, results stores."""

from __future__ import annotations

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

from napari_mine._reader import (  # noqa: E402
    META,
    affine_placement,
    get_nifti_reader,
    get_store_reader,
    read_store,
    stimulus_placement,
)
from napari_mine.errors import MineInputError  # noqa: E402
from napari_mine.store import ResultsStore, write_arrays  # noqa: E402

AFFINE = np.array([[1.8, 0, 0, -72.0], [0, 2.0, 0, -100.0], [0, 0, 2.5, -30.0], [0, 0, 0, 1]])


def save(path, data, affine=AFFINE):
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return str(path)


def read(path):
    reader = get_nifti_reader(path)
    assert reader is not None
    return reader(path)


def test_nifti_scale_and_translate_come_from_the_affine(tmp_path):
    path = save(tmp_path / "anat.nii.gz", np.random.default_rng(0).random((6, 7, 8)).astype(np.float32))
    [(data, kwargs, kind)] = read(path)
    assert kind == "image" and data.shape == (6, 7, 8)
    np.testing.assert_allclose(kwargs["scale"], [1.8, 2.0, 2.5])
    np.testing.assert_allclose(kwargs["translate"], [-72.0, -100.0, -30.0])
    assert kwargs["name"] == "anat"


def test_nifti_world_coordinates_match_the_affine_in_a_viewer(tmp_path, make_napari_viewer):
    path = save(tmp_path / "anat.nii", np.zeros((6, 7, 8), np.float32))
    viewer = make_napari_viewer()
    [layer] = viewer.open(path, plugin="napari-mine")
    voxel = np.array([2, 3, 4])
    world = (AFFINE @ np.append(voxel, 1))[:3]
    np.testing.assert_allclose(layer.world_to_data(world), voxel)


def test_flipped_axis_keeps_exact_world_coordinates(tmp_path):
    affine = AFFINE.copy()
    affine[0, 0] = -1.8
    [(_, kwargs, _)] = read(save(tmp_path / "flip.nii.gz", np.zeros((4, 4, 4), np.float32), affine))
    np.testing.assert_allclose(kwargs["scale"], [-1.8, 2.0, 2.5])


def test_integer_volume_with_label_table_is_a_labels_layer(tmp_path):
    volume = np.zeros((5, 5, 5), np.int16) - 1
    volume[1:3, 1:3, 1:3] = 2
    volume[3, 3, 3] = 1
    path = save(tmp_path / "floc-faces.nii.gz", volume)
    (tmp_path / "floc-faces.mgz.ctab").write_text("0 Unknown\n1 OFA\n2 FFA-1\n")
    [(data, kwargs, kind)] = read(path)
    assert kind == "labels"
    assert data.min() == 0 and data[1, 1, 1] == 2 and data[3, 3, 3] == 1  # -1 outside cortex -> background
    assert kwargs["features"]["name"][kwargs["features"]["index"].index(2)] == "FFA-1"


def test_integer_volume_without_label_table_is_an_image(tmp_path):
    [(_, _, kind)] = read(save(tmp_path / "counts.nii.gz", np.ones((3, 3, 3), np.int16)))
    assert kind == "image"


def test_4d_volume_is_one_layer_with_a_volume_axis_read_lazily(tmp_path):
    series = np.arange(4 * 5 * 6 * 3, dtype=np.float32).reshape(4, 5, 6, 3)
    image = nib.Nifti1Image(series, AFFINE)
    image.header.set_zooms((1.8, 2.0, 2.5, 1.6))
    path = str(tmp_path / "betas.nii.gz")
    nib.save(image, path)
    [(data, kwargs, kind)] = read(path)
    assert kind == "image" and data.shape == (3, 4, 5, 6)
    assert type(data).__module__.startswith("dask")
    np.testing.assert_array_equal(np.asarray(data[2]), series[..., 2])
    np.testing.assert_allclose(kwargs["scale"], [1.6, 1.8, 2.0, 2.5])


def test_5d_volume_is_refused_clearly(tmp_path):
    path = save(tmp_path / "five.nii.gz", np.zeros((2, 2, 2, 2, 2), np.float32))
    with pytest.raises(MineInputError, match="3-D volumes and 4-D series"):
        read(path)


def test_oblique_affine_loads_with_voxel_sizes_and_warns(tmp_path, monkeypatch):
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([1.8, 2.0, 2.5])
    affine[:3, 3] = [5, 6, 7]
    warnings = []
    monkeypatch.setattr("napari.utils.notifications.show_warning", warnings.append)
    [(_, kwargs, _)] = read(save(tmp_path / "oblique.nii.gz", np.zeros((4, 4, 4), np.float32), affine))
    np.testing.assert_allclose(kwargs["scale"], [1.8, 2.0, 2.5])
    np.testing.assert_allclose(kwargs["translate"], [5, 6, 7])
    assert len(warnings) == 1 and "oblique" in warnings[0]


def test_affine_placement_tells_oblique_from_axis_aligned():
    assert affine_placement(AFFINE)[2] is False
    swapped = AFFINE[[1, 0, 2, 3]]
    assert affine_placement(swapped)[2] is True


def test_readers_decline_other_paths(tmp_path):
    assert get_nifti_reader(str(tmp_path / "image.png")) is None
    assert get_store_reader(str(tmp_path)) is None


# ---- results store ---------------------------------------------------------------------------------------
def tiny_store(root, with_encoder=True):
    """A store with a brain step (and an encoder step) written through ResultsStore, no model needed."""
    rng = np.random.default_rng(0)
    mask = np.zeros((6, 7, 5), bool)
    mask[1:5, 2:6, 1:4] = True
    n_voxels = int(mask.sum())
    faces = np.where(mask, 0, -1).astype(np.int16)
    faces[2:4, 3:5, 2] = 2
    store = ResultsStore.create(root, model={"id": "test:0"}, dataset={})
    with store.write_step("brain", {"roi_labels": {"floc-faces": {"2": "FFA-1"}}}) as group:
        write_arrays(group, {"mask": mask, "affine": AFFINE, "anatomy": rng.random(mask.shape).astype(np.float32),
                             "ncsnr": rng.random(n_voxels).astype(np.float32), "roi/floc-faces": faces})
    if with_encoder:
        with store.write_step("encoder", {}) as group:
            write_arrays(group, {"accuracy/normalized_r": np.linspace(0, 1, n_voxels, dtype=np.float32),
                                 "accuracy/r": np.linspace(0, 0.5, n_voxels, dtype=np.float32),
                                 "accuracy/noise_ceiling": np.full(n_voxels, 40.0, np.float32)})
    return store, mask


def test_store_reader_gives_anatomy_accuracy_and_roi_layers(tmp_path, monkeypatch):
    store, mask = tiny_store(tmp_path / "results")
    warnings = []
    monkeypatch.setattr("napari.utils.notifications.show_warning", warnings.append)
    reader = get_store_reader(str(store.root))
    assert reader is not None
    layers = {kwargs["name"]: (data, kwargs, kind) for data, kwargs, kind in reader(str(store.root))}
    assert {"anatomy", "accuracy (r / noise ceiling)", "ROI floc-faces"} <= set(layers)
    accuracy, kwargs, kind = layers["accuracy (r / noise ceiling)"]
    assert kind == "image" and np.isnan(accuracy[~mask]).all()
    np.testing.assert_allclose(accuracy[mask], np.linspace(0, 1, int(mask.sum())))
    np.testing.assert_allclose(kwargs["scale"], [1.8, 2.0, 2.5])
    assert kwargs["metadata"][META] == {"store": str(store.root.resolve()), "role": "accuracy"}
    roi, roi_kwargs, roi_kind = layers["ROI floc-faces"]
    assert roi_kind == "labels" and roi.min() == 0 and roi[2, 3, 2] == 2
    assert roi_kwargs["metadata"][META]["labels"] == {"2": "FFA-1"}
    assert warnings and "stimuli" in warnings[0]  # the manifest names no dataset: no stimulus layer


def test_store_without_encoder_shows_the_mask(tmp_path, monkeypatch):
    monkeypatch.setattr("napari.utils.notifications.show_warning", lambda message: None)
    store, _ = tiny_store(tmp_path / "results", with_encoder=False)
    names = [kwargs["name"] for _, kwargs, _ in read_store(store.root)]
    assert "brain mask" in names and "accuracy (r / noise ceiling)" not in names


def test_store_reader_accepts_the_manifest_path(tmp_path):
    store, _ = tiny_store(tmp_path / "results")
    assert get_store_reader(str(store.root / "manifest.json")) is not None


def test_stimulus_placement_spans_the_brain_and_sits_beside_it():
    scale, translate = stimulus_placement((10, 20, 30), [2.0, 2.0, 2.0], [0.0, 0.0, 0.0], (100, 100))
    # the singleton axis covers x in [-1, 19]: every brain slice rounds to stimulus index 0
    for x in (0.0, 18.0):
        assert abs((x - translate[1]) / scale[1]) <= 0.5
    assert scale[2] * 100 == pytest.approx(40.0)  # as tall as the brain's y extent
    assert translate[3] - scale[3] / 2 > 59.0  # right of the brain's z extent
