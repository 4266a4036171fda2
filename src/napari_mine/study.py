"""A study of several subjects: per-subject results folders that share one stimulus folder (DESIGN.md §10).

Layout::

    STUDY/
      study.json     format, version, model, space, the data root and the subjects' folders
      stimuli/       a results folder with the features step only: every unique stimulus decomposed once
      subj01/ …      one results folder per subject; its features step names ../stimuli and its rows there

Features and token contributions belong to a stimulus, not to a subject: NSD's 1,000 shared images are
decomposed once, not once per subject. Everything after the features (fit, profiles, validation) is per
subject and reads through each subject's :class:`~napari_mine.results.Results` as before; :class:`Study`
adds what only several subjects have (the images they share, checks that they were made alike).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

import numpy as np

from napari_mine.errors import MineInputError
from napari_mine.results import MANIFEST, Results, open_results

STUDY_FORMAT = "napari-mine-study"
STUDY_VERSION = 1
STUDY_MANIFEST = "study.json"
STIMULI = "stimuli"
SUMMARY = "summary.json"


def subject_folder(subject: int) -> str:
    return f"subj{int(subject):02d}"


def is_study(path: str | os.PathLike) -> bool:
    return (Path(path) / STUDY_MANIFEST).is_file()


@dataclass(frozen=True)
class StudyManifest:
    """``study.json``: what every subject of the study has in common, and where each subject's folder is."""

    created: str
    model: Mapping  # the backbone's record (its "id" is checked against every subject's)
    space: str  # "volume" or "fsaverage"
    source: Mapping  # {"root": data root, "layout": "nsd"}
    subjects: Mapping[int, str]  # subject number -> folder inside the study

    @classmethod
    def read(cls, root: str | os.PathLike) -> "StudyManifest":
        path = Path(root) / STUDY_MANIFEST
        if not path.is_file():
            raise MineInputError(f"{root} is not a napari-mine study (no {STUDY_MANIFEST}); make one with "
                                 "`napari-mine features NSD_ROOT --subject 1 2 --out STUDY`.")
        try:
            payload = json.loads(path.read_text())
            if payload.get("format") != STUDY_FORMAT or payload.get("version") != STUDY_VERSION:
                raise MineInputError(f"{path} is not a study manifest of format {STUDY_VERSION}; recompute the study "
                                     "with `napari-mine features`.")
            return cls(str(payload["created"]), MappingProxyType(dict(payload["model"])), str(payload["space"]),
                       MappingProxyType(dict(payload["source"])),
                       MappingProxyType({int(k): str(v) for k, v in payload["subjects"].items()}))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise MineInputError(f"{path} cannot be read ({type(error).__name__}: {error}); recompute the study "
                                 "with `napari-mine features`.") from None

    def to_dict(self) -> dict:
        return {"format": STUDY_FORMAT, "version": STUDY_VERSION, "created": self.created, "model": dict(self.model),
                "space": self.space, "source": dict(self.source),
                "subjects": {str(k): v for k, v in sorted(self.subjects.items())}}

    def write(self, root: Path) -> None:
        from napari_mine.store import write_json_atomic

        write_json_atomic(Path(root) / STUDY_MANIFEST, self.to_dict())


def start_study(root: str | os.PathLike, *, model: Mapping, space: str) -> StudyManifest:
    """Create ``root/study.json`` (no subjects yet), or check that the study there has this model and space.

    A study holds one model and one space: a run that would mix them is refused before anything is written.
    """
    root = Path(root)
    if is_study(root):
        existing = StudyManifest.read(root)
        if existing.model.get("id") != model.get("id"):
            raise MineInputError(f"{root} is a study of model {existing.model.get('id')!r}, not {model.get('id')!r}; "
                                 "choose another --out folder or compute with that model.")
        if existing.space != space:
            raise MineInputError(f"{root} is a study in {existing.space} space, not {space}; choose another --out "
                                 f"folder or pass --space {existing.space}.")
        return existing
    if (root / MANIFEST).is_file():
        raise MineInputError(f"{root} is a results folder of one subject, not a study; choose a new --out folder "
                             "for the study.")
    root.mkdir(parents=True, exist_ok=True)
    manifest = StudyManifest(time.strftime("%Y-%m-%dT%H:%M:%S"), MappingProxyType(dict(model)), space,
                             MappingProxyType({}), MappingProxyType({}))
    manifest.write(root)
    return manifest


