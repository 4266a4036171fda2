"""The synthetic world: renderer, simulated brain and the NSD-layout writer."""

import numpy as np
import pytest

from napari_mine.errors import MineInputError
from napari_mine.synthetic import scenes as S


def _scenes(n, seed=0):
    rng = np.random.default_rng(seed)
    return [S.sample_scene(rng) for _ in range(n)]


# ----------------------------------------------------------------------------------------------- scenes


def test_sampling_and_rendering_are_deterministic_by_seed():
    first, again, other = _scenes(20, 1), _scenes(20, 1), _scenes(20, 2)
    assert first == again and first != other
    assert np.array_equal(S.render_scenes(first), S.render_scenes(again))
    assert S.CATEGORIES[:6] == ("face", "house", "body", "word", "food", "car")


def test_render_shapes_dtypes_and_object_count():
    scenes = _scenes(30, 3)
    image = S.render(scenes[0])
    assert image.shape == (S.IMAGE_SIZE, S.IMAGE_SIZE, 3) and image.dtype == np.uint8
    assert S.render(scenes[0], 64).shape == (64, 64, 3)
    for scene in scenes:
        assert 1 <= len(scene.objects) <= 4
        assert len({obj.category for obj in scene.objects}) == len(scene.objects)


def test_masks_cover_exactly_the_object_pixels():
    scene = S.Scene((S.SceneObject("face", "red", 0.3, 0.5, 0.4), S.SceneObject("car", "blue", 0.5, 0.55, 0.4)),
                    "noise", 11)
    masks = S.object_masks(scene)
    assert masks.shape == (2, S.IMAGE_SIZE, S.IMAGE_SIZE) and masks.dtype == bool
    assert not (masks[0] & masks[1]).any()
    assert masks.sum(axis=(1, 2)).min() > 200
    full = S.silhouettes(scene)
    assert (full[0] & ~masks[0]).any(), "the car, drawn last, occludes part of the face"
    changed = np.any(S.render(scene) != S.render(S.Scene((), "noise", 11)), axis=-1)
    assert changed[masks.any(0)].mean() > 0.95
    assert not changed[~masks.any(0)].any()


def test_sampled_objects_stay_mostly_visible():
    fractions = [m.sum() / f.sum() for scene in _scenes(40, 4)
                 for m, f in zip(S.object_masks(scene, 64), S.silhouettes(scene, 64))]
    assert np.median(fractions) > 0.9 and np.min(fractions) > 0.2


def test_caption_lists_every_object_with_attributes():
    scene = S.Scene((S.SceneObject("face", "red", 0.2, 0.5, 0.45), S.SceneObject("car", "blue", 0.8, 0.4, 0.25)),
                    "plain", 0)
    assert S.caption(scene) == "a large red face on the left and a small blue car on the right"
    three = S.insert_object(scene, S.SceneObject("tree", "green", 0.5, 0.5, 0.3))
    assert S.caption(three) == ("a large red face on the left, a small blue car on the right "
                                "and a small green tree in the centre")
    assert S.concept_phrase("house") == "a photo of a house" == S.CONCEPT_PROMPTS["house"]


def test_remove_and_insert_leave_the_rest_identical():
    scene = S.Scene((S.SceneObject("house", "yellow", 0.25, 0.4, 0.4), S.SceneObject("word", "purple", 0.7, 0.7, 0.4)),
                    "indoor", 5)
    masks = S.object_masks(scene)
    removed = S.remove_object(scene, 0)
    assert removed.objects == scene.objects[1:] and removed.seed == scene.seed
    before, after = S.render(scene), S.render(removed)
    assert np.array_equal(before[~masks[0]], after[~masks[0]])
    assert not np.array_equal(before[masks[0]], after[masks[0]])
    restored = S.insert_object(removed, scene.objects[0])
    assert np.array_equal(S.render(restored)[~masks[1]], before[~masks[1]])


def test_scene_round_trips_through_dict_and_rejects_bad_input():
    for scene in _scenes(10, 6):
        assert S.scene_from_dict(S.scene_to_dict(scene)) == scene
    with pytest.raises(MineInputError):
        S.SceneObject("spaceship", "red", 0.5, 0.5, 0.3)
    with pytest.raises(MineInputError):
        S.SceneObject("face", "red", 1.5, 0.5, 0.3)
    with pytest.raises(MineInputError):
        S.remove_object(_scenes(1)[0], 9)
    with pytest.raises(MineInputError):
        S.concept_phrase("spaceship")


# ----------------------------------------------------------------------------------------------- brain

from napari_mine.synthetic import brain as B  # noqa: E402


@pytest.fixture(scope="module")
def brain():
    return B.make_brain(seed=3, n_calibration=200)


