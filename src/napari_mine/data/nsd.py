"""Load one subject of the Natural Scenes Dataset (NSD) from its own folder layout.

A subject's betas are ~40 GB unmasked, so they are read session by session and a bounded block of trials at
a time, keeping only the voxels of the mask; every file is found and checked (grids, affines, trial counts,
design indices) before the one large allocation, so a bad file fails fast instead of after half a subject.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_mine.data.dataset import (
    ARRAY_MASK,
    Dataset,
    Grid,
    check_nan_policy,
    drop_voxels,
    nan_voxels,
    nifti_trial_chunks,
    open_nifti,
    read_label_table,
    read_roi,
    read_volume,
    reading,
    trials_per_chunk,
)
from napari_mine.data.images import ImageStore
from napari_mine.errors import MineInputError

CATEGORY_ROIS = ("floc-faces", "floc-places", "floc-bodies", "floc-words")  # the category localisers
NSD_ROI_NAMES = ("nsdgeneral", "prf-visualrois", "floc-faces", "floc-places", "floc-bodies", "floc-words")
# The label tables NSD ships as .mgz.ctab, used when a copy lacks them.
NSD_ROI_LABELS = {
    "nsdgeneral": {1: "nsdgeneral"},
    "prf-visualrois": dict(enumerate(("V1v", "V1d", "V2v", "V2d", "V3v", "V3d", "hV4"), start=1)),
    "floc-faces": dict(enumerate(("OFA", "FFA-1", "FFA-2", "mTL-faces", "aTL-faces"), start=1)),
    "floc-places": dict(enumerate(("OPA", "PPA", "RSC"), start=1)),
    "floc-bodies": dict(enumerate(("EBA", "FBA-1", "FBA-2", "mTL-bodies"), start=1)),
    "floc-words": dict(enumerate(("OWFA", "VWFA-1", "VWFA-2", "mfs-words", "mTL-words"), start=1)),
}
NSD_BETA_SCALE = 300.0  # NSD stores % signal change × 300 as int16
DEFAULT_GLM = "betas_fithrf_GLMdenoise_RR"
_BETAS_FILE = re.compile(r"^betas_session(\d+)\.(nii\.gz|nii|hdf5)$")


def load_nsd(
    root,
    subject: int = 1,
    *,
    mask="nsdgeneral",
    sessions=None,
    dtype=np.float32,
    zscore: bool = True,
    nan_policy: str = "raise",
    rois=NSD_ROI_NAMES,
    glm: str = DEFAULT_GLM,
) -> Dataset:
    """Load an NSD subject's single-trial betas inside a mask, with its images, ROIs and noise ceiling data.

    Parameters
    ----------
    root : str or Path
        The NSD root (holding ``nsddata``, ``nsddata_betas``, ``nsddata_stimuli``) or any folder that contains
        the files, in NSD's sub-folders or flat. Files are looked for at NSD's own paths first, then by name.
    subject : int
        Subject number, 1-8.
    mask : str, path or boolean array
        Voxels to keep: an ROI volume name (``"nsdgeneral"``, ``"floc-faces"``, ``"brainmask"``…; voxels > 0),
        a NIfTI file on the betas' grid, or a boolean ``(X, Y, Z)`` array.
    sessions : sequence of int, optional
        1-based session numbers to load; default every session file found.
    dtype : numpy float dtype
        dtype of the responses.
    zscore : bool
        Z-score each voxel within each session (NSD practice: removes session-wise drifts in scale and offset
        before averaging repeats across sessions). Off: responses stay in % signal change.
    nan_policy : {"raise", "zero", "drop-voxels"}
        NaN betas inside the mask (only float files can hold them) usually mean the mask reaches outside the
        brain, so they are refused by default; "zero" replaces them by 0 (the session mean when z-scored),
        "drop-voxels" removes every voxel with a NaN in any session from the mask.
    rois : sequence of str
        ROI volumes to read (those present are read; labels from NSD's ``.mgz.ctab``, else NSD's known names).
    glm : str
        Betas folder to prefer when several GLM versions are present.

    Returns
    -------
    Dataset
        ``responses`` (n_trials, n_voxels), one row per trial (repeats kept), trials in session order;
        ``images`` the subject's images shown in those trials (0-based NSD ids in ``images.ids``), read lazily
        from ``nsd_stimuli.hdf5``; ``test_images`` the shared images among them; ``anatomy`` the T1 on the
        functional grid, or the mean beta when it is absent.
    """
    check_nan_policy(nan_policy)
    dtype = _float_dtype(dtype)
    tree = NsdTree(root, subject)
    design = read_expdesign(tree.require("nsddata/experiments/nsd/nsd_expdesign.mat"))
    stimuli_path = tree.require("nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5")
    betas_folder = tree.betas_folder(glm)
    found = {number: _open_betas(path) for number, path in session_files(betas_folder).items()}
    full_session = _full_session_length(found)
    betas = _select_sessions(found, sessions)
    grid = _reference_grid(betas, tree)
    for session in betas:
        grid.check(session.shape, session.affine, session.path)
    roi_volumes = _read_rois(tree, rois, grid)
    mask_volume, mask_description = _resolve_mask(mask, tree, grid, roi_volumes)
    stimulus_of_trial = trial_stimulus_ids(design, subject, [(s.number, s.n_trials) for s in betas], full_session)
    images, trial_images = _subject_images(stimuli_path, stimulus_of_trial)
    ncsnr_path = betas_folder / "ncsnr.nii.gz"
    ncsnr = read_volume(ncsnr_path, grid)[mask_volume].astype(np.float32) if ncsnr_path.is_file() else None
    anatomy_path = tree.find_volume("T1_to_func1pt8mm")
    anatomy = read_volume(anatomy_path, grid).astype(np.float32) if anatomy_path else None

    responses, mean_beta, dropped = _read_betas(betas, mask_volume, dtype, zscore, nan_policy, anatomy is None)
    if dropped.any():
        mask_volume, responses = drop_voxels(dropped, mask_volume), responses[:, ~dropped]
        ncsnr = None if ncsnr is None else ncsnr[~dropped]
    return Dataset(
        name=f"NSD {tree.subject_folder}",
        images=images,
        responses=responses,
        trial_images=trial_images,
        mask=mask_volume,
        affine=grid.affine,
        rois=roi_volumes,
        ncsnr=ncsnr,
        test_images=_test_images(design, images),
        anatomy=anatomy if anatomy is not None else mean_beta,
        source={
            "format": "nsd",
            "root": str(Path(root).resolve()),
            "subject": subject,
            "sessions": [s.number for s in betas],
            "betas": [str(s.path) for s in betas],
            "mask": mask_description,
            "rois": list(rois),
            "glm": glm,
            "dtype": dtype.name,
            "zscore": zscore,
            "units": "z-score within session" if zscore else "% signal change",
            "nan_policy": nan_policy,
            "dropped_voxels": int(dropped.sum()),
        },
    )


def _float_dtype(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise MineInputError(f"dtype must be a float type such as float32, not {dtype}.")
    return dtype


# ---------------------------------------------------------------------------------------------------------
# Finding the files


class NsdTree:
    """Where an NSD subject's files are under a root: at NSD's own paths, else found by name (one walk).

    The walk skips hidden folders, other subjects' folders and 1 mm data, and prefers, among files of the
    same name, those inside this subject's folder and the 1.8 mm functional space.
    """

    def __init__(self, root, subject: int):
        self.root = Path(root)
        if not self.root.is_dir():
            raise MineInputError(f"The NSD root {self.root} is not a folder; pass the folder that holds the NSD files.")
        if not isinstance(subject, (int, np.integer)) or not 1 <= subject <= 99:
            raise MineInputError(f"subject must be an NSD subject number such as 1, not {subject!r}.")
        self.subject_folder = f"subj{subject:02d}"
        self._files_by_name = None

    def find(self, *relatives: str) -> Path | None:
        """The first ``root/relative`` that exists, else the preferred file of the first one's name under root."""
        known = next((self.root / r for r in relatives if (self.root / r).is_file()), None)
        if known is not None:
            return known
        candidates = self._index().get(Path(relatives[0]).name, [])
        return min(candidates, key=self._preference) if candidates else None

    def require(self, relative: str) -> Path:
        """Like :meth:`find`, refusing a missing file with where it was looked for."""
        path = self.find(relative)
        if path is None:
            raise MineInputError(
                f"No {Path(relative).name} under {self.root} (looked at {self.root / relative} and in every "
                "subfolder); point root at the NSD folder that contains it."
            )
        return path

    def find_volume(self, name: str) -> Path | None:
        """An ROI or functional-space volume by name (``floc-faces``, ``brainmask``)."""
        func = f"nsddata/ppdata/{self.subject_folder}/func1pt8mm"
        return self.find(f"{func}/roi/{name}.nii.gz", f"{func}/{name}.nii.gz")

    def betas_folder(self, glm: str, space: str = "func1pt8mm", pattern: re.Pattern = _BETAS_FILE,
                     what: str = "betas_sessionNN.nii.gz or .hdf5") -> Path:
        """The folder holding this subject's beta files in ``space`` (``glm`` preferred when several exist).

        ``pattern`` matches the beta file names of that space, ``what`` names them in the message.
        """
        known = self.root / f"nsddata_betas/ppdata/{self.subject_folder}/{space}/{glm}"
        if known.is_dir() and any(pattern.match(p.name) for p in known.iterdir()):
            return known
        folders = sorted({p.parent for paths in self._index().values() for p in paths if pattern.match(p.name)})
        if not folders:
            raise MineInputError(
                f"No {what} files for {self.subject_folder} under {self.root}; "
                "point root at the NSD folder that contains them."
            )
        preferred = [folder for folder in folders if folder.name == glm]
        if len(preferred) == 1 or len(folders) == 1:
            return (preferred or folders)[0]
        raise MineInputError(
            f"Beta files are in several folders ({', '.join(map(str, folders))}); pass glm= the folder name to use."
        )

    def find_fsaverage(self, relative: str) -> Path | None:
        """A file of NSD's fsaverage subject (``nsddata/freesurfer/fsaverage/<relative>``), else found by name
        inside a folder called ``fsaverage`` (a subject's own surfaces share the names but not the vertices)."""
        known = self.root / "nsddata/freesurfer/fsaverage" / relative
        if known.is_file():
            return known
        candidates = [p for p in self._index().get(Path(relative).name, []) if "fsaverage" in p.parts]
        return min(candidates, key=self._preference) if candidates else None

    def _index(self) -> dict[str, list[Path]]:
        if self._files_by_name is None:
            self._files_by_name = {}
            for folder, subfolders, names in os.walk(self.root):
                subfolders[:] = [name for name in subfolders if not self._skipped(name)]
                for name in names:
                    self._files_by_name.setdefault(name, []).append(Path(folder) / name)
        return self._files_by_name

    def _skipped(self, folder_name: str) -> bool:
        other_subject = re.fullmatch(r"subj\d\d", folder_name) and folder_name != self.subject_folder
        return folder_name.startswith(".") or folder_name == "func1mm" or bool(other_subject)

    def _preference(self, path: Path):
        parts = path.relative_to(self.root).parts
        return (self.subject_folder not in parts, "func1pt8mm" not in parts, len(parts), str(path))


