"""Round trips through the real loaders on small files written in the NSD and generic layouts."""

from __future__ import annotations

import gzip
import json
import shutil

import h5py
import numpy as np
import pytest
from PIL import Image

from conftest import SMALL_AFFINE, SMALL_GRID, write_nifti
from napari_mine.data import (
    NSD_ROI_LABELS,
    Dataset,
    ImageStore,
    dataset_from_source,
    load_generic,
    load_nsd,
    read_image_file,
    to_rgb_uint8,
)
from napari_mine.errors import MineInputError


def expected_stimuli(subject, n_sessions=2, trials=30):
    """0-based stimulus id of each loaded trial, straight from the design arrays."""
    return subject.subjectim[0, subject.masterordering[: n_sessions * trials] - 1] - 1


@pytest.fixture(scope="module")
def raw(nsd_subject):
    return load_nsd(nsd_subject.root, zscore=False)


# ---------------------------------------------------------------------------------------------------------
# NSD layout


def test_trials_map_to_their_images_with_repeats(nsd_subject, raw):
    stimulus_of_trial = expected_stimuli(nsd_subject)
    assert np.array_equal(raw.images.ids[raw.trial_images], stimulus_of_trial)
    assert np.array_equal(raw.images.ids, np.unique(stimulus_of_trial))
    assert len(raw.responses) == 60 and np.bincount(raw.trial_images).max() > 1
    first = raw.trial_images[0]
    assert np.array_equal(raw.images[first], nsd_subject.stimuli[stimulus_of_trial[0]])
    stack = raw.images[raw.trial_images[:5]]
    assert stack.shape == (5, 8, 8, 3) and np.array_equal(stack, nsd_subject.stimuli[stimulus_of_trial[:5]])


def test_masked_values_are_int16_over_300(nsd_subject, raw):
    mask = nsd_subject.mask
    expected = np.concatenate([(volume[mask].T / 300).astype(np.float32) for volume in nsd_subject.betas])
    assert raw.responses.dtype == np.float32
    assert np.array_equal(raw.responses, expected)
    assert np.array_equal(raw.mask, mask) and np.allclose(raw.affine, SMALL_AFFINE)
    assert raw.n_voxels == mask.sum() and np.array_equal(raw.voxel_coords, np.argwhere(mask))


def test_zscore_is_per_session_and_default(nsd_subject):
    dataset = load_nsd(nsd_subject.root)
    for session in (dataset.responses[:30], dataset.responses[30:]):
        assert np.allclose(session.mean(axis=0), 0, atol=1e-5) and np.allclose(session.std(axis=0), 1, atol=1e-4)
    assert dataset.source["zscore"] and dataset.source["units"] == "z-score within session"


def test_one_session_uses_its_own_design_trials(nsd_subject):
    dataset = load_nsd(nsd_subject.root, sessions=[2], zscore=False)
    stimulus_of_trial = nsd_subject.subjectim[0, nsd_subject.masterordering[30:60] - 1] - 1
    assert np.array_equal(dataset.images.ids[dataset.trial_images], stimulus_of_trial)
    assert np.array_equal(dataset.responses, (nsd_subject.betas[1][nsd_subject.mask].T / 300).astype(np.float32))


def test_partial_last_session_keeps_the_full_session_offset(make_nsd_subject):
    subject = make_nsd_subject(n_sessions=3, last_session_trials=12)
    dataset = load_nsd(subject.root, sessions=[3], zscore=False)
    stimulus_of_trial = subject.subjectim[0, subject.masterordering[60:72] - 1] - 1
    assert np.array_equal(dataset.images.ids[dataset.trial_images], stimulus_of_trial)
    assert load_nsd(subject.root).responses.shape[0] == 72


