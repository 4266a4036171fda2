"""Across subjects (DESIGN.md §10): does each ROI's MINE profile agree between people, which within-ROI
sub-populations recur, do subjects describe the same image alike, and, on fsaverage, where the profiles agree.

Every question is asked on the images all subjects saw (:meth:`Study.shared_image_ids`): a profile averages a
target's top images, and top images chosen among each subject's own images would compare people on different
stimuli. So the profiles here are recomputed with top images chosen among the shared rows only
(:func:`shared_profiles`), in the vocabulary the profile step used; the saved profiles stay as they are.

* **ROI profile.** The mean of the ROI label's targets' profiles (targets are voxels or vertices).
* **Agreement.** Spearman ρ of two subjects' ROI profiles, with a bootstrap CI over targets: each subject's
  targets are resampled with replacement (independently, seeded) and both means recomputed; the CI is the
  percentile interval of ρ over the resamples. Resampled means are noisier than the means, so the interval
  leans low of ρ, and for identical subjects (ρ = 1, its maximum) lies wholly below it.
* **Recurrence.** Each subject's clusters of the ROI (those the profile step wrote) as their mean profile minus
  the ROI's mean profile: what sets a sub-population apart, since every cluster of an ROI shares its category.
  Clusters of two subjects are matched one to one (Hungarian, on the Pearson r of those deviations); a cluster
  recurs when its match reaches ``threshold``, and an ROI's sub-populations recur in a pair when every cluster
  of the subject with fewer clusters does.
* **Description consistency.** On the ROI's top shared images (by the subjects' mean standardised prediction of
  the ROI's mean response), each subject's description of the image for the ROI (:func:`describe.describe_image`
  of the ROI's mean effective weights); per image, the fraction of subject pairs whose top concept agrees,
  averaged over the images.
* **Vertex agreement** (fsaverage studies): per vertex in every subject's mask, the mean over subject pairs of
  the Spearman ρ of their vertex profiles; saved over all vertices (NaN elsewhere).

:func:`compare_subjects` runs it all on a study, writes the study summary's ``"subjects"`` section (scored
against the truth for a synthetic study world, :mod:`napari_mine.synthetic.study_scoring`) and the arrays
under ``STUDY/across_subjects/``.
"""

from __future__ import annotations

import dataclasses
import itertools
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_mine import describe
from napari_mine.errors import MineInputError
from napari_mine.study import Study, subject_folder

FOLDER = "across_subjects"
PROFILES_FILE = "roi_profiles.json"
DESCRIPTIONS_FILE = "descriptions.json"
VERTEX_MAP_FILE = "profile_agreement.mgz"
SECTION = "subjects"
N_BOOT = 1000
CI_LEVEL = 0.95
RECURRENCE_THRESHOLD = 0.5  # Pearson r of two clusters' deviations from their ROI means
N_DESCRIBED_IMAGES = 10


# ----------------------------------------------------------------------------------------------- profiles


def shared_profiles(results, space, rows: np.ndarray, targets: np.ndarray, *, top_k: int = describe.DEFAULT_TOP_K,
                    block: int = describe.STORE_VOXEL_BLOCK) -> describe.VoxelProfiles:
    """Profiles of ``targets`` whose top images are chosen among image ``rows`` only (the shared images).

    As :meth:`Results.profiles`, block by block of targets, each block reading only its top images' tokens;
    ``top_images`` are rows of ``results``.
    """
    rows = np.asarray(rows, dtype=int)
    targets = results.checked_targets(targets)
    weights, _ = results.weights()
    blocks = []
    for start in range(0, len(targets), block):
        chunk = targets[start:start + block]
        top = rows[describe.top_images(results.predict(chunk, rows=rows), top_k)]
        read, local = np.unique(top, return_inverse=True)
        part = describe.voxel_profiles(results.tokens(read), weights[:, chunk], local.reshape(top.shape), space,
                                       voxels=chunk)
        blocks.append(dataclasses.replace(part, top_images=read[part.top_images]))
    return describe.VoxelProfiles(space.vocabulary.concepts, np.concatenate([b.scores for b in blocks]),
                                  np.concatenate([b.baseline for b in blocks]),
                                  np.concatenate([b.top_images for b in blocks], axis=1),
                                  np.concatenate([b.region_mass for b in blocks]), targets)