def session_files(folder: Path) -> dict[int, Path]:
    """Session number → beta file in ``folder`` (NIfTI preferred over HDF5 when both exist)."""
    if not folder.is_dir():
        return {}
    sessions = {}
    for path in sorted(folder.iterdir(), key=lambda p: p.name.endswith(".hdf5")):  # NIfTI first
        match = _BETAS_FILE.match(path.name)
        if match:
            sessions.setdefault(int(match.group(1)), path)
    return dict(sorted(sessions.items()))


def _select_sessions(available: dict, sessions) -> list:
    if sessions is None:
        return list(available.values())
    wanted = sorted({int(s) for s in sessions})
    missing = [s for s in wanted if s not in available]
    if missing:
        raise MineInputError(f"Sessions {missing} have no beta file; choose among those found, {sorted(available)}.")
    return [available[s] for s in wanted]


# ---------------------------------------------------------------------------------------------------------
# The experimental design: trials → images


def read_expdesign(path) -> dict[str, np.ndarray]:
    """Read ``nsd_expdesign.mat`` (MATLAB v5 or v7.3) → ``masterordering``, ``subjectim``, ``sharedix`` (1-based)."""
    from scipy.io import loadmat

    with reading(path):
        try:
            contents = loadmat(path)
        except NotImplementedError:  # MATLAB v7.3 files are HDF5, with axes reversed
            contents = _read_mat73(path)
    for key in ("masterordering", "subjectim"):
        if key not in contents:
            raise MineInputError(f"{path} has no '{key}'; give the nsd_expdesign.mat of NSD or of the synthetic world.")
    design = {
        "masterordering": np.asarray(contents["masterordering"]).astype(np.int64).ravel(),
        "subjectim": np.atleast_2d(np.asarray(contents["subjectim"]).astype(np.int64)),
    }
    if "sharedix" in contents:
        design["sharedix"] = np.asarray(contents["sharedix"]).astype(np.int64).ravel()
    return design


