"""A study of several subjects: stimuli decomposed once and shared, subjects fitted serially or on Dask, and
every way of mixing subjects that cannot be compared refused with one message (issue 11)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import scipy.io

from napari_mine.cli import main
from napari_mine.study import Study, StudyManifest
from napari_mine.synthetic.write_nsd import EXPDESIGN

@pytest.fixture
def world(study_world):
    return study_world


@pytest.fixture
def study(fitted_study):
    return fitted_study


def test_each_stimulus_is_decomposed_once_and_shared_by_the_subjects(world, study):
    opened = Study.open(study)
    assert opened.subjects == (1, 2, 3)
    stimuli = opened.stimuli
    counts = opened.summary()["features"]
    ids = [results.image_ids for _, results in opened.items()]
    assert counts["images_decomposed"] == stimuli.n_images == len(np.unique(np.concatenate(ids)))
    assert counts["images_summed_over_subjects"] == sum(map(len, ids)) > counts["images_decomposed"]
    shared = opened.shared_image_ids()
    design = scipy.io.loadmat(world / EXPDESIGN)
    assert set(shared) <= set(design["sharedix"].ravel() - 1) and len(shared) > 0
    for subject, results in opened.items():
        rows = opened.rows_of(subject, shared)
        stimulus_rows = np.searchsorted(stimuli.image_ids, shared)
        np.testing.assert_array_equal(results.features()[rows], stimuli.features()[stimulus_rows])
        np.testing.assert_array_equal(results.tokens(rows[:3]), stimuli.tokens(stimulus_rows[:3]))
        assert results.n_images == len(results.image_ids)
        assert results.target_maps(0).shape[0] == results.n_images


def test_a_study_subject_has_the_features_a_single_subject_run_computes(world, study, tmp_path):
    single = tmp_path / "subj02"
    assert main(["features", str(world), "--subject", "2", "--out", str(single)]) == 0
    from napari_mine.results import Results

    alone, shared = Results.open(single), Study.open(study).results(2)
    np.testing.assert_array_equal(alone.image_ids, shared.image_ids)
    np.testing.assert_allclose(shared.features(), alone.features(), atol=1e-6)
    np.testing.assert_allclose(shared.tokens([0, 5]), alone.tokens([0, 5]), atol=1e-6)


def test_subjects_fitted_on_a_dask_cluster_equal_the_serial_fit(study, tmp_path):
    pytest.importorskip("distributed")
    copy = tmp_path / "study"
    shutil.copytree(study, copy)
    assert main(["fit", str(copy), "--dask", "local"]) == 0
    for (_, serial), (_, parallel) in zip(Study.open(study).items(), Study.open(copy).items()):
        # the same fit; only the BLAS thread count differs (two threads here, one per Dask worker)
        np.testing.assert_allclose(parallel.weights()[0], serial.weights()[0], rtol=1e-4, atol=5e-5)
        np.testing.assert_allclose(parallel.accuracy["r"], serial.accuracy["r"], atol=1e-5)
        np.testing.assert_array_equal(parallel.encoder.alphas, serial.encoder.alphas)


def test_a_rerun_of_the_study_features_does_nothing(world, study, capsys):
    stamp = (study / "stimuli" / "manifest.json").stat().st_mtime_ns
    assert main(["features", str(world), "--subject", "1", "2", "3", "--out", str(study)]) == 0
    assert (study / "stimuli" / "manifest.json").stat().st_mtime_ns == stamp


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1]


def test_a_subject_without_betas_is_named(world, tmp_path, capsys):
    message = _one_line_error(capsys, ["features", str(world), "--subject", "1", "7", "--out", str(tmp_path / "s")])
    assert "subject 7" in message or "subj07" in message


def test_a_subject_with_fewer_sessions_than_asked_is_named(world, tmp_path, capsys):
    sessions = json.loads((world / "ground_truth" / "study.json").read_text())
    counts = {int(k): v for k, v in _sessions_per_subject(sessions).items()}
    fewest = min(counts, key=counts.get)
    asked = max(counts.values())
    assert counts[fewest] < asked
    message = _one_line_error(capsys, ["features", str(world), "--subject", "all", "--sessions", str(asked),
                                       "--out", str(tmp_path / "s")])
    assert f"subj{fewest:02d}" in message and "no beta file" in message
    assert not (tmp_path / "s" / "stimuli").exists()  # nothing decomposed for a study that cannot be made


def _sessions_per_subject(record: dict) -> dict:
    subjects = record["subjects"]
    return {k.replace("subj", ""): v["n_sessions"] for k, v in subjects.items()}


def test_a_shared_image_list_that_does_not_match_the_design_is_refused(world, tmp_path, capsys):
    broken = tmp_path / "world"
    shutil.copytree(world, broken)
    design = scipy.io.loadmat(broken / EXPDESIGN)
    design["sharedix"] = design["sharedix"] + 1_000  # ids no subject saw
    scipy.io.savemat(broken / EXPDESIGN, {k: v for k, v in design.items() if not k.startswith("__")})
    message = _one_line_error(capsys, ["features", str(broken), "--subject", "1", "2", "--out", str(tmp_path / "s")])
    assert "sharedix" in message and "does not match the experiment design" in message


def test_subjects_made_with_another_model_space_or_vocabulary_are_refused(study, tmp_path, capsys):
    copy = tmp_path / "study"
    shutil.copytree(study, copy)
    manifest = json.loads((copy / "subj02" / "manifest.json").read_text())
    manifest["model"]["id"] = "ViT-B-16:other"
    (copy / "subj02" / "manifest.json").write_text(json.dumps(manifest))
    message = _one_line_error(capsys, ["fit", str(copy)])
    assert "subj02" in message and "ViT-B-16:other" in message

    shutil.rmtree(copy)
    shutil.copytree(study, copy)
    record = StudyManifest.read(copy).to_dict()
    record["space"] = "fsaverage"
    (copy / "study.json").write_text(json.dumps(record))
    message = _one_line_error(capsys, ["fit", str(copy)])
    assert "volume results" in message and "fsaverage" in message

    shutil.rmtree(copy)
    shutil.copytree(study, copy)
    vocabulary = tmp_path / "words.txt"
    vocabulary.write_text("face\nhouse\ncar\n")
    assert main(["profile", str(copy / "subj01"), "--vocabulary", str(vocabulary), "--roi", "floc-places"]) == 0
    message = _one_line_error(capsys, ["validate", str(copy)])
    assert "different vocabularies" in message and "subj01" in message and "subj02" in message


@pytest.mark.slow
def test_the_study_demo_runs_end_to_end_and_scores_the_subjects_against_the_truth(tmp_path):
    from napari_mine.demo_study import run_study_demo

    summary = json.loads(run_study_demo(tmp_path / "demo", n_subjects=2, n_images=160, n_voxels=16).read_text())
    section = summary["subjects"]
    assert section["pairs"] == ["subj01-subj02"] and section["images_decomposed"] == 16 + 2 * 144
    assert section["images_summed_over_subjects"] == 2 * 160
    truth = section["truth"]
    assert set(truth["roi_category_accuracy"]) == {"subj01", "subj02"}
    assert all(0 <= value <= 1 for value in truth["roi_category_accuracy"].values())
    assert {"agreement", "recurrence", "recurrence_accuracy", "agreement_mean_abs_difference"} <= set(truth)
    for name in ("subj01", "subj02"):
        subject = json.loads((tmp_path / "demo" / name / "summary.json").read_text())
        assert "removal_sign_accuracy" in subject["validation"] and (tmp_path / "demo" / name / "report.html").is_file()
    assert "Agreement between subjects" in (tmp_path / "demo" / "report.html").read_text()