def test_rois_labels_ncsnr_anatomy(nsd_subject, raw):
    assert raw.rois["prf-visualrois"].labels[7] == "hV4"
    assert raw.rois["floc-faces"].labels == NSD_ROI_LABELS["floc-faces"]  # no ctab: NSD's known names
    assert np.array_equal(raw.rois["floc-faces"].volume, nsd_subject.rois["floc-faces"])
    faces = raw.roi_of_voxels("floc-faces")
    labels = nsd_subject.rois["floc-faces"][nsd_subject.mask]
    assert np.all(faces[labels == 2] == "FFA-1") and np.all(faces[labels == 0] == "")
    combined = raw.roi_of_voxels()
    voxel = np.flatnonzero((labels == 2) & (nsd_subject.rois["prf-visualrois"][nsd_subject.mask] == 1))[0]
    assert combined[voxel] == "V1v+FFA-1"  # nsdgeneral names every voxel of its own mask: left out
    assert np.array_equal(raw.ncsnr, nsd_subject.ncsnr[nsd_subject.mask])
    assert np.array_equal(raw.anatomy, nsd_subject.anatomy)


def test_test_split_is_the_shared_images(nsd_subject, raw):
    shown = np.unique(raw.trial_images)
    shared_shown = np.isin(raw.images.ids, nsd_subject.sharedix - 1)
    assert np.array_equal(raw.test_images, np.flatnonzero(shared_shown))
    train, test = raw.split()
    assert np.array_equal(test, np.intersect1d(shown, raw.test_images))
    assert np.array_equal(np.sort(np.concatenate([train, test])), shown)


def test_image_responses_average_repeats(raw):
    ids, means, counts = raw.image_responses()
    assert np.array_equal(ids, np.unique(raw.trial_images)) and counts.sum() == len(raw.responses)
    for row in (0, len(ids) - 1):
        trials = raw.trial_images == ids[row]
        assert counts[row] == trials.sum()
        assert np.allclose(means[row], raw.responses[trials].mean(axis=0), atol=1e-6)


def test_unmask_restores_the_grid(raw):
    volume = raw.unmask(raw.responses[:3])
    assert volume.shape == (3,) + SMALL_GRID
    assert np.array_equal(volume[:, raw.mask], raw.responses[:3]) and np.isnan(volume[:, ~raw.mask]).all()


def test_hdf5_betas_equal_nifti_betas(make_nsd_subject, raw):
    subject = make_nsd_subject(betas_format="hdf5")  # same seed: same arrays as the NIfTI fixture
    dataset = load_nsd(subject.root, zscore=False)
    assert dataset.source["betas"][0].endswith(".hdf5")
    assert np.array_equal(dataset.responses, raw.responses)
    assert np.array_equal(dataset.trial_images, raw.trial_images) and np.allclose(dataset.affine, raw.affine)


def test_files_found_in_a_flat_folder_with_mean_beta_anatomy(make_nsd_subject, tmp_path):
    subject = make_nsd_subject(with_label_tables=False, with_anatomy=False)
    flat = tmp_path / "flat" / "my_copy"
    flat.mkdir(parents=True)
    for path in subject.root.rglob("*"):
        if path.is_file():
            shutil.copy(path, flat / path.name)
    dataset = load_nsd(flat.parent, zscore=False, mask="brainmask")
    brain = subject.rois["nsdgeneral"] >= 0
    assert np.array_equal(dataset.mask, brain)
    assert dataset.rois["prf-visualrois"].labels == NSD_ROI_LABELS["prf-visualrois"]
    mean_beta = np.concatenate([v for v in subject.betas], axis=3).mean(axis=3) / 300
    assert np.allclose(dataset.anatomy, mean_beta, atol=1e-5)


def test_mask_as_array_and_as_file(nsd_subject, tmp_path):
    corner = np.zeros(SMALL_GRID, dtype=bool)
    corner[:2, :2, :2] = True
    from_array = load_nsd(nsd_subject.root, mask=corner, zscore=False)
    mask_file = write_nifti(tmp_path / "m.nii.gz", corner.astype(np.uint8))
    from_file = load_nsd(nsd_subject.root, mask=mask_file, zscore=False)
    assert from_array.n_voxels == 8 and np.array_equal(from_array.responses, from_file.responses)


# ---------------------------------------------------------------------------------------------------------
# NSD bad input: one clear MineInputError each


def test_roi_on_another_grid_is_refused_naming_both_shapes(make_nsd_subject):
    subject = make_nsd_subject()
    write_nifti(subject.paths()["roi"] / "floc-faces.nii.gz", np.zeros((10, 12, 8), np.int16))
    with pytest.raises(MineInputError, match=r"floc-faces.nii.gz has the grid \(10, 12, 8\) .* \(10, 12, 9\)"):
        load_nsd(subject.root)


