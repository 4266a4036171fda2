"""Cross-subject ground truth of a study (DESIGN.md §10): does an ROI's profile agree between two subjects, and
do its sub-populations recur?

Scores of the cross-subject questions call these for every ROI label × subject pair, so they stay cheap: the
canonical scenes are tabulated once and only the ROI's voxels are evaluated.
"""

from __future__ import annotations

from dataclasses import fields, replace
from functools import lru_cache

import numpy as np
from scipy.stats import spearmanr

from ..errors import MineInputError
from . import scenes as S
from .brain import SceneContent, VoxelTuning, content_response, scene_content
from .truth import WorldTruth

CANONICAL_X = (0.3, 0.5, 0.7)  # left, centre, right
CANONICAL_SIZES = (0.25, 0.45)  # small, large
CANONICAL_BACKGROUND, CANONICAL_SEED = "plain", 0


@lru_cache(maxsize=1)
def canonical_scenes() -> tuple[S.Scene, ...]:
    """One object per scene on a plain background: every category in every colour, position and size (a fixed,
    balanced grid, so a profile averages each category over the same attributes)."""
    return tuple(S.Scene((S.SceneObject(category, color, x, 0.5, size),), CANONICAL_BACKGROUND, CANONICAL_SEED)
                 for category in S.CATEGORIES for color in S.COLORS for x in CANONICAL_X for size in CANONICAL_SIZES)


@lru_cache(maxsize=1)
def _canonical_content() -> SceneContent:
    return scene_content(list(canonical_scenes()))


def true_category_profile(truth: WorldTruth, roi_label: str) -> np.ndarray:
    """The ideal profile of an ROI over the category concepts: the mean true response of its category voxels to
    the canonical scenes of each category.

    Parameters
    ----------
    truth : WorldTruth
        One subject's truth (on voxels or, through ``for_space``, on vertices).
    roi_label : str
        A category ROI label such as ``"FFA-1"``.

    Returns
    -------
    float array (len(scenes.CATEGORIES),), in ``scenes.CATEGORIES`` order.
    """
    tuning = truth.brain.tuning
    members = _category_voxels(tuning, roi_label)
    roi_brain = replace(truth.brain, tuning=VoxelTuning(**{f.name: getattr(tuning, f.name)[members]
                                                            for f in fields(VoxelTuning)}))
    response = content_response(roi_brain, _canonical_content()).mean(1)
    return response.reshape(len(S.CATEGORIES), -1).mean(1)


def true_profile_agreement(truth_a: WorldTruth, truth_b: WorldTruth, roi_label: str) -> float:
    """Spearman ρ of two subjects' true category profiles of an ROI (1: the same ranking of the categories)."""
    rho = spearmanr(true_category_profile(truth_a, roi_label), true_category_profile(truth_b, roi_label))[0]
    return float(rho)


def true_subpopulations(truth: WorldTruth, roi_label: str) -> tuple[str, ...]:
    """The sub-population labels of an ROI's voxels, sorted (e.g. ``("colour:blue", "colour:red")``); empty for
    a category patch, which has none."""
    tuning = truth.brain.tuning
    members = _category_voxels(tuning, roi_label)
    return tuple(sorted(str(label) for label in set(tuning.subpopulation[members]) - {""}))


def true_recurrence(truth_a: WorldTruth, truth_b: WorldTruth, roi_label: str) -> bool:
    """Whether an ROI's sub-populations recur in two subjects: the same kind and, for colour, the same pair."""
    labels_a, labels_b = true_subpopulations(truth_a, roi_label), true_subpopulations(truth_b, roi_label)
    if not labels_a or not labels_b:
        raise MineInputError(f"{roi_label} has no sub-populations to recur; ask about a floc ROI label such as FFA-1.")
    return labels_a == labels_b


def _category_voxels(tuning: VoxelTuning, roi_label: str) -> np.ndarray:
    members = np.flatnonzero((tuning.roi == roi_label) & (tuning.kind == "category"))
    if len(members) == 0:
        raise MineInputError(f"{roi_label!r} has no category voxels in this truth; give a category ROI label such "
                             "as FFA-1, PPA or VWFA-1.")
    return members