# ----------------------------------------------------------------------------------------------- agreement


def rank_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman ρ of matching rows of ``a`` and ``b`` (..., K) (ties ranked by their mean); NaN where a row is
    constant, which has no ranking."""
    from scipy.stats import rankdata

    ranks_a = rankdata(a, axis=-1)
    ranks_b = rankdata(b, axis=-1)
    ranks_a -= ranks_a.mean(axis=-1, keepdims=True)
    ranks_b -= ranks_b.mean(axis=-1, keepdims=True)
    norm = np.sqrt((ranks_a ** 2).sum(axis=-1) * (ranks_b ** 2).sum(axis=-1))
    return np.divide((ranks_a * ranks_b).sum(axis=-1), norm, out=np.full(norm.shape, np.nan), where=norm > 0)


def bootstrap_means(scores: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Means (n_boot, K) of ``scores`` (n, K) over resamples of its rows with replacement, as multinomial counts
    times the rows (memory n_boot × n, not n_boot × n × K)."""
    n = len(scores)
    if n == 0:
        raise MineInputError("an ROI without targets has no profile to resample; choose an ROI with targets.")
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot)
    return counts @ np.asarray(scores, dtype=np.float64) / n


@dataclass(frozen=True)
class Agreement:
    """Spearman ρ of two ROI profiles and its bootstrap CI over targets."""

    rho: float
    ci: tuple[float, float]


def profile_agreement(scores_a: np.ndarray, scores_b: np.ndarray, *, n_boot: int = N_BOOT, seed: int = 0,
                      draws_a: np.ndarray | None = None, draws_b: np.ndarray | None = None) -> Agreement:
    """Agreement of two subjects' ROI profiles from their targets' profiles (n_a, K) and (n_b, K).

    ``draws_a``/``draws_b`` are the subjects' :func:`bootstrap_means` when they are reused over pairs; else
    they are drawn here from ``seed``.
    """
    if scores_a.shape[1:] != scores_b.shape[1:]:
        raise MineInputError(f"profiles over {scores_a.shape[1]} and {scores_b.shape[1]} concepts cannot be compared; "
                             "profile both subjects in one vocabulary.")
    rng = np.random.default_rng(seed)
    draws_a = bootstrap_means(scores_a, n_boot, rng) if draws_a is None else draws_a
    draws_b = bootstrap_means(scores_b, n_boot, rng) if draws_b is None else draws_b
    rho = float(rank_correlation(scores_a.mean(axis=0), scores_b.mean(axis=0)))
    boot = rank_correlation(draws_a, draws_b)
    boot = boot[np.isfinite(boot)]
    tail = 100 * (1 - CI_LEVEL) / 2
    ci = tuple(float(v) for v in np.percentile(boot, [tail, 100 - tail])) if boot.size else (np.nan, np.nan)
    return Agreement(rho, ci)


# ----------------------------------------------------------------------------------------------- recurrence