def test_session_with_another_affine_is_refused(make_nsd_subject):
    subject = make_nsd_subject()
    shifted = SMALL_AFFINE.copy()
    shifted[0, 3] += 5
    write_nifti(subject.paths()["betas"] / "betas_session02.nii.gz", subject.betas[1], affine=shifted)
    with pytest.raises(MineInputError, match="affine of .*betas_session02.nii.gz differs"):
        load_nsd(subject.root)


def nan_subject(make_nsd_subject):
    """A subject whose session 2 is float with NaN in 2 masked voxels (3 values)."""
    subject = make_nsd_subject()
    volume = (subject.betas[1] / 300).astype(np.float32)
    voxels = np.argwhere(subject.mask)[:2]
    volume[tuple(voxels[0])][[0, 5]] = np.nan
    volume[tuple(voxels[1])][3] = np.nan
    write_nifti(subject.paths()["betas"] / "betas_session02.nii.gz", volume)
    return subject


def test_nan_betas_are_refused_saying_how_many_and_where(make_nsd_subject):
    subject = nan_subject(make_nsd_subject)
    with pytest.raises(MineInputError, match=r"betas_session02.nii.gz \(session 2\) has 3 NaN values in 2 voxels"):
        load_nsd(subject.root)


def test_nan_policy_zero_and_drop_voxels(make_nsd_subject):
    subject = nan_subject(make_nsd_subject)
    zeroed = load_nsd(subject.root, nan_policy="zero", zscore=False)
    assert zeroed.n_voxels == subject.mask.sum() and zeroed.responses[30, 0] == 0
    assert not np.isnan(zeroed.responses).any()
    dropped = load_nsd(subject.root, nan_policy="drop-voxels")
    assert dropped.n_voxels == subject.mask.sum() - 2 and dropped.source["dropped_voxels"] == 2
    assert len(dropped.ncsnr) == dropped.n_voxels and not dropped.mask.flat[np.flatnonzero(subject.mask)[:2]].any()
    assert np.isfinite(dropped.responses).all()


def test_corrupt_nifti_is_named(make_nsd_subject):
    subject = make_nsd_subject()
    path = subject.paths()["betas"] / "betas_session01.nii.gz"
    path.write_bytes(path.read_bytes()[:200])  # truncated download
    with pytest.raises(MineInputError, match="Could not read .*betas_session01.nii.gz"):
        load_nsd(subject.root)