def nsd_study_subjects(root, subjects, space: str = "volume") -> list[int]:
    """The subjects of a study on NSD ``root``: ``"all"`` becomes every subject of the design with betas in
    ``space``; the design's shared images (``sharedix``) must be among every subject's images (``subjectim``),
    since the subjects are compared on them."""
    tree = NsdTree(root, 1)
    design = read_expdesign(tree.require("nsddata/experiments/nsd/nsd_expdesign.mat"))
    n_design = design["subjectim"].shape[0]
    if subjects == "all":
        layout = "fsaverage" if space == "fsaverage" else "func1pt8mm"
        subjects = [s for s in range(1, n_design + 1)
                    if (Path(root) / f"nsddata_betas/ppdata/subj{s:02d}/{layout}").is_dir()]
        if not subjects:
            raise MineInputError(f"No subject of {root} has {space} betas (nsddata_betas/ppdata/subjNN/{layout}); "
                                 "point at the NSD root that holds them.")
    outside = [s for s in subjects if s > n_design]
    if outside:
        raise MineInputError(f"subjectim has {n_design} subjects, so subject {outside[0]} is not in the design; "
                             f"choose among 1-{n_design}.")
    shared = design.get("sharedix")
    if shared is not None:
        for subject in subjects:
            unseen = np.setdiff1d(shared, design["subjectim"][subject - 1])
            if unseen.size:
                raise MineInputError(
                    f"sharedix lists {unseen.size} images that subj{subject:02d} never sees in subjectim (e.g. "
                    f"stimulus {unseen[0]}); the shared-image list does not match the experiment design — use the "
                    "nsd_expdesign.mat that came with these betas.")
    return list(subjects)


