"""Cross-subject comparison of a study (DESIGN.md §10): agreement, recurrence, description consistency, the
vertex map, the scores against a synthetic study world and the study report.

The shared three-subject study (conftest `fitted_study`: the CLI's features, fit and profile with the place
ROIs, which compares the subjects) is read; a copy replaces subject 2 by a copy of subject 1, whose answers
are known exactly.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from napari_mine import across_subjects as A
from napari_mine.errors import MineInputError
from napari_mine.spaces import SurfaceLayout, SurfaceSpace

N_BOOT = 200


@pytest.fixture(scope="module")
def study(fitted_study):
    """(study root, concept space, its "subjects" section) of the shared three-subject study (conftest), whose
    `profile` analysed the place ROIs and compared the subjects."""
    from napari_mine.study import Study

    opened = Study.open(fitted_study)
    return fitted_study, opened.results(1).concept_space("synthetic"), opened.summary()["subjects"]


@pytest.fixture(scope="module")
def copied(study, tmp_path_factory):
    """The study's first two subjects, subject 2 replaced by a copy of subject 1, and their section (not scored:
    the truth's subject 2 is not the copy)."""
    root, space, _ = study
    copy = tmp_path_factory.mktemp("copied") / "study"
    shutil.copytree(root, copy)
    shutil.rmtree(copy / "subj02")
    shutil.copytree(copy / "subj01", copy / "subj02")
    record = json.loads((copy / "study.json").read_text())
    record["subjects"] = {"1": "subj01", "2": "subj02"}  # the pair whose answers are known
    (copy / "study.json").write_text(json.dumps(record))
    return copy, A.compare_subjects(copy, space, n_boot=N_BOOT, score=False)


def test_copied_subject_agrees_and_every_cluster_recurs(copied):
    _, section = copied
    for label in section["rois"]:
        value = section["agreement"][label]["subj01-subj02"]
        assert value["rho"] == pytest.approx(1.0)
        assert -1 <= value["ci"][0] <= value["ci"][1] <= 1
        recurrence = section["recurrence"][label]["subj01-subj02"]
        assert recurrence["recurs"] and recurrence["k"][0] == recurrence["k"][1]
        assert all(a == b and r == pytest.approx(1.0) for a, b, r in recurrence["matches"])
        assert section["description_consistency"][label] == 1.0
    assert section["mean_agreement"] == pytest.approx(1.0) and section["recurrence_rate"] == 1.0


def test_shuffled_concepts_disagree(study):
    """One subject's concepts shuffled (its profile columns permuted) no longer ranks them as the other does."""
    root, space, _ = study
    from napari_mine.study import Study

    opened = Study.open(root)
    results = opened.results(1)
    targets = np.flatnonzero(results.saved_clusters()["PPA"] > 0)
    rows = opened.rows_of(1, opened.shared_image_ids())
    scores = A.shared_profiles(results, space, rows, targets).scores.astype(float)
    shuffled = scores[:, np.random.default_rng(3).permutation(scores.shape[1])]
    assert A.profile_agreement(scores, scores, n_boot=N_BOOT).rho == pytest.approx(1.0)
    disagreement = A.profile_agreement(scores, shuffled, n_boot=N_BOOT)
    assert abs(disagreement.rho) < 0.5 and disagreement.ci[1] < 0.8


def test_ci_contains_the_estimate_and_narrows_with_more_targets():
    rng = np.random.default_rng(0)
    profile_a, profile_b = rng.gamma(1.0, 1.0, 19), rng.gamma(1.0, 1.0, 19)
    widths = []
    for n in (30, 600):
        a = profile_a + rng.normal(0, 2.0, (n, 19))
        b = profile_a + 0.5 * profile_b + rng.normal(0, 2.0, (n + 5, 19))
        result = A.profile_agreement(a, b, n_boot=N_BOOT, seed=1)
        assert result.ci[0] <= result.rho <= result.ci[1]
        assert A.profile_agreement(a, b, n_boot=N_BOOT, seed=1) == result  # seeded
        widths.append(result.ci[1] - result.ci[0])
    assert widths[1] < widths[0] / 2