def _one(category, color="red", x=0.5, y=0.5, size=0.35, seed=1, background="plain"):
    return S.Scene((S.SceneObject(category, color, x, y, size),), background, seed)


def test_brain_layout_follows_nsd_conventions(brain):
    from scipy import ndimage

    assert brain.mask.sum() == 3000 and not (brain.mask & ~brain.cortex).any()
    assert np.linalg.det(brain.affine[:3, :3]) > 0 and np.abs(brain.affine[:3, 3]).min() > 1
    for file_name, names in B.ROI_FILES.items():
        volume = brain.roi_volumes[file_name]
        assert volume.dtype == np.int16
        assert (volume[~brain.cortex] == -1).all() and (volume[brain.cortex] >= 0).all()
        assert not ((volume > 0) & ~brain.mask).any(), "every ROI lies inside nsdgeneral"
        for k in brain.roi_labels[file_name]:
            assert (volume == k).sum() >= 30
            assert ndimage.label(volume == k)[1] <= 2, "one blob per hemisphere"
    assert brain.anatomy[brain.mask].mean() < brain.anatomy[brain.brainmask & ~brain.cortex].mean()


def test_brain_is_deterministic_by_seed(brain):
    again = B.make_brain(seed=3, n_calibration=200)
    assert np.array_equal(brain.tuning.subpopulation, again.tuning.subpopulation)
    for name in ("category_weights", "prf_x", "noise_sd"):
        assert np.array_equal(getattr(brain.tuning, name), getattr(again.tuning, name), equal_nan=True)
    other = B.make_brain(seed=4, n_calibration=200)
    assert not np.array_equal(brain.tuning.noise_sd, other.tuning.noise_sd)


def test_true_response_depends_on_content_not_on_pixels_or_seed(brain):
    scene = S.Scene((S.SceneObject("face", "blue", 0.3, 0.4, 0.4), S.SceneObject("car", "red", 0.75, 0.6, 0.3)),
                    "outdoor", 1)
    same_content = S.Scene(scene.objects, "outdoor", 999)
    response = B.true_response(brain, [scene, same_content])
    assert response.shape == (2, brain.n_voxels) and response.dtype == np.float32
    assert np.array_equal(response[0], response[1])
    noise = brain.tuning.kind == "noise"
    assert np.ptp(B.true_response(brain, _scenes(20, 8))[:, noise], axis=0).max() < 1e-5


def test_removing_the_face_lowers_face_voxels(brain):
    scene = S.Scene((S.SceneObject("face", "blue", 0.3, 0.4, 0.4), S.SceneObject("car", "red", 0.75, 0.6, 0.3)),
                    "plain", 1)
    before, after = B.true_response(brain, [scene, S.remove_object(scene, 0)])
    ffa = np.isin(brain.tuning.roi, ["FFA-1", "FFA-2"])
    assert (after[ffa] < before[ffa]).all()
    assert np.mean(before[ffa] - after[ffa]) > 0.5
    car = brain.tuning.roi == "car-patch"
    assert np.mean(np.abs(before[car] - after[car])) < 0.2 * np.mean(before[ffa] - after[ffa])


def test_object_drives_name_the_object_that_drives_each_voxel(brain):
    scene = S.Scene((S.SceneObject("face", "blue", 0.25, 0.5, 0.35), S.SceneObject("car", "red", 0.75, 0.5, 0.35)),
                    "plain", 1)
    drives = B.object_drives(brain, [scene])[0]
    assert drives.shape == (2, brain.n_voxels)
    t = brain.tuning
    assert (drives.argmax(0)[np.isin(t.roi, ["FFA-1", "FFA-2", "OFA"])] == 0).all()
    assert (drives.argmax(0)[t.roi == "car-patch"] == 1).all()
    left_prf = t.retinotopic & (t.prf_x < 0.3) & (np.abs(t.prf_y - 0.5) < 0.1)
    assert (drives.argmax(0)[left_prf] == 0).mean() > 0.9


def test_subpopulations_have_their_tuning(brain):
    t = brain.tuning
    colours = list(S.COLORS)
    contrasts = {"left-field": (dict(x=0.25), dict(x=0.75)), "right-field": (dict(x=0.75), dict(x=0.25)),
                 "large": (dict(size=0.48), dict(size=0.24)), "small": (dict(size=0.24), dict(size=0.48))}
    contrasts.update({f"colour:{c}": (dict(color=c), dict(color=colours[(i + 1) % len(colours)]))
                      for i, c in enumerate(colours)})
    checks, pairs = [], []
    for label in np.unique(t.subpopulation[t.subpopulation != ""]):
        for category in np.unique(t.category[t.subpopulation == label]):
            preferred, other = contrasts[label]
            checks.append((label, (t.subpopulation == label) & (t.category == category)))
            pairs += [_one(S.CATEGORIES[category], **preferred), _one(S.CATEGORIES[category], **other)]
    assert {"left-field", "large"} <= {label for label, _ in checks}
    responses = B.true_response(brain, pairs)
    for k, (label, members) in enumerate(checks):
        assert (responses[2 * k, members] > responses[2 * k + 1, members]).all(), label


