"""A synthetic study of several subjects in the NSD layout: every subject reads back through the real loaders,
the shared images are shared and the others each subject's own, subjects differ as recorded, and the
cross-subject truth (profile agreement, sub-population recurrence) answers sensibly. A one-subject world is
written exactly as before studies existed."""

import hashlib
from itertools import combinations
from types import SimpleNamespace

import h5py
import nibabel as nib
import numpy as np
import pytest
import scipy.io

from napari_mine.data import load_nsd, load_nsd_surface
from napari_mine.data.nsd import read_expdesign
from napari_mine.errors import MineInputError
from napari_mine.synthetic import scenes as S
from napari_mine.synthetic import study_truth as T
from napari_mine.synthetic import write_nsd as W
from napari_mine.synthetic.brain import CATEGORY_OF_ROI, subpopulation_kind
from napari_mine.synthetic.study import SUBPOPULATION_ROIS
from napari_mine.synthetic.truth import load_study_truth, load_truth

N_SUBJECTS, N_IMAGES, N_SHARED, REPEATS, PER_SESSION = 3, 160, 40, 3, 50
N_STIMULI = N_SHARED + N_SUBJECTS * (N_IMAGES - N_SHARED)
# Digest of a small one-subject world written before studies existed (decoded contents of every file).
ONE_SUBJECT = dict(seed=1, n_images=60, n_shared=10, trials_per_session=40, brain_shape=(30, 36, 30), n_general=2300)
ONE_SUBJECT_DIGEST = "17377c25b848350919fe5ff4adddc604a31775ca035e559ad498fb5f55f1e23c"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study") / "world"
    info = W.write_world(root, seed=0, n_images=N_IMAGES, n_shared=N_SHARED, repeats=REPEATS,
                         trials_per_session=PER_SESSION, brain_shape=(32, 40, 32), n_general=2400,
                         n_subjects=N_SUBJECTS, space="fsaverage")
    return root, info, load_study_truth(root)