def cluster_deviations(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each cluster's mean profile minus the ROI's mean profile, (k, K) for clusters 1..k of ``labels``."""
    mean = scores.mean(axis=0)
    return np.stack([scores[labels == cluster].mean(axis=0) - mean for cluster in range(1, int(labels.max()) + 1)])


def match_clusters(deviations_a: np.ndarray, deviations_b: np.ndarray) -> list[tuple[int, int, float]]:
    """One-to-one matches (cluster of a, cluster of b, r), 1-based, maximising the summed Pearson r."""
    from scipy.optimize import linear_sum_assignment

    a = deviations_a - deviations_a.mean(axis=1, keepdims=True)
    b = deviations_b - deviations_b.mean(axis=1, keepdims=True)
    norms = np.outer(np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1))
    r = np.divide(a @ b.T, norms, out=np.zeros(norms.shape), where=norms > 0)
    rows, columns = linear_sum_assignment(r, maximize=True)
    return [(int(i) + 1, int(j) + 1, float(r[i, j])) for i, j in zip(rows, columns)]


def recurrence(deviations_a: np.ndarray, deviations_b: np.ndarray,
               threshold: float = RECURRENCE_THRESHOLD) -> dict:
    """The matches of two subjects' clusters of an ROI, and whether its sub-populations recur (see the module)."""
    matches = match_clusters(deviations_a, deviations_b)
    recurring = [r >= threshold for _, _, r in matches]
    return {"matches": [list(m) for m in matches], "n_recurring": int(sum(recurring)),
            "k": [len(deviations_a), len(deviations_b)], "recurs": bool(all(recurring))}


# ----------------------------------------------------------------------------------------------- descriptions


def pair_consistency(top_concepts: np.ndarray) -> np.ndarray:
    """Per image, the fraction of subject pairs whose top concepts agree: (n_subjects, n_images) → (n_images,)."""
    pairs = list(itertools.combinations(range(len(top_concepts)), 2))
    return np.mean([top_concepts[i] == top_concepts[j] for i, j in pairs], axis=0)


# ----------------------------------------------------------------------------------------------- the study


@dataclass(frozen=True)
class Subject:
    """What the comparison reads of one subject: its results, its shared rows and its profiles on them."""

    name: str
    results: object
    rows: np.ndarray  # rows of the shared images, in shared-id order
    profiles: describe.VoxelProfiles
    clusters: dict  # ROI label -> (n_targets,) cluster of each target, 0 outside


def compare_subjects(study_root, space, *, labels=None, seed: int = 0, top_k: int | None = None,
                     n_boot: int = N_BOOT, threshold: float = RECURRENCE_THRESHOLD,
                     n_images: int = N_DESCRIBED_IMAGES, score: bool = True, on_progress=None) -> dict:
    """Compare every subject of a study with every other, per ROI label, on the shared images (see the module).

    Parameters
    ----------
    study_root : path
        A study whose subjects were profiled (``napari-mine profile STUDY``) in ``space``'s vocabulary.
    space : ConceptSpace
        The vocabulary embedded by the study's model (one serves every subject).
    labels : list of str, optional
        ROI labels (e.g. ``["FFA-1", "PPA"]``); default those the profile step analysed in every subject.
    seed : int
        Seeds the bootstrap.
    top_k : int, optional
        Top shared images per profile (default the profile step's).
    n_boot : int
        Bootstrap resamples of each subject's targets.
    threshold : float
        Pearson r at which a matched cluster recurs.
    n_images : int
        Top shared images per ROI whose descriptions are compared.
    score : bool
        Score against the world's truth when the study was made from a synthetic study world.
    on_progress : callable(done, total), optional
        In subjects whose shared-image profiles are done.

    Returns
    -------
    dict
        The ``"subjects"`` section written into the study's summary.json.
    """
    from napari_mine.store import write_json_atomic
    from napari_mine.store import update_summary

    study = Study.open(study_root)
    if len(study.subjects) < 2:
        raise MineInputError(f"{study.root} has one subject; comparing subjects needs a study of two or more "
                             "(`napari-mine features DATA --subject 1 2 --out STUDY`).")
    surface = study.manifest.space == "fsaverage"
    ids = study.shared_image_ids()
    if len(ids) < 2:
        raise MineInputError(f"the subjects of {study.root} share {len(ids)} image(s); comparing them needs shared "
                             "images (NSD's 1,000 shared images, a world's test set).")
    labels = _labels(study, space, labels)
    top_k = int(top_k or study.results(study.subjects[0]).manifest.settings("profiles").get("top_k",
                                                                                          describe.DEFAULT_TOP_K))
    subjects = []
    for done, subject in enumerate(study.subjects, start=1):
        subjects.append(_subject(study, subject, space, ids, labels, surface, top_k))
        if on_progress is not None:
            on_progress(done, len(study.subjects))
    pairs = list(itertools.combinations(range(len(subjects)), 2))
    pair_names = [f"{subjects[i].name}-{subjects[j].name}" for i, j in pairs]
    profiles, agreement, recurrences, consistency, descriptions = {}, {}, {}, {}, {}
    for label in labels:
        scores = [_roi_scores(s, label) for s in subjects]
        draws = [bootstrap_means(values, n_boot, np.random.default_rng([seed, zlib.crc32(label.encode()), k]))
                 for k, values in enumerate(scores)]
        profiles[label] = {s.name: values.mean(axis=0) for s, values in zip(subjects, scores)}
        agreement[label] = {}
        for name, (i, j) in zip(pair_names, pairs):
            result = profile_agreement(scores[i], scores[j], draws_a=draws[i], draws_b=draws[j])
            agreement[label][name] = {"rho": result.rho, "ci": list(result.ci),
                                      "n_targets": [len(scores[i]), len(scores[j])]}
        deviations = [cluster_deviations(values, s.clusters[label][_roi_targets(s, label)])
                      for s, values in zip(subjects, scores)]
        recurrences[label] = {name: recurrence(deviations[i], deviations[j], threshold)
                              for name, (i, j) in zip(pair_names, pairs)}
        descriptions[label] = _roi_descriptions(subjects, label, space, ids, n_images)
        consistency[label] = float(np.mean(descriptions[label]["consistency"]))
    section = {
        "subjects": [s.name for s in subjects], "pairs": pair_names, "vocabulary": space.vocabulary.name,
        "n_shared_images": int(len(ids)), "top_k": top_k, "n_boot": int(n_boot),
        "ci_level": CI_LEVEL, "seed": int(seed), "recurrence_threshold": float(threshold), "rois": list(labels),
        **{key: study.summary().get("features", {}).get(key)
           for key in ("images_decomposed", "images_summed_over_subjects")},
        "agreement": agreement,
        "mean_agreement": _mean(v["rho"] for by_pair in agreement.values() for v in by_pair.values()),
        "recurrence": recurrences,
        "recurrence_rate": _mean(v["recurs"] for by_pair in recurrences.values() for v in by_pair.values()),
        "description_consistency": consistency,
        "mean_description_consistency": _mean(consistency.values()),
    }
    folder = study.root / FOLDER
    folder.mkdir(exist_ok=True)
    if surface:
        values = vertex_agreement([s.results.space for s in subjects], [s.profiles for s in subjects])
        path = save_vertex_map(values, folder / VERTEX_MAP_FILE)
        section["vertex_agreement"] = {"path": f"{FOLDER}/{path.name}", "n_vertices": int(np.isfinite(values).sum()),
                                       "mean": _mean(values[np.isfinite(values)])}
    if score:
        from napari_mine.synthetic.study_scoring import score_study, study_world

        if study_world(study) is not None:
            section["truth"] = score_study(study, section, profiles, space)
    write_json_atomic(folder / PROFILES_FILE, {"concepts": list(space.vocabulary.concepts),
                                               "groups": list(space.vocabulary.groups), "profiles": profiles})
    write_json_atomic(folder / DESCRIPTIONS_FILE, descriptions)
    update_summary(study.root, SECTION, section)
    return section


def read_roi_profiles(study_root) -> dict:
    """The ROI profiles :func:`compare_subjects` wrote: ``{"concepts", "groups", "profiles": {label: {subject:
    (K,)}}}``."""
    import json

    path = Path(study_root) / FOLDER / PROFILES_FILE
    if not path.is_file():
        raise MineInputError(f"{study_root} has no cross-subject comparison yet; run compare_subjects on it first.")
    payload = json.loads(path.read_text())
    payload["profiles"] = {label: {name: np.asarray(values) for name, values in by_subject.items()}
                           for label, by_subject in payload["profiles"].items()}
    return payload


def _labels(study: Study, space, labels) -> list[str]:
    """The ROI labels to compare: those asked for, else those every subject's profile step analysed."""
    analysed = []
    for subject, results in study.items():
        name = subject_folder(subject)
        if results.saved_profiles(space) is None or not results.has("clusters"):
            raise MineInputError(f"{name} of {study.root} has no profiles in the {space.vocabulary.name!r} vocabulary; "
                                 f"run `napari-mine profile {study.root} --vocabulary {space.vocabulary.name}` first.")
        analysed.append([entry["label"] for entry in results.manifest.settings("clusters")["labels"]])
    common = [label for label in analysed[0] if all(label in other for other in analysed[1:])]
    if labels is None:
        if not common:
            raise MineInputError(f"the subjects of {study.root} have no ROI label in common; profile them with the "
                                 "same ROIs (`napari-mine profile STUDY --rois ...`).")
        return common
    missing = [label for label in labels if label not in common]
    if missing:
        raise MineInputError(f"ROI label(s) {', '.join(missing)} were not analysed in every subject; choose from "
                             f"{', '.join(common)}.")
    return list(labels)


def _subject(study: Study, subject: int, space, ids, labels, surface: bool, top_k: int) -> Subject:
    """One subject's shared rows and its profiles on them: every target on fsaverage (for the vertex map), else
    the targets of the ROI labels compared."""
    results = study.results(subject)
    rows = study.rows_of(subject, ids)
    clusters = results.saved_clusters()
    if surface:
        targets = np.arange(results.n_targets)
    else:
        targets = np.flatnonzero(np.any([clusters[label] > 0 for label in labels], axis=0))
    profiles = shared_profiles(results, space, rows, targets, top_k=top_k)
    return Subject(subject_folder(subject), results, rows, profiles, clusters)


def _roi_targets(subject: Subject, label: str) -> np.ndarray:
    """The targets of an ROI label: those the profile step clustered (its targets inside the mask)."""
    return np.flatnonzero(subject.clusters[label] > 0)


def _roi_scores(subject: Subject, label: str) -> np.ndarray:
    positions = np.searchsorted(subject.profiles.voxels, _roi_targets(subject, label))
    return subject.profiles.scores[positions].astype(np.float64)


def _roi_descriptions(subjects, label: str, space, ids, n_images: int) -> dict:
    """Each subject's description of the ROI's top shared images, and per image the pairs' agreement."""
    weights, predictions = [], []
    for subject in subjects:
        targets = _roi_targets(subject, label)
        w, b = subject.results.weights()
        weight = w[:, targets].mean(axis=1)
        predicted = subject.results.features()[subject.rows] @ weight + float(b[targets].mean())
        weights.append(weight)
        predictions.append((predicted - predicted.mean()) / max(float(predicted.std()), np.finfo(float).tiny))
    best = np.argsort(-np.mean(predictions, axis=0), kind="stable")[:n_images]
    texts, tops = {}, []
    for subject, weight in zip(subjects, weights):
        tokens = subject.results.tokens(subject.rows[best])
        found = [describe.describe_image(t, weight, space) for t in tokens]
        texts[subject.name] = [d.text for d in found]
        tops.append([d.concepts[0] if d.concepts else "" for d in found])
    tops = np.array(tops, dtype=object)
    return {"image_ids": [int(i) for i in ids[best]], "text": texts,
            "top_concept": {s.name: list(row) for s, row in zip(subjects, tops)},
            "consistency": [float(v) for v in pair_consistency(tops)]}


def _mean(values) -> float | None:
    values = np.asarray([float(v) for v in values if v is not None], dtype=float)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else None


# ----------------------------------------------------------------------------------------------- fsaverage


def vertex_agreement(spaces, profiles) -> np.ndarray:
    """Mean pairwise Spearman ρ of the subjects' vertex profiles, over every vertex (NaN outside any mask).

    Parameters
    ----------
    spaces : list of SurfaceSpace
        Each subject's space (all on one fsaverage layout).
    profiles : list of VoxelProfiles
        Each subject's profiles of every target of its space.
    """
    shapes = {space.mask.shape for space in spaces}
    if len(shapes) != 1 or any(space.kind != "surface" for space in spaces):
        raise MineInputError("vertex agreement needs every subject on one fsaverage surface; compute the study with "
                             "`napari-mine features --space fsaverage`.")
    shared = np.logical_and.reduce([space.mask for space in spaces])
    per_subject = []
    for space, subject_profiles in zip(spaces, profiles):
        if len(subject_profiles.voxels) != space.n_targets:
            raise MineInputError("vertex agreement needs the profiles of every vertex of each subject's mask.")
        per_subject.append(subject_profiles.scores[space.columns[shared]])
    pairs = np.array([rank_correlation(per_subject[i], per_subject[j])
                      for i, j in itertools.combinations(range(len(per_subject)), 2)])
    counted = np.isfinite(pairs).sum(axis=0)  # a vertex whose profile is constant in a subject has no ranking
    values = np.full(shared.shape, np.nan, np.float32)
    values[shared] = np.divide(np.nansum(pairs, axis=0), counted, out=np.full(counted.shape, np.nan),
                               where=counted > 0)
    return values


def save_vertex_map(values: np.ndarray, path: Path) -> Path:
    """A per-vertex map over all fsaverage vertices (lh then rh) as one MGH, atomically (as the clusters are)."""
    import nibabel as nib

    from napari_mine.export import save_atomic

    return save_atomic(nib.MGHImage(np.asarray(values, np.float32).reshape(-1, 1, 1), np.eye(4)), path)
