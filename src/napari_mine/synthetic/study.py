"""A study of several simulated subjects, as NSD has (DESIGN.md §10): what they share and what sets them apart.

All subjects see the same shared test images, in the same columns of ``subjectim`` and one ``masterordering``,
and each also sees images of its own; some subjects complete fewer sessions (NSD's 40/40/32/30/40/32/40/30),
so they see fewer of their own images, but every shared image is shown at least once in the sessions all of
them complete. The ROI categories are common to all subjects; each subject has its own grid shape, ROI placement,
sub-population splits and cross-category weights. A category ROI's sub-population kind is drawn once for the
study and each subject keeps it with probability ``KEEP_PROBABILITY`` (else it has another kind), so some ROI
sub-populations recur across subjects and some do not. Each category region's secondary (cross-category)
weights are drawn once for the study too — the ``_RELATED`` ones plus weak ones on the other categories, so an
ROI's profile ranks all categories rather than tying the unrelated ones — and jittered per subject, so two
subjects' true profiles agree strongly but not perfectly. Every subject's ROIs reach their full size and its
nsdgeneral holds ``n_general`` voxels, so on fsaverage all subjects lay out on the same vertices and share NSD's
one set of fsaverage label files.

Every draw comes from the study's or the subject's own random streams (``[seed, 0, …]`` for the study,
``[seed, subject, …]`` for a subject), never from a one-subject world's, so writing one subject is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import MineInputError
from . import scenes as S
from .brain import (_ANCHORS, CATEGORY_OF_ROI, FLOC_CATEGORY, ROI_FILES, SUBPOPULATION_KINDS, SubjectTraits,
                    related_weights, subpopulation_kind, subpopulation_pair)

NSD_SESSIONS = (40, 40, 32, 30, 40, 32, 40, 30)  # sessions each NSD subject completed, out of 40
KEEP_PROBABILITY = 0.75  # a subject keeps the study's sub-population kind of an ROI
SPLIT_RANGE = (0.3, 0.7)  # fraction of an ROI's voxels in its first sub-population
ANCHOR_JITTER = 0.05  # sd of each ROI anchor's direction components
MIN_LATERAL = 0.08  # anchors stay off the midline, so each hemisphere keeps its own patch
SECONDARY_SPREAD = 0.15  # the study's weak weights on a region's unrelated categories lie in [0, this)
SECONDARY_JITTER = 0.3  # sd of a subject's log factor on each secondary weight
SHAPE_JITTER = 2  # voxels per axis a subject's grid differs from the base shape, at most
SUBPOPULATION_ROIS = tuple(name for roi_file in FLOC_CATEGORY for name in ROI_FILES[roi_file])
MAX_SUBJECTS = 99  # subjNN folders


@dataclass
class StudyDesign:
    """Stimulus ids of every subject's images and the one trial sequence of the study (all 0-based)."""

    subject_images: np.ndarray  # (n_subjects, n_images): stimulus of each subject image column
    n_shared: int  # the first n_shared columns are the shared images, the same in every row
    trial_columns: np.ndarray  # (n_design_trials,) subject image column shown on each design trial
    sessions: np.ndarray  # (n_design_trials,) 0-based session of each design trial
    n_sessions: np.ndarray  # (n_subjects,) sessions each subject completed

    def trials(self, subject: int) -> np.ndarray:
        """The design trials subject ``subject`` (1-based) saw: those of its sessions."""
        return np.flatnonzero(self.sessions < self.n_sessions[subject - 1])


