"""Volume → fsaverage through NSD's transforms files, written here as NSD writes them (MGH, 1-based, 9999)."""

import nibabel as nib
import numpy as np
import pytest

from napari_mine.errors import MineInputError
from napari_mine.projection import INVALID, nsd_projection

GRID = (9, 10, 11)


def write_transforms(root, coordinates, native_of_fsaverage, subject=1, spread=0.2):
    """Write both hemispheres' depth files (0-based coordinates given, written 1-based, the outer depths
    ``spread`` voxels away) and fsaverage maps."""
    folder = root / "nsddata" / "ppdata" / f"subj{subject:02d}" / "transforms"
    folder.mkdir(parents=True, exist_ok=True)
    for hemi in ("lh", "rh"):
        for depth, offset in zip(("layerB1", "layerB2", "layerB3"), (-spread, 0.0, spread)):
            values = np.where(np.isnan(coordinates), INVALID, coordinates + 1 + offset)
            image = nib.MGHImage(values.reshape(-1, 1, 1, 3).astype(np.float32), np.eye(4))
            nib.save(image, folder / f"{hemi}.func1pt8-to-{depth}.mgz")
        nib.save(nib.MGHImage((native_of_fsaverage + 1).reshape(-1, 1, 1).astype(np.int32), np.eye(4)),
                 folder / f"{hemi}.white-to-fsaverage.mgz")
    return folder


@pytest.fixture
def transforms(tmp_path):
    rng = np.random.default_rng(0)
    coordinates = rng.uniform(1.5, np.array(GRID) - 2.5, size=(40, 3))
    coordinates[3] = np.nan  # an invalid native vertex
    native_of_fsaverage = rng.integers(0, 40, size=642)
    write_transforms(tmp_path, coordinates, native_of_fsaverage)
    return tmp_path, coordinates, native_of_fsaverage


def test_a_linear_map_is_sampled_exactly_and_carried_to_fsaverage(transforms):
    root, coordinates, native = transforms
    projection = nsd_projection(root, 1, GRID)
    i, j, k = np.meshgrid(*map(np.arange, GRID), indexing="ij")
    values = projection.project((i + 2 * j + 3 * k).astype(np.float32))
    expected = (coordinates @ np.array([1.0, 2.0, 3.0]))[native]
    assert values.shape == (2 * 642,)
    assert projection.layout.mesh == "fsaverage3"
    np.testing.assert_allclose(values[:642], expected, rtol=1e-5)  # NaN where the native vertex is invalid
    np.testing.assert_allclose(values[642:], expected, rtol=1e-5)


def test_labels_take_the_nearest_voxel_and_nan_voxels_stay_out(transforms):
    root, coordinates, native = transforms
    projection = nsd_projection(root, 1, GRID)
    labels = np.zeros(GRID, np.int32)
    labels[:5] = 7
    projected = projection.project(labels, labels=True)[:642]
    expected = np.where(np.isnan(coordinates[:, 0]), 0, np.where(np.rint(np.nan_to_num(coordinates[:, 0])) < 5, 7, 0))
    np.testing.assert_array_equal(projected, expected[native])
    masked = np.full(GRID, np.nan, np.float32)
    masked[:5] = 1.0
    values = projection.project(masked)[:642]
    far = np.nan_to_num(coordinates[native, 0], nan=0) > 5.5
    assert np.isnan(values[far]).all() and np.allclose(values[np.nan_to_num(coordinates[native, 0], nan=99) < 3.5], 1)
    assert projection.voxel_of("lh", int(np.flatnonzero(native != 3)[0])) is not None


def test_transforms_of_another_grid_or_missing_files_are_refused(transforms, tmp_path):
    root, _, _ = transforms
    with pytest.raises(MineInputError, match="another subject or grid"):
        nsd_projection(root, 1, (5, 5, 5))
    with pytest.raises(MineInputError, match="lacks"):
        nsd_projection(root, 2, GRID)
    with pytest.raises(MineInputError, match="cannot be projected"):
        nsd_projection(root, 1, GRID).project(np.zeros((3, 3, 3)))


def test_volume_results_export_onto_fsaverage_through_the_subjects_transforms(tmp_path):
    """features → fit on an NSD volume subject, then its accuracy and a label map exported on fsaverage."""
    from conftest import write_nsd_subject

    from napari_mine import cli
    from napari_mine.results import Results

    subject = write_nsd_subject(tmp_path / "nsd", n_sessions=3, n_design_sessions=3, trials_per_session=60,
                                n_subject_images=80, n_stimuli=120, n_shared=16, image_size=32)
    out, maps = tmp_path / "results", tmp_path / "maps"
    assert cli.main(["features", str(subject.root), "--out", str(out)]) == 0
    assert cli.main(["fit", str(out)]) == 0
    results = Results.open(out)
    voxels = np.argwhere(results.space.mask)[:30].astype(float)  # each native vertex sits in one masked voxel
    native = np.arange(10242) % 30  # fsaverage5, the mesh nilearn ships
    write_transforms(subject.root, voxels, native, spread=0.0)  # every depth at the voxel centre
    assert cli.main(["export", str(out), "--map", "accuracy", "--on-fsaverage", "--format", "mgh",
                     "--out", str(maps)]) == 0
    lh = np.asarray(nib.load(maps / "lh.accuracy.fsaverage.mgh").dataobj).ravel()
    accuracy = results.space.unmask(results.accuracy["normalized_r"])
    expected = accuracy[tuple(voxels.astype(int).T)][native]
    np.testing.assert_allclose(lh, expected, rtol=1e-5)
    with pytest.raises(MineInputError, match="vertex maps"):
        from napari_mine.export import export_maps

        export_maps(results, ["accuracy"], "nifti", maps, on_fsaverage=True)
    from napari_mine._reader import projected_layers

    layers = {kwargs["name"]: data for data, kwargs, kind in projected_layers(results) if kind == "surface"}
    vertices, faces, values = layers["lh accuracy on fsaverage"]
    assert len(vertices) == 10242 and len(faces) and set(layers) >= {"lh sulcal depth", "rh accuracy on fsaverage"}
    np.testing.assert_allclose(values[np.unique(faces)], np.nan_to_num(expected)[np.unique(faces)], rtol=1e-5)