def test_pair_consistency_and_cluster_matching():
    tops = np.array([["face", "face", "house"], ["face", "body", "house"], ["face", "body", "car"]], dtype=object)
    assert A.pair_consistency(tops).tolist() == pytest.approx([1.0, 1 / 3, 1 / 3])
    deviations = np.array([[1.0, -1.0, 0.0, 0.5], [-1.0, 1.0, 0.2, -0.5]])
    assert [(a, b) for a, b, _ in A.match_clusters(deviations, deviations[::-1])] == [(1, 2), (2, 1)]
    unrelated = A.recurrence(deviations, np.array([[0.0, 0.0, 1.0, -1.0], [0.0, 0.0, -1.0, 1.0]]))
    assert not unrelated["recurs"]


def test_summary_section_and_files(study):
    root, _, section = study
    summary = json.loads((root / "summary.json").read_text())
    assert summary["subjects"] == json.loads(json.dumps(section))
    assert section["images_decomposed"] == summary["features"]["images_decomposed"]
    assert section["images_summed_over_subjects"] == summary["features"]["images_summed_over_subjects"]
    assert section["images_decomposed"] < section["images_summed_over_subjects"]
    assert section["n_shared_images"] == 40
    assert section["pairs"] == ["subj01-subj02", "subj01-subj03", "subj02-subj03"]
    assert set(section["rois"]) <= {"OPA", "PPA", "RSC"} and section["rois"]
    saved = A.read_roi_profiles(root)
    assert set(saved["profiles"]) == set(section["rois"])
    assert all(len(values) == len(saved["concepts"]) for by in saved["profiles"].values() for values in by.values())
    descriptions = json.loads((root / A.FOLDER / A.DESCRIPTIONS_FILE).read_text())
    assert all(len(descriptions[label]["image_ids"]) == A.N_DESCRIBED_IMAGES for label in section["rois"])


def test_scores_against_the_world(study):
    from napari_mine.study import Study
    from napari_mine.synthetic.study_truth import true_profile_agreement
    from napari_mine.synthetic.truth import load_truth

    root, _, section = study
    truth = section["truth"]
    assert set(truth["roi_category_accuracy"]) == {"subj01", "subj02", "subj03"}
    assert all(found == "house" for by in truth["roi_category"].values() for found in by.values())
    world = Study.open(root).results(1).manifest.world_root
    label = section["rois"][0]
    assert truth["agreement"][label]["subj01-subj02"]["true"] == pytest.approx(
        true_profile_agreement(load_truth(world, 1), load_truth(world, 2), label))
    assert 0 <= truth["recurrence_accuracy"] <= 1 and truth["recurrence"]
    assert truth["agreement_mean_abs_difference"] is not None


def test_study_report(study):
    root, _, section = study
    page = (root / "report.html").read_text()  # written by `napari-mine profile STUDY`
    assert "Agreement between subjects" in page and "Recurring sub-populations" in page
    assert all(f"<td>{label}</td>" in page for label in section["rois"])
    assert (root / "figures" / "subjects_agreement.png").is_file()
    assert (root / "figures" / "subjects_roi_profiles.png").is_file()


def test_refuses_labels_not_analysed(study):
    root, space, _ = study
    with pytest.raises(MineInputError, match="FFA-1"):
        A.compare_subjects(root, space, labels=["FFA-1"])


def test_vertex_agreement_map(tmp_path):
    """Two subjects on one surface: agreement 1 where their vertex profiles are the same, NaN off either mask."""
    from napari_mine.describe import VoxelProfiles

    import nibabel as nib

    layout = SurfaceLayout("fsaverage5", {"lh": 6, "rh": 4})
    masks = [np.array([1, 1, 1, 1, 0, 1, 1, 1, 0, 1], bool), np.array([0, 1, 1, 1, 1, 1, 1, 1, 1, 1], bool)]
    spaces = [SurfaceSpace(mask, {}, layout) for mask in masks]
    rng = np.random.default_rng(0)
    on_vertices = rng.random((10, 5))
    profiles = []
    for space in spaces:
        scores = on_vertices[space.mask]
        profiles.append(VoxelProfiles(tuple("abcde"), scores, scores, np.zeros((1, len(scores)), int),
                                      np.ones(len(scores)), np.arange(len(scores))))
    values = A.vertex_agreement(spaces, profiles)
    both = masks[0] & masks[1]
    assert values.shape == (10,) and np.all(np.isnan(values[~both])) and np.allclose(values[both], 1.0)
    path = A.save_vertex_map(values, tmp_path / A.VERTEX_MAP_FILE)
    assert np.allclose(np.asarray(nib.load(path).dataobj).ravel(), values, equal_nan=True)
