"""The cross-subject comparison of a study scored against its synthetic world's truth (DESIGN.md §6, §10).

:func:`napari_mine.across_subjects.compare_subjects` estimates, per ROI label, each subject's profile, the
agreement of every pair of subjects and whether the ROI's sub-populations recur; a study made from a world
written with ``write_world(..., n_subjects=N)`` knows the answers (:mod:`.study_truth`):

* **ROI category recovery**, per subject: the best category concept of each category ROI's profile
  (:func:`.scoring.best_categories`) against the ROI's true category.
* **Agreement**, per ROI × pair: the estimated Spearman ρ restricted to the category concepts (the truth's
  profile is over categories only) beside :func:`.study_truth.true_profile_agreement`; summarised by their
  mean absolute difference and their correlation over ROI × pair.
* **Recurrence**, per ROI × pair with sub-populations: the estimated recurrence beside
  :func:`.study_truth.true_recurrence`; summarised by the accuracy over ROI × pair.

Each subject's truth is found from its results: ``results.manifest.world_root`` and the source's ``subject``.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from napari_mine.errors import MineInputError

from . import scenes as S
from .scoring import CATEGORY_GROUP, CATEGORY_ROIS, best_categories
from .study_truth import true_profile_agreement, true_recurrence, true_subpopulations
from .truth import STUDY_FILE, TRUTH_DIR, load_truth


def study_world(study) -> Path | None:
    """The synthetic study world every subject of ``study`` was computed from, else None (real data, or
    subjects copied from a one-subject world, whose truth knows one subject only)."""
    roots = {results.manifest.world_root for _, results in study.items()}
    if len(roots) != 1 or None in roots:
        return None
    root = roots.pop()
    return root if (root / TRUTH_DIR / STUDY_FILE).is_file() else None


def score_study(study, section: dict, profiles: dict, space) -> dict:
    """Score a comparison against the truth (see the module).

    Parameters
    ----------
    study : Study
        Made from a synthetic study world (:func:`study_world`).
    section : dict
        The comparison's ``"subjects"`` section (its subjects, pairs, ROI labels and recurrence).
    profiles : dict
        ``{ROI label: {subject folder: (K,) ROI profile}}`` in ``space``'s concepts.
    space : ConceptSpace
        The vocabulary the profiles are in; it needs a "category" group.

    Returns
    -------
    dict with keys "roi_category", "roi_category_correct", "roi_category_accuracy", "agreement",
    "agreement_mean_abs_difference", "agreement_correlation", "recurrence", "recurrence_accuracy"
    """
    world = study_world(study)
    if world is None:
        raise MineInputError(f"{study.root} was not computed from a synthetic study world, so it has no truth to be "
                             "scored against; write one with `write_world(..., n_subjects=N)`.")
    columns = np.flatnonzero(np.asarray(space.vocabulary.groups) == CATEGORY_GROUP)
    if columns.size < 3:
        raise MineInputError(f"the {space.vocabulary.name!r} vocabulary has no category concepts to score against the "
                             "world's categories; compare the subjects in the synthetic vocabulary.")
    truths = {subject_name(study, subject): load_truth(world, subject=int(results.manifest.source["subject"]))
              for subject, results in study.items()}
    labels = [label for label in section["rois"] if label in CATEGORY_ROIS]
    pairs = dict(zip(section["pairs"], itertools.combinations(section["subjects"], 2)))
    recovered = {name: {label: str(best_categories(profiles[label][name], space)[0]) for label in labels}
                 for name in section["subjects"]}
    correct = {name: {label: found == true_category(truths[name], label) for label, found in by_label.items()}
               for name, by_label in recovered.items()}
    agreement, recurrence = {}, {}
    for label in labels:
        agreement[label] = {pair: {"estimated": _spearman(profiles[label][a][columns], profiles[label][b][columns]),
                                   "true": true_profile_agreement(truths[a], truths[b], label)}
                            for pair, (a, b) in pairs.items()}
        if all(true_subpopulations(truths[name], label) for name in section["subjects"]):
            recurrence[label] = {pair: {"estimated": section["recurrence"][label][pair]["recurs"],
                                        "true": true_recurrence(truths[a], truths[b], label)}
                                 for pair, (a, b) in pairs.items()}
    estimated, true = (np.array([[v[key] for by_pair in agreement.values() for v in by_pair.values()]], float)[0]
                       for key in ("estimated", "true"))
    both = np.isfinite(estimated) & np.isfinite(true)
    outcomes = [v["estimated"] == v["true"] for by_pair in recurrence.values() for v in by_pair.values()]
    return {
        "roi_category": recovered,
        "roi_category_correct": correct,
        "roi_category_accuracy": {name: _fraction(by_label.values()) for name, by_label in correct.items()},
        "agreement": agreement,
        "agreement_mean_abs_difference": float(np.abs(estimated[both] - true[both]).mean()) if both.any() else None,
        "agreement_correlation": _correlation(estimated[both], true[both]),
        "recurrence": recurrence,
        "recurrence_accuracy": _fraction(outcomes),
    }


def subject_name(study, subject: int) -> str:
    return study.manifest.subjects[subject]


def true_category(truth, label: str) -> str:
    """The category an ROI label's category targets prefer in the truth."""
    tuning = truth.brain.tuning
    members = (tuning.roi == label) & (tuning.kind == "category")
    if not members.any():
        raise MineInputError(f"{label!r} has no category voxels in the truth; score category ROI labels such as FFA-1.")
    return S.CATEGORIES[int(tuning.category[members][0])]


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")  # a constant profile has no ranking
    return float(spearmanr(a, b)[0])


def _correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson r over ROI × pair; None when either side does not vary (e.g. every true agreement is 1)."""
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def _fraction(values) -> float | None:
    values = [bool(v) for v in values]
    return float(np.mean(values)) if values else None