def _read_mat73(path) -> dict[str, np.ndarray]:
    import h5py

    with h5py.File(path, "r") as handle:
        return {key: np.asarray(value).T for key, value in handle.items() if isinstance(value, h5py.Dataset)}


def trial_stimulus_ids(design, subject: int, sessions, full_session: int) -> np.ndarray:
    """0-based NSD stimulus id of each trial of the given sessions, in session order.

    ``sessions`` holds ``(number, n_trials)`` pairs. Trial ``t`` of session ``s`` is design trial
    ``(s - 1) * full_session + t``; ``masterordering`` maps it to a column of the subject's row of
    ``subjectim``, which holds the 1-based 73k stimulus id.
    """
    order, subject_images = design["masterordering"], design["subjectim"]
    trials = np.concatenate([(number - 1) * full_session + np.arange(n) for number, n in sessions])
    if trials.max() >= len(order):
        raise MineInputError(
            f"Session {sessions[-1][0]} needs design trials up to {trials.max() + 1} but masterordering has "
            f"{len(order)}; load fewer sessions or use the matching nsd_expdesign.mat."
        )
    if subject > subject_images.shape[0]:
        raise MineInputError(f"subjectim has {subject_images.shape[0]} subjects, so subject {subject} is not in it.")
    columns = order[trials] - 1
    if columns.min() < 0 or columns.max() >= subject_images.shape[1]:
        raise MineInputError("masterordering points outside subjectim's columns; the design file is inconsistent.")
    return subject_images[subject - 1, columns] - 1