def add_subjects(root: str | os.PathLike, subjects, source: Mapping) -> StudyManifest:
    """Name ``subjects`` in the study once their folders are complete (an interrupted run never lists a
    subject whose folder is half made)."""
    existing = StudyManifest.read(root)
    subjects = {**existing.subjects, **{int(s): subject_folder(s) for s in subjects}}
    manifest = StudyManifest(existing.created, existing.model, existing.space, MappingProxyType(dict(source)),
                             MappingProxyType(subjects))
    manifest.write(Path(root))
    return manifest


class Study:
    """The subjects of a study, each a :class:`Results`, checked to be comparable when opened."""

    def __init__(self, root: str | os.PathLike, manifest: StudyManifest):
        self.root = Path(root)
        self.manifest = manifest

    @classmethod
    def open(cls, root: str | os.PathLike) -> "Study":
        """Open a study, refusing one whose subjects were made with different models, spaces or vocabularies."""
        study = cls(root, StudyManifest.read(root))
        study.check_consistent()
        return study

    @property
    def subjects(self) -> tuple[int, ...]:
        return tuple(sorted(self.manifest.subjects))

    def results(self, subject: int) -> Results:
        """The read session of one subject's folder."""
        if subject not in self.manifest.subjects:
            raise MineInputError(f"subject {subject} is not in the study {self.root}; it has subjects "
                                 f"{', '.join(map(str, self.subjects))}.")
        return open_results(self.subject_root(subject))

    def subject_root(self, subject: int) -> Path:
        return self.root / self.manifest.subjects[subject]

    def items(self) -> list[tuple[int, Results]]:
        return [(subject, self.results(subject)) for subject in self.subjects]

    def check_consistent(self) -> None:
        """One message naming the subject that differs, when subjects used another model, space or vocabulary."""
        model_id = self.manifest.model.get("id")
        vocabularies = {}
        for subject, results in self.items():
            name = self.manifest.subjects[subject]
            if results.manifest.model.id != model_id:
                raise MineInputError(f"{name} in {self.root} was computed with model {results.manifest.model.id!r}, "
                                     f"the study with {model_id!r}; recompute {name} with `napari-mine features`.")
            if results.has("brain") and results.space.kind != ("surface" if self.manifest.space == "fsaverage"
                                                                else "volume"):
                raise MineInputError(f"{name} holds {results.space.kind} results but the study is in "
                                     f"{self.manifest.space} space; recompute {name} in {self.manifest.space} space.")
            if results.has("profiles"):
                vocabularies[name] = results.manifest.settings("profiles").get("vocabulary")
        if len(set(vocabularies.values())) > 1:
            listed = ", ".join(f"{name}: {vocabulary}" for name, vocabulary in sorted(vocabularies.items()))
            raise MineInputError(f"the subjects' profiles use different vocabularies ({listed}); run `napari-mine "
                                 "profile` on the study with one --vocabulary.")

    def shared_image_ids(self) -> np.ndarray:
        """The stimulus ids every subject has a feature row for (sorted): the images to compare subjects on."""
        ids = [results.image_ids for _, results in self.items()]
        shared = ids[0]
        for other in ids[1:]:
            shared = np.intersect1d(shared, other)
        return shared

    def rows_of(self, subject: int, image_ids) -> np.ndarray:
        """Each image id's row in a subject's results (refused when the subject never saw one)."""
        ids = self.results(subject).image_ids
        order = np.argsort(ids)
        positions = np.searchsorted(ids, image_ids, sorter=order)
        found = order[np.minimum(positions, len(ids) - 1)]
        if not np.array_equal(ids[found], np.asarray(image_ids)):
            raise MineInputError(f"{self.manifest.subjects[subject]} has no feature row for some of the images "
                                 "asked for; compare subjects on Study.shared_image_ids().")
        return found

    @property
    def stimuli(self) -> Results:
        return open_results(self.root / STIMULI)

    def summary(self) -> dict:
        path = self.root / SUMMARY
        return json.loads(path.read_text()) if path.is_file() else {}


def parse_subjects(values) -> list[int] | str:
    """``--subject`` values: subject numbers (1 2 5 or subj01), or "all"."""
    if values is None:
        return [1]
    values = [str(v) for v in np.atleast_1d(values)]
    if [v.lower() for v in values] == ["all"]:
        return "all"
    subjects = []
    for value in values:
        match = re.fullmatch(r"(?:subj)?0*(\d+)", value.strip().lower())
        if not match or not 1 <= int(match.group(1)) <= 99:
            raise MineInputError(f"--subject {value!r} is not a subject number; give numbers such as 1 2 5, or all.")
        subjects.append(int(match.group(1)))
    if len(set(subjects)) != len(subjects):
        raise MineInputError(f"--subject lists a subject twice ({' '.join(values)}); give each subject once.")
    return sorted(subjects)
