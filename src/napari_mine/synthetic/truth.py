"""The world's ground truth on disk (``<root>/ground_truth/``), which no loader reads.

It holds what every later score needs: the scene behind each stimulus, the stimulus ids of the subject's
images and the test set, and the simulated brain's complete parameters, so :func:`brain.true_response`
can be recomputed for new (edited or generated) scenes. A world written with its cortex also keeps the voxel
each fsaverage5 vertex copies (:mod:`.cortex`), so the same truth scores results computed on vertices.

A study of several subjects keeps the scenes of all stimuli once (``scenes.json``), each subject's truth in
``subjNN/`` and the study record in ``study.json`` (:mod:`.study`: each subject's sub-populations, splits,
sessions and grid); a one-subject world keeps its one truth at the top.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

from ..errors import MineInputError
from . import scenes as S
from .brain import SimulatedBrain, VoxelTuning, true_response
from .cortex import CortexMap, brain_on_sites, load_cortex_map, save_cortex_map

TRUTH_DIR = "ground_truth"
STUDY_FILE = "study.json"
SCENES_FILE = "scenes.json"
_VOLUMES = ("affine", "brainmask", "cortex", "mask", "anatomy")


@dataclass
class WorldTruth:
    """Ground truth of one written world.

    ``scenes[i]`` is the scene of stimulus ``i`` (0-based row of ``imgBrick``); ``subject_images[j]`` is the
    stimulus shown as the subject's image ``j`` (0-based column of ``subjectim``); ``shared_images`` are the
    stimulus indices of the test set (shown ``repeats`` times); ``cortex`` is where the neurons lie on
    fsaverage5, for a world written with ``space="fsaverage"``.
    """

    brain: SimulatedBrain
    scenes: list[S.Scene]
    subject_images: np.ndarray
    shared_images: np.ndarray
    repeats: int
    cortex: CortexMap | None = None

    def true_response(self, scenes=None) -> np.ndarray:
        """Noiseless nsdgeneral responses to ``scenes`` (default: every stimulus, in stimulus order)."""
        return true_response(self.brain, self.scenes if scenes is None else scenes)

    def for_space(self, space) -> "WorldTruth":
        """The truth whose neurons are ``space``'s targets, so scores and the true brain index it by target.

        A volume space's voxels already are the brain's (their order is checked where they are matched); for a
        surface space (``space.kind == "surface"``) each target vertex gets the tuning of the voxel it copies, and
        ``brain.mask`` becomes the space's mask over the surface's sites. A truth already on sites is kept.
        """
        if getattr(space, "kind", "volume") != "surface" or self.brain.mask.ndim == 1:
            return self
        if self.cortex is None:
            raise MineInputError("These results are on the cortical surface, but the world was written without it; "
                                 "write the world with `napari-mine world OUT --space fsaverage` and recompute.")
        return replace(self, brain=brain_on_sites(self.brain, self.cortex, space.mask))


@dataclass
class StudyTruth:
    """Ground truth of a study: ``subjects[k - 1]`` is subject k's (all on the same scenes) and ``record`` the
    study record (``study.json``)."""

    subjects: list[WorldTruth]
    record: dict


def subject_folder(subject: int) -> str:
    return f"subj{subject:02d}"


def save_truth(folder: Path, truth: WorldTruth, with_scenes: bool = True) -> None:
    """Write the ground truth into ``folder`` (created; the caller makes the whole world atomic); a study's
    subjects are written ``with_scenes=False``, their scenes once by :func:`save_study_truth`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    brain, tuning = truth.brain, truth.brain.tuning
    arrays = {name: getattr(brain, name) for name in _VOLUMES}
    arrays.update({f"roi/{name}": volume for name, volume in brain.roi_volumes.items()})
    arrays.update({f"tuning/{f.name}": getattr(tuning, f.name) for f in fields(VoxelTuning)})
    np.savez_compressed(folder / "brain.npz", **arrays)
    _write_json(folder / "brain.json", {
        "seed": brain.seed, "pooling_exponent": brain.pooling_exponent,
        "roi_labels": {name: {str(k): v for k, v in labels.items()} for name, labels in brain.roi_labels.items()},
        "categories": list(S.CATEGORIES), "colors": list(S.COLORS),
    })
    if with_scenes:
        _write_json(folder / SCENES_FILE, [S.scene_to_dict(scene) for scene in truth.scenes])
    _write_json(folder / "stimuli.json", {
        "subject_images": truth.subject_images.tolist(), "shared_images": truth.shared_images.tolist(),
        "repeats": truth.repeats, "note": "0-based stimulus indices (rows of imgBrick)",
    })
    _write_json(folder / "subpopulations.json", subpopulation_summary(brain))
    if truth.cortex is not None:
        save_cortex_map(folder, truth.cortex)