def _subject_images(stimuli_path: Path, stimulus_of_trial: np.ndarray) -> tuple[ImageStore, np.ndarray]:
    """The images shown in the loaded trials (sorted NSD ids), and each trial's position among them."""
    import h5py

    with reading(stimuli_path), h5py.File(stimuli_path, "r") as handle:
        if "imgBrick" not in handle:
            raise MineInputError(f"{stimuli_path} has no 'imgBrick' dataset; give NSD's nsd_stimuli.hdf5.")
        n_stimuli = handle["imgBrick"].shape[0]
    if stimulus_of_trial.min() < 0 or stimulus_of_trial.max() >= n_stimuli:
        raise MineInputError(
            f"subjectim refers to stimulus {stimulus_of_trial.max() + 1} but {stimuli_path} holds {n_stimuli}; "
            "use the design file that matches these stimuli."
        )
    ids, trial_images = np.unique(stimulus_of_trial, return_inverse=True)
    return ImageStore.from_hdf5(stimuli_path, ids), trial_images


def _test_images(design, images: ImageStore) -> np.ndarray | None:
    if "sharedix" not in design:
        return None
    positions = np.flatnonzero(np.isin(images.ids, design["sharedix"] - 1))
    return positions if positions.size else None


# ---------------------------------------------------------------------------------------------------------
# Volumes: grid, ROIs, mask


def _reference_grid(betas, tree: NsdTree) -> Grid:
    """The betas' grid; HDF5 betas carry no affine, so it comes from the first NIfTI on that grid."""
    first = betas[0]
    if first.affine is not None:
        return Grid(first.shape, first.affine, str(first.path))
    for name in ("nsdgeneral", "brainmask", "T1_to_func1pt8mm"):
        path = tree.find_volume(name)
        if path is not None:
            return Grid(first.shape, open_nifti(path).affine, str(first.path))
    return Grid(first.shape, np.eye(4), str(first.path))


def _read_rois(tree: NsdTree, names, grid: Grid) -> dict:
    rois = {}
    for name in names:
        path = tree.find_volume(name)
        if path is not None:
            table = tree.find(f"nsddata/freesurfer/{tree.subject_folder}/label/{name}.mgz.ctab")
            labels = read_label_table(table) if table else NSD_ROI_LABELS.get(name)
            rois[name] = read_roi(path, name, grid, labels)
    return rois


def _resolve_mask(mask, tree: NsdTree, grid: Grid, rois: dict) -> tuple[np.ndarray, str]:
    """A boolean mask volume on the grid, and how it was given (for the manifest)."""
    if isinstance(mask, (str, Path)):
        name = str(mask)
        if Path(name).is_file():
            volume = read_volume(name, grid)
        elif name in rois:
            volume = rois[name].volume
        elif (path := tree.find_volume(name)) is not None:
            volume = read_volume(path, grid)
        else:
            raise MineInputError(
                f"No mask volume {name!r}: it is not a file and no {name}.nii.gz is in the subject's roi or "
                "func1pt8mm folder; pass an ROI name, a NIfTI path or a boolean array."
            )
    else:
        volume, name = np.asarray(mask), ARRAY_MASK
        if volume.shape != grid.shape:
            raise MineInputError(f"The mask array has shape {volume.shape} but the betas' grid is {grid.shape}.")
    selected = np.asarray(volume > 0) if volume.dtype != bool else volume
    if not selected.any():
        raise MineInputError(f"The mask {name} selects no voxel; choose a mask with voxels > 0 on the betas' grid.")
    return selected, name


# ---------------------------------------------------------------------------------------------------------
# Betas


@dataclass
class _Betas:
    """One session's beta file, described from its header only."""

    number: int
    path: Path
    n_trials: int
    shape: tuple[int, int, int]
    affine: np.ndarray | None
    scale: float  # divide the stored values by this to get % signal change