def test_truncated_nifti_data_is_named(make_nsd_subject):
    subject = make_nsd_subject()
    path = subject.paths()["betas"] / "betas_session02.nii.gz"
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[: len(data) // 2]))  # header fine, half the trials missing
    with pytest.raises(MineInputError, match="betas_session02.nii.gz"):
        load_nsd(subject.root)


def test_corrupt_hdf5_is_named(make_nsd_subject):
    subject = make_nsd_subject()
    subject.paths()["stimuli"].write_bytes(b"not an hdf5 file")
    with pytest.raises(MineInputError, match="Could not read .*nsd_stimuli.hdf5"):
        load_nsd(subject.root)


def test_missing_expdesign_says_where_it_was_looked_for(make_nsd_subject):
    subject = make_nsd_subject()
    subject.paths()["expdesign"].unlink()
    with pytest.raises(MineInputError, match=r"No nsd_expdesign.mat under .*nsddata/experiments/nsd/nsd_expdesign.mat"):
        load_nsd(subject.root)


def test_empty_or_misshaped_mask_is_refused(nsd_subject):
    with pytest.raises(MineInputError, match="selects no voxel"):
        load_nsd(nsd_subject.root, mask=np.zeros(SMALL_GRID, dtype=bool))
    with pytest.raises(MineInputError, match=r"shape \(3, 3, 3\) but the betas' grid is \(10, 12, 9\)"):
        load_nsd(nsd_subject.root, mask=np.ones((3, 3, 3), dtype=bool))
    with pytest.raises(MineInputError, match="No mask volume 'floc-cars'"):
        load_nsd(nsd_subject.root, mask="floc-cars")


def test_unknown_session_and_design_too_short(nsd_subject, make_nsd_subject):
    with pytest.raises(MineInputError, match=r"Sessions \[5\] have no beta file"):
        load_nsd(nsd_subject.root, sessions=[5])
    short = make_nsd_subject(n_design_sessions=1)
    with pytest.raises(MineInputError, match="masterordering has 30"):
        load_nsd(short.root)


# ---------------------------------------------------------------------------------------------------------
# Images


def test_images_are_converted_not_refused(tmp_path):
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8)
    rgba = np.zeros((6, 8, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0  # fully transparent red → white
    Image.fromarray(grey).save(tmp_path / "grey.png")
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    Image.fromarray((grey.astype(np.uint16) * 257)).save(tmp_path / "deep.png")  # 16-bit greyscale
    Image.fromarray(grey).convert("P").save(tmp_path / "palette.png")
    expected_grey = np.repeat(grey[:, :, None], 3, axis=2)
    assert np.array_equal(read_image_file(tmp_path / "grey.png"), expected_grey)
    assert np.array_equal(read_image_file(tmp_path / "deep.png"), expected_grey)
    assert np.array_equal(read_image_file(tmp_path / "palette.png"), expected_grey)
    assert np.array_equal(read_image_file(tmp_path / "rgba.png"), np.full((6, 8, 3), 255, np.uint8))
    assert to_rgb_uint8(np.full((2, 2, 3), 0.5)).max() == 128
    assert to_rgb_uint8(np.full((2, 2, 2), [0.0, 0.5])).tolist() == [[[128] * 3] * 2] * 2  # black, half alpha


def test_image_store_refuses_mixed_sizes_unless_resized(tmp_path):
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "b.png")
    store = ImageStore.from_files([tmp_path / "a.png", tmp_path / "b.png"])
    assert store[0].shape == (10, 20, 3)
    with pytest.raises(MineInputError, match="differ in size"):
        store[[0, 1]]
    resized = ImageStore.from_files([tmp_path / "a.png", tmp_path / "b.png"], image_size=8)
    assert resized[:].shape == (2, 8, 8, 3)


# ---------------------------------------------------------------------------------------------------------
# Generic layout


@pytest.fixture
def generic_folder(tmp_path):
    """images/ (3 greyscale + RGB files), 8 trials with repeats, a split column, a mask and an ROI."""
    rng = np.random.default_rng(1)
    folder = tmp_path / "study"
    (folder / "images").mkdir(parents=True)
    for index, name in enumerate(["cat.png", "dog.png", "tree.jpg"]):
        pixels = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels[..., 0] if index == 0 else pixels).save(folder / "images" / name, quality=100)
    names = ["dog.png", "cat.png", "tree.jpg", "dog.png", "cat.png", "tree.jpg", "dog.png", "cat.png"]
    splits = ["train" if n != "tree.jpg" else "test" for n in names]
    (folder / "trials.csv").write_text("image,split\n" + "".join(f"{n},{s}\n" for n, s in zip(names, splits)))
    mask = np.zeros(SMALL_GRID, dtype=bool)
    mask[3:6, 4:8, 2:5] = True
    write_nifti(folder / "mask.nii.gz", mask.astype(np.uint8))
    roi = np.where(mask, 1, 0).astype(np.int16)
    roi[3] = np.where(mask[3], 2, 0)
    write_nifti(folder / "rois" / "category.nii.gz", roi)
    (folder / "rois" / "category.ctab").write_text("1 FFA\n2 PPA\n")
    volumes = rng.normal(size=SMALL_GRID + (8,)).astype(np.float32)
    return folder, volumes, mask, names


def test_generic_from_npy_and_mask(generic_folder):
    folder, volumes, mask, names = generic_folder
    np.save(folder / "responses.npy", volumes[mask].T)
    dataset = load_generic(folder)
    assert isinstance(dataset, Dataset) and dataset.name == "study"
    assert np.array_equal(dataset.responses, volumes[mask].T)
    assert [dataset.images.names[i] for i in dataset.trial_images] == names
    assert dataset.images[dataset.trial_images[1]].shape == (8, 8, 3)  # greyscale cat converted to RGB
    assert [dataset.images.names[i] for i in dataset.test_images] == ["tree.jpg"]
    assert set(dataset.roi_of_voxels("category")) == {"FFA", "PPA"}
    assert np.allclose(dataset.affine, SMALL_AFFINE)