def save_study_truth(folder: Path, study: StudyTruth) -> None:
    """Write a study's truth into ``folder``: the scenes once, each subject in ``subjNN/``, the study record."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / SCENES_FILE, [S.scene_to_dict(scene) for scene in study.subjects[0].scenes])
    for subject, truth in enumerate(study.subjects, start=1):
        save_truth(folder / subject_folder(subject), truth, with_scenes=False)
    _write_json(folder / STUDY_FILE, study.record)


def subpopulation_summary(brain: SimulatedBrain) -> dict:
    """Per region: preferred category and voxel count of each known sub-population (readable truth)."""
    t = brain.tuning
    summary = {}
    for roi in sorted(set(t.roi) - {""}):
        members = t.roi == roi
        category = int(t.category[members][0])
        labels, counts = np.unique(t.subpopulation[members], return_counts=True)
        summary[roi] = {"kind": str(t.kind[members][0]),
                        "category": S.CATEGORIES[category] if category >= 0 else None,
                        "n_voxels": int(members.sum()),
                        "subpopulations": {str(k): int(n) for k, n in zip(labels, counts) if k}}
    return summary


def load_truth(root, subject: int = 1) -> WorldTruth:
    """Read ``<root>/ground_truth`` back into a :class:`WorldTruth`: the world's, or one subject's of a study.

    Parameters
    ----------
    root : path
        The world's root folder (the one ``write_world`` wrote).
    subject : int
        1-based subject of a study (a one-subject world has only subject 1).

    Returns
    -------
    WorldTruth
    """
    folder = Path(root) / TRUTH_DIR
    if (folder / STUDY_FILE).is_file():
        n_subjects = int(json.loads((folder / STUDY_FILE).read_text())["n_subjects"])
        if not (isinstance(subject, (int, np.integer)) and 1 <= subject <= n_subjects):
            raise MineInputError(f"This study has subjects 1 to {n_subjects}, not {subject!r}; choose one of those.")
        return _load_subject(folder / subject_folder(subject), _load_scenes(folder))
    if not (folder / "brain.npz").is_file():
        raise MineInputError(f"No ground truth in {folder}; point to a folder written by write_world.")
    if subject != 1:
        raise MineInputError(f"The world at {root} has one subject, not subject {subject!r}; use subject 1.")
    return _load_subject(folder, _load_scenes(folder))


def load_study_truth(root) -> StudyTruth:
    """Every subject's truth of a study written by ``write_world(..., n_subjects=N)`` (N > 1), and its record."""
    folder = Path(root) / TRUTH_DIR
    if not (folder / STUDY_FILE).is_file():
        raise MineInputError(f"No study record in {folder}: the world has one subject (read it with load_truth) or "
                             "is not a world; write a study with `napari-mine world OUT --subjects N`.")
    record = json.loads((folder / STUDY_FILE).read_text())
    scenes = _load_scenes(folder)
    return StudyTruth([_load_subject(folder / subject_folder(k), scenes) for k in range(1, record["n_subjects"] + 1)],
                      record)


def _load_scenes(folder: Path) -> list[S.Scene]:
    return [S.scene_from_dict(d) for d in json.loads((folder / SCENES_FILE).read_text())]


def _load_subject(folder: Path, scenes: list[S.Scene]) -> WorldTruth:
    meta = json.loads((folder / "brain.json").read_text())
    with np.load(folder / "brain.npz") as data:
        tuning = VoxelTuning(**{f.name: data[f"tuning/{f.name}"] for f in fields(VoxelTuning)})
        roi_labels = {name: {int(k): v for k, v in labels.items()} for name, labels in meta["roi_labels"].items()}
        brain = SimulatedBrain(
            **{name: data[name] for name in _VOLUMES},
            roi_volumes={name: data[f"roi/{name}"] for name in roi_labels}, roi_labels=roi_labels,
            tuning=tuning, pooling_exponent=float(meta["pooling_exponent"]), seed=int(meta["seed"]))
    stimuli = json.loads((folder / "stimuli.json").read_text())
    return WorldTruth(brain, scenes, np.array(stimuli["subject_images"], int), np.array(stimuli["shared_images"], int),
                      int(stimuli["repeats"]), load_cortex_map(folder))


def _write_json(path: Path, payload) -> None:
    path.write_text(json.dumps(payload, indent=1))