def _open_betas(path: Path) -> _Betas:
    number = int(_BETAS_FILE.match(path.name).group(1))
    if path.name.endswith(".hdf5"):
        import h5py

        with reading(path), h5py.File(path, "r") as handle:
            if "betas" not in handle or handle["betas"].ndim != 4:
                raise MineInputError(f"{path} has no 4-D 'betas' dataset (trials, Z, Y, X); give NSD's HDF5 betas.")
            data = handle["betas"]
            return _Betas(number, path, data.shape[0], data.shape[:0:-1], None, _scale(data.dtype))
    image = open_nifti(path)
    if len(image.shape) != 4:
        raise MineInputError(f"{path} is {len(image.shape)}-D; NSD betas are 4-D (X, Y, Z, trials).")
    return _Betas(number, path, image.shape[3], image.shape[:3], image.affine, _scale(image.get_data_dtype()))


def _scale(stored_dtype) -> float:
    """Integer betas are NSD's % signal change × 300; float betas are taken as % signal change already."""
    return NSD_BETA_SCALE if np.dtype(stored_dtype).kind in "iu" else 1.0


def _full_session_length(found: dict) -> int:
    """Trials in a full session (750 in NSD): every session file has it, except the last may be shorter."""
    full = max(session.n_trials for session in found.values())
    last = max(found)
    short = [number for number, session in found.items() if session.n_trials < full and number != last]
    if short:
        raise MineInputError(
            f"Sessions {short} hold fewer trials than the {full} of the others, and only the last session may; "
            "check for truncated or foreign beta files."
        )
    return full


def _read_betas(betas, mask, dtype, zscore: bool, nan_policy: str, want_mean: bool):
    """All sessions' masked betas ``(n_trials, n_voxels)``, the mean beta volume (or None), NaN voxels."""
    first_rows = np.cumsum([0] + [session.n_trials for session in betas])
    responses = np.empty((first_rows[-1], int(mask.sum())), dtype=dtype)
    mean_beta = np.zeros(mask.shape, dtype=np.float64) if want_mean else None
    nan_in_any = np.zeros(responses.shape[1], dtype=bool)
    for session, first_row in zip(betas, first_rows):
        block = responses[first_row : first_row + session.n_trials]
        for start, chunk in _session_chunks(session):
            block[start : start + chunk.shape[3]] = chunk[mask].T
            if mean_beta is not None:
                mean_beta += chunk.sum(axis=3, dtype=np.float64) / session.scale
        if session.scale != 1.0:
            block /= dtype.type(session.scale)
        nan_in_any |= nan_voxels(block, f"{session.path.name} (session {session.number})", nan_policy)
        if zscore:
            _zscore_in_place(block)
        if nan_policy != "raise":  # "drop-voxels" zeroes them too: those columns are removed at the end
            np.nan_to_num(block, copy=False, nan=0.0)
    if mean_beta is not None:
        mean_beta = (mean_beta / len(responses)).astype(np.float32)
    return responses, mean_beta, nan_in_any if nan_policy == "drop-voxels" else np.zeros_like(nan_in_any)


def _session_chunks(session: _Betas):
    """Yield ``(first_trial, block (X, Y, Z, k))`` of one session file, a bounded block of trials at a time."""
    if session.affine is not None:
        yield from nifti_trial_chunks(open_nifti(session.path, keep_open=True), session.path)
        return
    import h5py

    with reading(session.path), h5py.File(session.path, "r") as handle:
        data = handle["betas"]
        step = trials_per_chunk(session.shape, data.dtype.itemsize)
        for start in range(0, session.n_trials, step):
            yield start, data[start : start + step].transpose(3, 2, 1, 0)  # (k, Z, Y, X) → (X, Y, Z, k)


def _zscore_in_place(block: np.ndarray) -> None:
    """Z-score each voxel over the session's trials (NaN ignored); a constant voxel becomes 0."""
    mean = np.nanmean(block, axis=0, dtype=np.float64)
    std = np.nanstd(block, axis=0, dtype=np.float64)
    std[~(std > 0)] = 1.0
    block -= mean.astype(block.dtype)
    block /= std.astype(block.dtype)