def test_generic_from_4d_nifti_equals_npy(generic_folder):
    folder, volumes, mask, _ = generic_folder
    write_nifti(folder / "responses.nii.gz", volumes)
    from_nifti = load_generic(folder)
    (folder / "responses.nii.gz").unlink()
    with h5py.File(folder / "responses.h5", "w") as handle:
        handle["responses"] = volumes[mask].T
    from_h5 = load_generic(folder)
    assert np.array_equal(from_nifti.responses, from_h5.responses)
    assert np.array_equal(from_nifti.mask, mask)


def test_generic_4d_nifti_without_mask_keeps_varying_finite_voxels(tmp_path):
    volumes = np.zeros(SMALL_GRID + (4,), dtype=np.float32)
    volumes[1:3, 1:3, 1:3] = np.arange(4)
    volumes[1, 1, 1, 2] = np.nan
    write_nifti(tmp_path / "responses.nii.gz", volumes)
    for index in range(4):
        Image.fromarray(np.full((4, 4), index * 60, np.uint8)).save(tmp_path / f"img{index}.png")
    dataset = load_generic(responses=tmp_path / "responses.nii.gz", images=tmp_path)
    assert dataset.n_voxels == 7 and dataset.test_images is None
    assert np.array_equal(dataset.trial_images, np.arange(4))
    train, test = dataset.split(seed=3)
    assert len(test) == 1 and np.array_equal(np.sort(np.concatenate([train, test])), np.arange(4))


def test_generic_bad_input(generic_folder):
    folder, volumes, mask, _ = generic_folder
    np.save(folder / "responses.npy", volumes[mask].T[:, :-1])
    with pytest.raises(MineInputError, match=rf"shape \(8, {mask.sum() - 1}\) but the mask has {mask.sum()} voxels"):
        load_generic(folder)
    np.save(folder / "responses.npy", volumes[mask].T[:5])
    with pytest.raises(MineInputError, match="has 8 rows but there are 5 response rows"):
        load_generic(folder)
    values = volumes[mask].T
    values[2, 4] = np.nan
    np.save(folder / "responses.npy", values)
    with pytest.raises(MineInputError, match="responses.npy has 1 NaN values in 1 voxels"):
        load_generic(folder)
    assert load_generic(folder, nan_policy="drop-voxels").n_voxels == mask.sum() - 1
    (folder / "images" / "dog.png").unlink()
    with pytest.raises(MineInputError, match="1 images named in the table are not in .*dog.png"):
        load_generic(folder)


# ---------------------------------------------------------------------------------------------------------
# Source records


def test_source_record_reloads_the_same_dataset(nsd_subject, generic_folder):
    folder, volumes, mask, _ = generic_folder
    np.save(folder / "responses.npy", volumes[mask].T)
    for dataset in (load_nsd(nsd_subject.root, sessions=[2], mask="floc-faces"), load_generic(folder)):
        record = json.loads(json.dumps(dataset.source))  # as a manifest stores it
        again = dataset_from_source(record)
        assert np.array_equal(again.responses, dataset.responses) and np.array_equal(again.mask, dataset.mask)
        assert np.array_equal(again.images.ids, dataset.images.ids) and again.rois.keys() == dataset.rois.keys()
    with pytest.raises(MineInputError, match="mask array"):
        dataset_from_source(load_nsd(nsd_subject.root, mask=nsd_subject.mask).source)


def test_generic_stimuli_open_from_the_record_without_the_responses(generic_folder, monkeypatch):
    from napari_mine.data import generic

    folder, volumes, mask, _ = generic_folder
    np.save(folder / "responses.npy", volumes[mask].T)
    dataset = load_generic(folder)
    monkeypatch.setattr(generic, "_read_responses", lambda *args: pytest.fail("the responses were read"))
    images = generic.open_generic_images(json.loads(json.dumps(dataset.source)))
    assert len(images) == len(dataset.images) and np.array_equal(images.ids, dataset.images.ids)
    for row in range(len(images)):
        np.testing.assert_array_equal(images[row], dataset.images[row])
