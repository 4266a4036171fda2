"""Scores across worlds: per-seed scores aggregated (mean, spread, worst), aims judged on the worst
report-only seed, faithfulness pooled over pairs and worlds, and the CLI resuming a finished evaluation."""

import json
from functools import partial

import numpy as np
import pytest

from napari_mine import cli
from napari_mine import evaluate as E
from napari_mine.errors import MineInputError

ROIS = ("FFA-1", "PPA", "EBA", "VWFA-1")


def summary(level: float, *, lowest_ari: float = 0.9, n_pairs: int = 4) -> dict:
    """A summary.json of one world whose every score moves with ``level``."""
    rng = np.random.default_rng(int(level * 1000))
    faithfulness, pairs = {}, {"row": list(range(n_pairs)), "voxel": list(range(n_pairs)),
                               "spatial_fraction": list(rng.uniform(0.5, 1.0, n_pairs))}
    for method in E.METHODS:
        deletion, insertion = rng.uniform(0.1, 0.3, n_pairs), rng.uniform(0.7, 0.9, n_pairs)
        pairs[method] = {"deletion_auc": list(deletion), "insertion_auc": list(insertion)}
        faithfulness[method] = {"deletion_auc": float(deletion.mean()), "insertion_auc": float(insertion.mean())}
    brain = {"value": level, "mean_delta": -level}
    condition = {"correlation": level, "correlation_within_voxel": level / 2, "mae": 1 - level,
                 "p_correlation": 1e-4, "p_mae": 1e-5}
    return {
        "decomposition_max_rel_error": 5e-7,
        "encoder": {"median_nc_r_by_roi": {roi: level - 0.05 * i for i, roi in enumerate(ROIS)}},
        "attribution": {"pointing_game": level, "faithfulness": faithfulness, "faithfulness_pairs": pairs},
        "description": {"top1_accuracy": level},
        "profile": {"top1_accuracy": level, "baseline_top1_accuracy": level / 2,
                    "roi_category": {roi: "x" for roi in ROIS},
                    "roi_category_correct": {roi: i > 0 or level > 0.9 for i, roi in enumerate(ROIS)}},
        "clusters": {"ari": {"FFA-1": lowest_ari, "PPA": 0.99}, "mean_ari": (lowest_ari + 0.99) / 2},
        "validation": {"removal_sign_accuracy": {"true": brain, "predicted": brain},
                       "insertion_sign_accuracy": {"true": brain, "predicted": brain},
                       "profile_vs_image_insertion_delta_ratio": {"true": {"value": 1 + level / 10}},
                       "sufficiency": {"true": {name: condition for name in ("mine", "random", "low_attribution")}}},
    }


def test_scores_are_aggregated_per_role_and_aims_judged_on_the_worst_report_seed():
    summaries = {0: summary(0.99), 101: summary(0.95), 102: summary(0.85, lowest_ari=0.4), 103: summary(0.92)}
    evaluation = E.aggregate(summaries)
    report = evaluation["scores"]["report"]["attribution/pointing_game"]
    assert report["per_seed"] == {"101": 0.95, "102": 0.85, "103": 0.92}
    assert report["mean"] == pytest.approx(np.mean([0.95, 0.85, 0.92]))
    assert report["std"] == pytest.approx(np.std([0.95, 0.85, 0.92], ddof=1))
    assert (report["min"], report["max"]) == (0.85, 0.95)
    assert evaluation["scores"]["demo"]["attribution/pointing_game"]["per_seed"] == {"0": 0.99}
    aims = {aim["score"]: aim for aim in evaluation["aims"]}
    assert evaluation["judged_on"] == "report"
    assert aims["attribution/pointing_game"]["met"] is False and aims["attribution/pointing_game"]["worst_seed"] == 102
    assert aims["clusters/lowest_ari"]["worst"] == 0.4 and not aims["clusters/lowest_ari"]["met"]
    assert aims["validation/true/profile_vs_image_delta_ratio"]["met"]
    assert aims["profile/roi_category_recovered"]["worst"] == 0.75  # one ROI of four wrong on every report seed
    assert evaluation["lowest_ari_roi"]["102"] == "FFA-1"
    pooled = evaluation["faithfulness_pooled"]
    exact = pooled["exact"]["deletion_auc"]
    low, high = pooled["exact"]["deletion_auc_ci"]
    assert low <= exact <= high
    difference = pooled["exact_minus_integrated_gradients_deletion"]
    assert difference["n_pairs"] == 12 and 0.0 <= difference["ig_lower_fraction"] <= 1.0
    markdown = E.evaluation_markdown(evaluation)
    assert "| attribution/pointing_game | >= 0.9 | 0.850 (102) |" in markdown and "**no**" in markdown


def test_no_seed_is_refused_in_one_sentence(tmp_path):
    with pytest.raises(MineInputError, match="give at least one world seed"):
        E.evaluate(tmp_path, [])


@pytest.mark.slow
def test_cli_evaluates_a_small_world_and_resumes(tmp_path, capsys, monkeypatch):
    from napari_mine import pipeline, validate
    from napari_mine.synthetic import scoring

    # the orchestration is under test, not the scores: run_demo validates and scores a few voxels and pairs (its
    # defaults spend ~100 s there)
    monkeypatch.setattr(pipeline, "validate_step", partial(pipeline.validate_step, n_voxels=16))
    monkeypatch.setattr(validate, "run_validation", partial(validate.run_validation, n_boot=200, n_examples=1))
    monkeypatch.setattr(scoring, "score_interpretation",
                        partial(scoring.score_interpretation, n_voxels=20, n_faithfulness_pairs=4))
    out = tmp_path / "evaluation"
    assert cli.main(["evaluate", "--seeds", "7", "--out", str(out), "--images", "240", "--workers", "1"]) == 0
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["seeds"] == [7] and evaluation["judged_on"] == "all"
    pointing = evaluation["scores"]["all"]["attribution/pointing_game"]
    assert set(pointing["per_seed"]) == {"7"} and 0.0 <= pointing["min"] <= 1.0
    assert (out / "evaluation.md").read_text().startswith("# Scores across synthetic worlds")
    stamp = (out / "seed_7" / "summary.json").stat().st_mtime_ns
    capsys.readouterr()
    assert cli.main(["evaluate", "--seeds", "7", "--out", str(out), "--workers", "1"]) == 0
    assert "1 of 1 seeds already complete" in capsys.readouterr().out
    assert (out / "seed_7" / "summary.json").stat().st_mtime_ns == stamp