def session_counts(n_subjects: int, n_design_sessions: int) -> np.ndarray:
    """Sessions each subject completes: NSD's pattern (cycled) scaled to the design's sessions, at least one."""
    pattern = np.resize(NSD_SESSIONS, n_subjects)
    return np.maximum(n_design_sessions * pattern // max(NSD_SESSIONS), 1)


def check_study(n_subjects) -> None:
    """Refuse a study whose subjects cannot be named subj01..subj99 (NSD's folders, and the loaders')."""
    if not isinstance(n_subjects, (int, np.integer)) or not 1 <= n_subjects <= MAX_SUBJECTS:
        raise MineInputError(f"n_subjects={n_subjects!r} must be a whole number from 1 to {MAX_SUBJECTS} "
                             "(subjects are written to folders subj01..subj99).")


def make_study_design(rng, n_subjects, n_images, n_shared, repeats, trials_per_session) -> StudyDesign:
    """Draw the stimulus ids (shared ones first in every row, then each subject's own) and the trial sequence.

    Each shared image's first showing is moved, if need be, into the sessions every subject completes, by a swap
    with a trial there that is no shared image's first showing (so every count stays as it was). There is always
    room: the shortest subject completes at least half the sessions, and with ``repeats >= 2`` the shared images'
    first showings are at most half the trials.
    """
    stimuli = rng.permutation(n_shared + n_subjects * (n_images - n_shared))
    own = stimuli[n_shared:].reshape(n_subjects, n_images - n_shared)
    subject_images = np.column_stack([np.broadcast_to(stimuli[:n_shared], (n_subjects, n_shared)), own])
    columns = np.concatenate([np.arange(n_shared, n_images), np.repeat(np.arange(n_shared), repeats)])
    trial_columns = rng.permutation(columns)
    sessions = np.arange(len(trial_columns)) // trials_per_session
    n_sessions = session_counts(n_subjects, int(sessions.max()) + 1)
    seen_by_all = int((sessions < n_sessions.min()).sum())  # the first trials, which every subject sees
    _, first = np.unique(trial_columns, return_index=True)
    late = first[:n_shared][first[:n_shared] >= seen_by_all]
    movable = np.setdiff1d(np.arange(seen_by_all), first[:n_shared])
    early = rng.choice(movable, len(late), replace=False)
    trial_columns[late], trial_columns[early] = trial_columns[early], trial_columns[late]
    return StudyDesign(subject_images, n_shared, trial_columns, sessions, n_sessions)


@dataclass
class StudyTraits:
    """What the study draws once: each category ROI label's sub-population pair and each category region's
    secondary weights (n_categories, zero at its own category)."""

    subpopulations: dict[str, tuple[str, str]]
    secondary: dict[str, np.ndarray] = field(repr=False)


def draw_study_traits(seed: int) -> StudyTraits:
    """The study's traits, from its stream ``[seed, 0, 701]`` (sub-population kinds balanced over the ROIs)."""
    rng = np.random.default_rng([int(seed), 0, 701])
    kinds = rng.permutation(np.resize(SUBPOPULATION_KINDS, len(SUBPOPULATION_ROIS)))
    pairs = {name: subpopulation_pair(rng, kind) for name, kind in zip(SUBPOPULATION_ROIS, kinds)}
    secondary = {}
    for name, category in CATEGORY_OF_ROI.items():
        weights = related_weights(category) + rng.uniform(0, SECONDARY_SPREAD, len(S.CATEGORIES))
        weights[S.CATEGORIES.index(category)] = 0.0
        secondary[name] = weights
    return StudyTraits(pairs, secondary)


def draw_subject(seed: int, subject: int, base_shape, study: StudyTraits) -> tuple[tuple, SubjectTraits]:
    """A subject's grid shape and traits, from its own stream ``[seed, subject, 701]``.

    Parameters
    ----------
    seed : int
        The study's seed.
    subject : int
        1-based subject number.
    base_shape : tuple of int
        The study's grid; each axis moves by up to ``SHAPE_JITTER`` voxels.
    study : StudyTraits
        :func:`draw_study_traits`.

    Returns
    -------
    (shape, SubjectTraits)
    """
    rng = np.random.default_rng([int(seed), int(subject), 701])
    shape = tuple(int(n) for n in np.asarray(base_shape) + rng.integers(-SHAPE_JITTER, SHAPE_JITTER + 1, 3))
    anchors = {}
    for name, (direction, n_voxels) in _ANCHORS.items():
        moved = np.asarray(direction) + rng.normal(0, ANCHOR_JITTER, 3)
        moved[0] = max(moved[0], MIN_LATERAL)
        anchors[name] = (tuple(float(v) for v in moved), n_voxels)
    pairs = {}
    for name, pair in study.subpopulations.items():
        if rng.random() < KEEP_PROBABILITY:
            pairs[name] = tuple(pair)
        else:
            others = [kind for kind in SUBPOPULATION_KINDS if kind != subpopulation_kind(pair[0])]
            pairs[name] = subpopulation_pair(rng, others[int(rng.integers(len(others)))])
    split = {name: float(rng.uniform(*SPLIT_RANGE)) for name in study.subpopulations}
    secondary = {name: weights * rng.lognormal(0, SECONDARY_JITTER, len(weights))
                 for name, weights in study.secondary.items()}
    return shape, SubjectTraits(int(subject), anchors, pairs, split, secondary)


def study_record(study: StudyTraits) -> dict:
    """JSON-ready study traits: per ROI label its kind and labels, per category region its secondary weights."""
    return {"subpopulations": {name: {"kind": subpopulation_kind(pair[0]), "labels": list(pair)}
                               for name, pair in study.subpopulations.items()},
            "secondary": _weights_record(study.secondary)}


def subject_record(traits: SubjectTraits, study: StudyTraits) -> dict:
    """JSON-ready traits of a subject: per ROI label its kind, labels, split and whether it kept the study's kind;
    per category region its secondary weights."""
    subpopulations = {}
    for name, pair in traits.subpopulations.items():
        kind = subpopulation_kind(pair[0])
        subpopulations[name] = {"kind": kind, "labels": list(pair), "split": traits.split[name],
                                "kept_study_kind": kind == subpopulation_kind(study.subpopulations[name][0])}
    return {"subpopulations": subpopulations, "secondary": _weights_record(traits.secondary)}


def _weights_record(secondary: dict[str, np.ndarray]) -> dict:
    return {name: dict(zip(S.CATEGORIES, map(float, weights))) for name, weights in secondary.items()}