def test_retinotopic_voxels_respond_to_objects_in_their_prf(brain):
    t = brain.tuning
    left = np.flatnonzero((t.kind == "retinotopic") & (t.prf_x < 0.3) & (np.abs(t.prf_y - 0.5) < 0.15))
    right = np.flatnonzero((t.kind == "retinotopic") & (t.prf_x > 0.7) & (np.abs(t.prf_y - 0.5) < 0.15))
    assert len(left) and len(right)
    on_left, on_right = B.true_response(brain, [_one("house", x=0.25), _one("house", x=0.75)])
    assert (on_left[left] > on_right[left]).mean() > 0.9
    assert (on_right[right] > on_left[right]).mean() > 0.9


def test_measured_betas_add_the_calibrated_noise(brain):
    rng = np.random.default_rng(0)
    sessions = np.repeat([0, 1], 300)
    betas = B.measured_betas(brain, np.zeros((600, brain.n_voxels), np.float32), sessions, rng)
    within = np.concatenate([betas[sessions == s] - betas[sessions == s].mean(0) for s in (0, 1)])
    ratio = within.std(0) / brain.tuning.noise_sd
    assert betas.dtype == np.float32 and 0.9 < np.median(ratio) < 1.1


# ----------------------------------------------------------------------------------------------- NSD writer

import h5py  # noqa: E402
import nibabel as nib  # noqa: E402
import scipy.io  # noqa: E402

from napari_mine.synthetic import write_nsd as W  # noqa: E402

N_IMAGES, N_SHARED, REPEATS, PER_SESSION = 120, 40, 3, 60


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("worlds") / "nsd"
    info = W.write_world(root, seed=5, n_images=N_IMAGES, n_shared=N_SHARED, repeats=REPEATS,
                         trials_per_session=PER_SESSION)
    return root, info