def test_every_subject_loads_through_the_nsd_loader(study):
    root, info, truth = study
    design = read_expdesign(root / W.EXPDESIGN)
    subjectim, shared = design["subjectim"] - 1, design["sharedix"] - 1
    assert subjectim.shape == (N_SUBJECTS, N_IMAGES) and len(shared) == N_SHARED
    assert (subjectim[:, :N_SHARED] == subjectim[0, :N_SHARED]).all(), "the shared images lead every row"
    assert np.array_equal(np.sort(subjectim[0, :N_SHARED]), shared)
    own = [set(row[N_SHARED:]) for row in subjectim]
    assert all(not a & b for a, b in combinations(own, 2)) and not set(shared) & set().union(*own)
    with h5py.File(root / W.STIMULI, "r") as f:
        assert f["imgBrick"].shape[0] == N_STIMULI == info.n_stimuli
        assert np.array_equal(f["imgBrick"][int(shared[0])], S.render(truth.subjects[0].scenes[int(shared[0])]))
    for k, subject in enumerate(info.subjects, start=1):
        dataset = load_nsd(root, subject=k)
        assert dataset.source["sessions"] == list(range(1, subject.n_sessions + 1))
        assert dataset.responses.shape == (subject.n_trials, subject.n_voxels)
        assert dataset.mask.shape == subject.shape and len(dataset.images.ids) == subject.n_images_shown
        assert np.array_equal(dataset.images.ids[dataset.test_images], shared), "every subject sees every shared image"
        assert set(dataset.images.ids) <= set(subjectim[k - 1])
        subject_truth = load_truth(root, subject=k)
        assert np.array_equal(subject_truth.brain.mask, dataset.mask)
        assert np.array_equal(subject_truth.subject_images, subjectim[k - 1])
    sessions = [subject.n_sessions for subject in info.subjects]
    assert len(set(sessions)) > 1 and max(sessions) == -(-(N_IMAGES - N_SHARED + N_SHARED * REPEATS) // PER_SESSION)
    assert info.subjects[-1].n_images_shown < N_IMAGES, "fewer sessions, fewer of its own images"
    assert len({subject.shape for subject in info.subjects}) == N_SUBJECTS
    assert [truth.record["subjects"][f"subj{k:02d}"]["n_sessions"] for k in (1, 2, 3)] == sessions


def test_every_subject_loads_on_fsaverage_with_the_shared_labels(study):
    root, info, truth = study
    masks = []
    for k, subject in enumerate(info.subjects, start=1):
        dataset = load_nsd_surface(root, subject=k)
        assert int(dataset.mask.sum()) == subject.n_vertices == subject.n_voxels
        assert int(dataset.n_repeats.sum()) == subject.n_trials
        on_sites = truth.subjects[k - 1].for_space(SimpleNamespace(kind="surface", mask=dataset.mask))
        assert on_sites.brain.n_voxels == subject.n_vertices
        masks.append(dataset.mask)
    assert all(np.array_equal(masks[0], mask) for mask in masks[1:])
    assert (root / "nsddata_betas/ppdata/subj03/fsaverage/betas_fithrf_GLMdenoise_RR/lh.ncsnr.mgh").is_file()


@pytest.mark.parametrize("seed", [0, 5])
def test_a_study_on_fsaverage_at_the_default_sizes(tmp_path, seed):
    """The demo's study (three subjects at the default grid and n_general): every subject's jittered grid and
    anchors still lay its ROIs out on the shared fsaverage labels' vertices."""
    root = tmp_path / "world"
    info = W.write_world(root, seed=seed, n_images=12, n_shared=4, n_subjects=3, space="fsaverage")
    assert len({subject.shape for subject in info.subjects}) == 3
    ref = load_nsd_surface(root, subject=1)
    truth = load_study_truth(root)
    sizes = None
    for k, subject in enumerate(info.subjects, start=1):
        dataset = ref if k == 1 else load_nsd_surface(root, subject=k)
        assert np.array_equal(dataset.mask, ref.mask) and int(dataset.mask.sum()) == subject.n_vertices == 3000
        assert dataset.rois.keys() == ref.rois.keys()
        assert all(np.array_equal(dataset.rois[name].volume, ref.rois[name].volume) for name in ref.rois)
        names, counts = np.unique(truth.subjects[k - 1].brain.tuning.roi, return_counts=True)
        sizes = sizes or dict(zip(names, counts))
        assert dict(zip(names, counts)) == sizes, "every subject's ROIs have the same voxel counts"


def test_the_study_record_is_the_subjects_truth(study):
    root, _, truth = study
    record = truth.record
    assert len(truth.subjects) == record["n_subjects"] == N_SUBJECTS and record["n_stimuli"] == N_STIMULI
    assert all(subject.scenes is truth.subjects[0].scenes for subject in truth.subjects)
    for k, subject in enumerate(truth.subjects, start=1):
        recorded = record["subjects"][f"subj{k:02d}"]["subpopulations"]
        for roi in SUBPOPULATION_ROIS:
            labels = T.true_subpopulations(subject, roi)
            assert labels == tuple(sorted(recorded[roi]["labels"]))
            assert subpopulation_kind(labels[0]) == recorded[roi]["kind"]
            tuning = subject.brain.tuning
            members = (tuning.roi == roi) & (tuning.kind == "category")
            first = np.mean(tuning.subpopulation[members] == recorded[roi]["labels"][0])
            assert abs(first - recorded[roi]["split"]) < 0.1
    kept = [entry["kept_study_kind"] for subject in record["subjects"].values()
            for entry in subject["subpopulations"].values()]
    assert 0.5 < np.mean(kept) < 1.0
    with pytest.raises(MineInputError, match="subjects 1 to 3"):
        load_truth(root, subject=4)


def test_cross_subject_truth(study):
    _, _, truth = study
    a, b, c = truth.subjects
    recurs = [T.true_recurrence(a, b, roi) for roi in SUBPOPULATION_ROIS]
    assert any(recurs) and not all(recurs), "some ROI sub-populations recur and some do not"
    assert all(T.true_recurrence(a, a, roi) for roi in SUBPOPULATION_ROIS)
    agreements = [T.true_profile_agreement(x, y, roi) for x, y in combinations(truth.subjects, 2)
                  for roi in SUBPOPULATION_ROIS]
    assert np.median(agreements) > 0.75 and min(agreements) > 0.3 and np.mean(agreements) < 0.99
    assert T.true_profile_agreement(c, c, "FFA-1") == pytest.approx(1.0)
    for roi in SUBPOPULATION_ROIS:
        profile = T.true_category_profile(b, roi)
        assert profile.shape == (len(S.CATEGORIES),) and S.CATEGORIES[profile.argmax()] == CATEGORY_OF_ROI[roi]
    with pytest.raises(MineInputError, match="no sub-populations"):
        T.true_recurrence(a, b, "food-patch")
    with pytest.raises(MineInputError, match="no category voxels"):
        T.true_category_profile(a, "V1v")


def _digest(root) -> str:
    """sha256 over the decoded contents of every file (gzip, zip and .mat headers carry the time of writing)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        if path.name.endswith((".nii.gz", ".mgh", ".mgz")):
            image = nib.load(path)
            parts = [np.asarray(image.dataobj), image.affine]
        elif path.suffix == ".hdf5":
            with h5py.File(path, "r") as f:
                parts = [f["imgBrick"][()]]
        elif path.suffix == ".mat":
            contents = scipy.io.loadmat(path)
            parts = [contents[key] for key in sorted(contents) if not key.startswith("__")]
        elif path.suffix == ".npz":
            with np.load(path) as contents:
                parts = [contents[key] for key in sorted(contents.files)]
        else:
            parts = [np.frombuffer(path.read_bytes(), np.uint8)]
        for part in parts:
            digest.update(np.ascontiguousarray(part).tobytes())
    return digest.hexdigest()


def test_a_one_subject_world_is_written_as_before(tmp_path):
    root = tmp_path / "one"
    info = W.write_world(root, n_subjects=1, **ONE_SUBJECT)
    assert _digest(root) == ONE_SUBJECT_DIGEST
    assert info.n_subjects == 1 and len(info.subjects) == 1 and info.n_stimuli == ONE_SUBJECT["n_images"]
    assert not (root / "ground_truth" / "study.json").exists()
    assert np.array_equal(load_truth(root, subject=1).subject_images, load_truth(root).subject_images)
    with pytest.raises(MineInputError, match="one subject"):
        load_truth(root, subject=2)
    with pytest.raises(MineInputError, match="one subject"):
        load_study_truth(root)


def test_bad_study_requests(tmp_path):
    for n_subjects in (0, 100, 2.5):
        with pytest.raises(MineInputError, match="n_subjects"):
            W.write_world(tmp_path / "bad", n_images=N_IMAGES, n_shared=N_SHARED, n_subjects=n_subjects)
    assert list(tmp_path.iterdir()) == []


def test_cli_world_takes_the_subjects():
    from napari_mine.cli import build_parser

    assert build_parser().parse_args(["world", "out", "--subjects", "4"]).subjects == 4
    assert build_parser().parse_args(["world", "out"]).subjects == 1