def test_world_writes_the_nsd_layout(world):
    root, info = world
    n_trials = N_IMAGES - N_SHARED + N_SHARED * REPEATS
    assert (info.n_trials, info.n_sessions) == (n_trials, -(-n_trials // PER_SESSION))
    assert sorted(p.name for p in root.parent.iterdir()) == ["nsd"], "no staging folder is left behind"
    sessions = sorted((root / W.BETAS).glob("betas_session*.nii.gz"))
    assert [p.name for p in sessions[:2]] == ["betas_session01.nii.gz", "betas_session02.nii.gz"]
    images = [nib.load(p) for p in sessions]
    assert all(img.get_data_dtype() == np.int16 for img in images)
    assert [img.shape[3] for img in images] == [PER_SESSION] * (len(sessions) - 1) + [n_trials % PER_SESSION]
    assert images[0].shape[:3] == info.shape and np.allclose(images[0].affine, images[-1].affine)
    assert np.allclose(np.abs(np.diag(images[0].affine)[:3]), 1.8)
    first = np.asarray(images[0].dataobj)
    mask = nib.load(root / W.FUNC / "brainmask.nii.gz").get_fdata() > 0
    assert (first[~mask] == 0).all() and np.abs(first[mask]).max() > 0
    assert nib.load(root / W.FUNC / "T1_to_func1pt8mm.nii.gz").shape == info.shape


def test_expdesign_is_one_based_and_consistent(world):
    root, info = world
    design = scipy.io.loadmat(root / W.EXPDESIGN)
    order, subjectim, shared = design["masterordering"], design["subjectim"], design["sharedix"]
    assert order.shape == (1, info.n_trials) and subjectim.shape == (1, N_IMAGES) and shared.shape == (1, N_SHARED)
    assert order.min() == 1 and order.max() == N_IMAGES
    assert sorted(subjectim[0].astype(int)) == list(range(1, N_IMAGES + 1))
    counts = np.bincount(order[0].astype(int) - 1, minlength=N_IMAGES)
    assert (counts[:N_SHARED] == REPEATS).all() and (counts[N_SHARED:] == 1).all()
    assert np.array_equal(np.sort(subjectim[0, :N_SHARED]), shared[0])


def test_stimuli_match_the_ground_truth_scenes(world):
    root, _ = world
    truth = W.load_truth(root)
    with h5py.File(root / W.STIMULI, "r") as f:
        brick = f["imgBrick"]
        assert brick.shape == (N_IMAGES, S.IMAGE_SIZE, S.IMAGE_SIZE, 3) and brick.dtype == np.uint8
        for i in (0, 17, N_IMAGES - 1):
            assert np.array_equal(brick[i], S.render(truth.scenes[i]))
    design = scipy.io.loadmat(root / W.EXPDESIGN)
    assert np.array_equal(truth.subject_images, design["subjectim"][0].astype(int) - 1)
    assert np.array_equal(truth.shared_images + 1, design["sharedix"][0])


def test_roi_volumes_and_label_tables(world):
    root, info = world
    for name in list(B.ROI_FILES) + ["nsdgeneral"]:
        image = nib.load(root / W.FUNC / "roi" / f"{name}.nii.gz")
        volume = np.asarray(image.dataobj)
        assert image.get_data_dtype() == np.int16 and volume.min() == -1
        table = dict(line.split(" ", 1) for line in (root / W.LABELS / f"{name}.mgz.ctab").read_text().splitlines())
        assert table["0"] == "Unknown"
        assert set(np.unique(volume[volume > 0]).astype(str)) == set(table) - {"0"}
    faces = (root / W.LABELS / "floc-faces.mgz.ctab").read_text().splitlines()
    assert faces[1:4] == ["1 OFA", "2 FFA-1", "3 FFA-2"]
    general = np.asarray(nib.load(root / W.FUNC / "roi" / "nsdgeneral.nii.gz").dataobj)
    assert (general == 1).sum() == info.n_voxels


def test_betas_and_ncsnr_carry_the_simulated_signal(world):
    root, info = world
    truth = W.load_truth(root)
    general = np.asarray(nib.load(root / W.FUNC / "roi" / "nsdgeneral.nii.gz").dataobj) == 1
    ncsnr_image = nib.load(root / W.BETAS / "ncsnr.nii.gz")
    assert ncsnr_image.get_data_dtype() == np.float32
    ncsnr = ncsnr_image.get_fdata()[general]
    kind = truth.brain.tuning.kind
    assert 0.5 < np.median(ncsnr[kind == "category"]) < 1.3
    assert np.median(ncsnr[kind == "noise"]) < 0.25
    betas = np.asarray(nib.load(root / W.BETAS / "betas_session01.nii.gz").dataobj)[general].T / W.BETA_SCALE
    design = scipy.io.loadmat(root / W.EXPDESIGN)
    stimuli = truth.subject_images[design["masterordering"][0, :PER_SESSION].astype(int) - 1]
    clean = truth.true_response([truth.scenes[i] for i in stimuli])
    category = kind == "category"
    r = [np.corrcoef(betas[:, v], clean[:, v])[0, 1] for v in np.flatnonzero(category)[::10]]
    assert np.median(r) > 0.4


def test_ground_truth_round_trips(world):
    root, _ = world
    truth = W.load_truth(root)
    fresh = B.make_brain(seed=5)
    assert np.array_equal(truth.brain.mask, fresh.mask)
    assert np.allclose(truth.brain.tuning.noise_sd, fresh.tuning.noise_sd)
    assert np.array_equal(truth.true_response(truth.scenes[:5]), B.true_response(fresh, truth.scenes[:5]))
    summary = (root / "ground_truth" / "subpopulations.json").read_text()
    assert '"FFA-1"' in summary and '"category": "face"' in summary


def test_world_writing_is_atomic(tmp_path, world, monkeypatch):
    root, _ = world
    with pytest.raises(MineInputError):
        W.write_world(root, n_images=N_IMAGES, n_shared=N_SHARED)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(W, "_write_stimuli", interrupted)
    with pytest.raises(KeyboardInterrupt):
        W.write_world(tmp_path / "cut", n_images=N_IMAGES, n_shared=N_SHARED)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(MineInputError):
        W.write_world(tmp_path / "bad", n_images=10, n_shared=10)
    with pytest.raises(MineInputError):
        W.load_truth(tmp_path)


def test_nsd_ncsnr_recovers_a_known_snr():
    rng = np.random.default_rng(0)
    snr = np.array([0.0, 0.5, 1.0, 2.0])
    trials = rng.permutation(np.repeat(np.arange(400), 3))
    betas = (rng.normal(size=(400, 4)) * snr)[trials] + rng.normal(size=(len(trials), 4)) + np.arange(4) * 5
    estimate = W.nsd_ncsnr(betas, trials, np.arange(len(trials)) // 300)
    assert estimate[0] < 0.15 and np.allclose(estimate[1:], snr[1:], rtol=0.15)
