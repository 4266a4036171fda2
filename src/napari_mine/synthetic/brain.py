"""A simulated visual cortex with known tuning: the ground truth the whole MINE pipeline is scored against.

Responses are computed from the scene description only (categories, colours, positions, sizes and the
visible area of each object), never from any model's features, so encoder, attribution and profile scores
are not circular. The response is deliberately non-linear — objects are pooled with a soft maximum and
the pooled drive saturates — so a linear read-out falls honestly short of the noise ceiling.

Volumes are ``[x, y, z]`` on a 1.8 mm grid: x runs left to right, y posterior to anterior, z inferior to
superior; the left hemisphere (small x) sees the right visual field, ventral areas the upper field.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..errors import MineInputError
from . import scenes as S

VOXEL_MM = 1.8
ROI_FILES: dict[str, tuple[str, ...]] = {
    "prf-visualrois": ("V1v", "V1d", "V2v", "V2d", "V3v", "V3d", "hV4"),
    "floc-faces": ("OFA", "FFA-1", "FFA-2", "mTL-faces", "aTL-faces"),
    "floc-places": ("OPA", "PPA", "RSC"),
    "floc-bodies": ("EBA", "FBA-1", "FBA-2", "mTL-bodies"),
    "floc-words": ("OWFA", "VWFA-1", "VWFA-2", "mfs-words", "mTL-words"),
}
FLOC_CATEGORY = {"floc-faces": "face", "floc-places": "house", "floc-bodies": "body", "floc-words": "word"}
PATCH_CATEGORY = {"food-patch": "food", "car-patch": "car", "tree-patch": "tree", "animal-patch": "animal"}
CATEGORY_OF_ROI = {name: FLOC_CATEGORY[f] for f, names in ROI_FILES.items() if f in FLOC_CATEGORY for name in names}
CATEGORY_OF_ROI.update(PATCH_CATEGORY)
# Each category ROI is split into two parts with opposite preferences of one kind (colour pairs are drawn): halves in
# a one-subject world, a drawn fraction in a study's subjects.
SUBPOPULATION_KINDS = ("hemifield", "size", "colour")
_FIXED_PAIRS = {"hemifield": ("left-field", "right-field"), "size": ("large", "small")}

# Anchor of each region on the cortical ellipsoid (|lateral|, posterior→anterior, inferior→superior) and its
# size in voxels per hemisphere at roi_scale = 1.
_ANCHORS: dict[str, tuple[tuple[float, float, float], int]] = {
    "V1v": ((0.12, -0.98, -0.12), 70), "V1d": ((0.12, -0.98, 0.14), 70),
    "V2v": ((0.2, -0.9, -0.34), 55), "V2d": ((0.2, -0.9, 0.36), 55),
    "V3v": ((0.32, -0.8, -0.52), 45), "V3d": ((0.32, -0.8, 0.54), 45),
    "hV4": ((0.48, -0.66, -0.6), 40),
    "OFA": ((0.8, -0.6, -0.12), 40), "FFA-1": ((0.66, -0.42, -0.64), 45), "FFA-2": ((0.62, -0.18, -0.78), 40),
    "mTL-faces": ((0.5, 0.05, -0.86), 20), "aTL-faces": ((0.5, 0.3, -0.8), 20),
    "OPA": ((0.62, -0.62, 0.48), 45), "PPA": ((0.22, -0.42, -0.88), 50), "RSC": ((0.16, -0.62, 0.77), 35),
    "EBA": ((0.92, -0.4, 0.1), 55), "FBA-1": ((0.86, -0.3, -0.45), 35), "FBA-2": ((0.84, -0.05, -0.55), 30),
    "mTL-bodies": ((0.25, 0.05, -0.96), 20),
    "OWFA": ((0.72, -0.7, -0.4), 30), "VWFA-1": ((0.42, -0.55, -0.8), 40), "VWFA-2": ((0.4, -0.3, -0.9), 35),
    "mfs-words": ((0.35, -0.08, -0.93), 20), "mTL-words": ((0.2, 0.25, -0.95), 20),
    "food-patch": ((0.9, -0.15, -0.2), 30), "car-patch": ((0.85, -0.3, 0.45), 30),
    "tree-patch": ((0.45, -0.5, 0.78), 30), "animal-patch": ((0.95, 0.1, 0.05), 30),
}
# Weak cross-category responses that real category regions show (faces ↔ animals, places ↔ trees, …).
_RELATED = {("face", "animal"): 0.35, ("face", "body"): 0.15, ("body", "animal"): 0.3, ("body", "face"): 0.2,
            ("house", "tree"): 0.25, ("house", "car"): 0.2, ("word", "food"): 0.05}
COLOR_CONTRAST = {"red": 0.9, "green": 0.8, "blue": 0.95, "yellow": 0.7, "purple": 0.9, "orange": 0.8}
BACKGROUND_CONTRAST = {"plain": 0.05, "outdoor": 0.25, "indoor": 0.3, "noise": 0.45}
CATEGORY_NCSNR = 0.9  # median single-trial SNR of category voxels (NSD's are mostly 0.4–1.2)
C50_RANGE = (0.5, 1.0)  # saturation constants: response = amplitude · d (1 + c50) / (d + c50)
FIELD_WIDTH = 0.1  # width (image fraction) of the hemifield preference's transition at the vertical meridian
CONTENT_SIZE = 32  # resolution of the object-content maps pRFs integrate over
MASK_SIZE = 64  # resolution at which visible areas are measured


@dataclass
class VoxelTuning:
    """Per-voxel truth, arrays of length ``n_voxels`` in ``np.flatnonzero(brain.mask)`` order."""

    roi: np.ndarray  # str: named ROI ("FFA-1", "V1v"), category patch ("food-patch") or "" (unlabelled)
    kind: np.ndarray  # str: "retinotopic", "category", "mixed" or "noise"
    hemisphere: np.ndarray  # str: "left" or "right"
    category: np.ndarray  # int: preferred category index into scenes.CATEGORIES, -1 for none
    category_weights: np.ndarray  # float (n_voxels, n_categories)
    subpopulation: np.ndarray  # str: "left-field", "right-field", "large", "small", "colour:<name>" or ""
    field_side: np.ndarray  # +1 prefers the left visual field, -1 the right
    field_gain: np.ndarray  # 0 = no hemifield preference, 1 = responds on one side only
    size_exponent: np.ndarray  # drive ∝ (size / LARGE_SIZE) ** exponent
    color_preference: np.ndarray  # int index into scenes.COLORS, -1 for none
    color_gain: np.ndarray  # extra drive for the preferred colour
    prf_x: np.ndarray  # retinotopic pRF centre and width in image fractions (NaN when not retinotopic)
    prf_y: np.ndarray
    prf_sigma: np.ndarray
    amplitude: np.ndarray  # % signal change at unit drive
    c50: np.ndarray  # saturation constant of the pooled drive
    baseline: np.ndarray  # % signal change with no drive
    noise_sd: np.ndarray  # single-trial noise (% signal change)
    target_ncsnr: np.ndarray  # signal sd / noise sd the noise was set for

    @property
    def retinotopic(self) -> np.ndarray:
        """Voxels with a pRF (they sum object contrast in space instead of pooling objects)."""
        return np.isfinite(self.prf_x)


@dataclass(frozen=True)
class SubjectTraits:
    """What sets one subject of a study apart (drawn in :mod:`.study`); a one-subject world has none.

    ``subpopulations`` holds each category ROI label's two sub-population labels, ``split`` the fraction of its
    voxels (per hemisphere) in the first one, ``secondary`` each category region's cross-category weights
    (n_categories, added to every voxel's; a one-subject world's are :func:`related_weights`) and ``anchors`` its
    ROI placement (``_ANCHORS`` with jittered directions).
    """

    subject: int  # 1-based; the subject's brain draws from a random stream of its own
    anchors: dict[str, tuple[tuple[float, float, float], int]]
    subpopulations: dict[str, tuple[str, str]]
    split: dict[str, float]
    secondary: dict[str, np.ndarray]


@dataclass
class SimulatedBrain:
    """Grid, masks, ROI volumes and tuning of one simulated subject."""

    affine: np.ndarray
    brainmask: np.ndarray  # bool (X, Y, Z)
    cortex: np.ndarray  # bool (X, Y, Z): ROI volumes are -1 outside it
    mask: np.ndarray  # bool (X, Y, Z): the "nsdgeneral" voxels that carry the simulated responses
    anatomy: np.ndarray  # float32 (X, Y, Z), T1-like
    roi_volumes: dict[str, np.ndarray]  # file name -> int16 volume (-1 outside cortex, 0 unlabelled)
    roi_labels: dict[str, dict[int, str]]
    tuning: VoxelTuning
    pooling_exponent: float
    seed: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.mask.shape)

    @property
    def n_voxels(self) -> int:
        return int(self.mask.sum())


# ----------------------------------------------------------------------------------------------- anatomy


def make_brain(seed: int = 0, shape: tuple[int, int, int] = (40, 48, 40), n_general: int = 3000,
               roi_scale: float = 1.0, cortex_thickness: float = 3.5, pooling_exponent: float = 4.0,
               n_calibration: int = 400, traits: SubjectTraits | None = None) -> SimulatedBrain:
    """Build a simulated subject: anatomy, ROIs inside an nsdgeneral-like mask, and per-voxel tuning.

    Parameters
    ----------
    seed : int
        Everything about the brain follows from it.
    shape : tuple of int
        Volume grid (1.8 mm voxels).
    n_general : int
        Number of nsdgeneral voxels (visual cortex); must hold all ROIs.
    roi_scale : float
        Multiplies every ROI's voxel count.
    cortex_thickness : float
        Cortical shell thickness in voxels.
    pooling_exponent : float
        Exponent of the soft-max pooling over objects (large = the strongest object dominates).
    n_calibration : int
        Random scenes used to set each voxel's noise level from its signal spread.
    traits : SubjectTraits, optional
        One subject of a study: its ROI placement, sub-populations and cross-category weights, and its own
        random stream (``[seed, subject, 101]``); without it, the one-subject world's brain.

    Returns
    -------
    SimulatedBrain
    """
    if min(shape) < 16:
        raise MineInputError(f"Grid {shape} is too small for a brain; use at least 16 voxels per axis.")
    rng = np.random.default_rng([int(seed), 101] if traits is None else [int(seed), traits.subject, 101])
    brainmask, cortex, radius = _ellipsoid_masks(shape, cortex_thickness)
    centre = (np.array(shape) - 1) / 2
    if traits is None:
        regions = _layout_regions(cortex, centre, shape, roi_scale, _ANCHORS)
    else:
        regions = _layout_regions(cortex, centre, shape, roi_scale, traits.anchors, exact_sizes=True)
    mask = _general_mask(cortex, regions, n_general)
    roi_volumes, roi_labels = _roi_volumes(cortex, regions)
    voxel_roi = np.full(mask.shape, "", dtype="<U16")
    for name, region in regions.items():
        voxel_roi[tuple(region.T)] = name
    coords = np.argwhere(mask)
    tuning = _make_tuning(rng, coords, voxel_roi[mask], centre, traits)
    brain = SimulatedBrain(_affine(shape), brainmask, cortex, mask, _anatomy(radius, rng), roi_volumes, roi_labels,
                           tuning, float(pooling_exponent), int(seed))
    _calibrate_noise(brain, rng, n_calibration)
    return brain


def _affine(shape) -> np.ndarray:
    """1.8 mm RAS grid whose centre sits near the middle of an MNI-like brain (a non-zero origin)."""
    affine = np.diag([VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])
    affine[:3, 3] = -(np.array(shape) - 1) / 2 * VOXEL_MM + np.array([0.0, -18.0, 9.0])
    return affine


def _ellipsoid_masks(shape, thickness):
    """Brain ellipsoid, its cortical shell, and each voxel's normalised radius."""
    axes = [(np.arange(n) - (n - 1) / 2) / (0.44 * n) for n in shape]
    radius = np.sqrt(sum(a**2 for a in np.meshgrid(*axes, indexing="ij")))
    brainmask = radius <= 1.0
    cortex = brainmask & (radius > 1.0 - thickness / (0.44 * np.mean(shape)))
    return brainmask, cortex, radius


def _anatomy(radius, rng) -> np.ndarray:
    """T1-like contrast: bright white matter, grey cortex, dark CSF, a faint skull."""
    t1 = np.select([radius <= 0.86, radius <= 1.0, radius <= 1.04, radius <= 1.12], [850.0, 560.0, 120.0, 320.0], 20.0)
    t1 = ndimage.gaussian_filter(t1 + rng.normal(0, 25, radius.shape), 0.8)
    return t1.astype(np.float32)


def _layout_regions(cortex, centre, shape, roi_scale, anchor_table, exact_sizes=False):
    """Place each ROI as a contiguous patch of cortex around its anchor, in both hemispheres.

    A region keeps the cortex nearest its anchor within the anchor's own territory (nearest anchor), so a crowded
    region may stay under its size. With ``exact_sizes`` (a study's subjects) every region claims the free cortex
    nearest its anchor on its own side of the midline until it has its size, so all subjects have the same ROI
    voxel counts per hemisphere and hence one fsaverage layout.

    Returns ``{name: coords (n, 3)}`` with every cortex voxel in at most one region.
    """
    coords = np.argwhere(cortex)
    radii = 0.44 * np.array(shape)
    anchors, names, sizes = [], [], []
    for name, (direction, n_voxels) in anchor_table.items():
        for side in (-1, 1):
            d = np.array(direction) * [side, 1, 1]
            anchors.append(centre + radii * d / np.linalg.norm(d))
            names.append((name, side))
            sizes.append(max(int(round(n_voxels * roi_scale)), 4))
    distances = np.linalg.norm(coords[:, None, :] - np.array(anchors)[None], axis=-1)
    if exact_sizes:
        sides = np.array([side for _, side in names])
        other_side = np.sign(coords[:, 0, None] - centre[0]) != sides[None]
        owner = _claim_with_quotas(np.where(other_side, np.inf, distances), sizes)
        regions = {}
        for k, (name, _) in enumerate(names):
            regions.setdefault(name, []).append(coords[owner == k])
        return {name: np.concatenate(parts) for name, parts in regions.items()}
    nearest = distances.argmin(1)
    regions: dict[str, list] = {}
    for k, (name, side) in enumerate(names):
        own = np.flatnonzero(nearest == k)
        keep = own[np.argsort(distances[own, k])[: sizes[k]]]
        regions.setdefault(name, []).append(coords[keep])
    return {name: np.concatenate(parts) for name, parts in regions.items()}


def _claim_with_quotas(distances, sizes) -> np.ndarray:
    """Owner region of each voxel (-1 none) when, nearest pairs first, each region claims free voxels up to its size."""
    owner, counts, needed = np.full(len(distances), -1), np.zeros(len(sizes), int), sum(sizes)
    order = np.argsort(distances, axis=None, kind="stable")
    finite = np.isfinite(distances.ravel()[order])
    voxels, regions = np.unravel_index(order[finite], distances.shape)
    for voxel, region in zip(voxels.tolist(), regions.tolist()):
        if owner[voxel] < 0 and counts[region] < sizes[region]:
            owner[voxel], counts[region], needed = region, counts[region] + 1, needed - 1
            if needed == 0:
                return owner
    raise MineInputError(f"The grid's cortex cannot hold every ROI at its size ({sum(sizes)} voxels); "
                         "enlarge brain_shape.")


def _general_mask(cortex, regions, n_general):
    """nsdgeneral: every ROI voxel plus the cortex nearest to them, up to ``n_general`` voxels."""
    roi_coords = np.concatenate(list(regions.values()))
    if n_general < len(roi_coords):
        raise MineInputError(f"n_general={n_general} cannot hold the {len(roi_coords)} ROI voxels; "
                             "raise n_general or lower roi_scale.")
    coords = np.argwhere(cortex)
    if n_general > len(coords):
        raise MineInputError(f"n_general={n_general} exceeds the {len(coords)} cortex voxels of this grid; "
                             "lower n_general or enlarge the grid.")
    distance = ndimage.distance_transform_edt(~_volume_of(roi_coords, cortex.shape))
    order = np.argsort(distance[tuple(coords.T)], kind="stable")
    mask = np.zeros(cortex.shape, bool)
    mask[tuple(coords[order[:n_general]].T)] = True
    return mask


def _volume_of(coords, shape):
    volume = np.zeros(shape, bool)
    volume[tuple(coords.T)] = True
    return volume


def _roi_volumes(cortex, regions):
    """NSD-style label volumes: -1 outside cortex, 0 unlabelled, k = k-th name of the file."""
    volumes, labels = {}, {}
    for file_name, names in ROI_FILES.items():
        volume = np.where(cortex, 0, -1).astype(np.int16)
        for k, name in enumerate(names, start=1):
            volume[tuple(regions[name].T)] = k
        volumes[file_name], labels[file_name] = volume, dict(enumerate(names, start=1))
    return volumes, labels


def general_volume(brain: SimulatedBrain) -> np.ndarray:
    """The nsdgeneral ROI volume: 1 inside, 0 elsewhere in cortex, -1 outside cortex."""
    return np.where(brain.mask, 1, np.where(brain.cortex, 0, -1)).astype(np.int16)


# ----------------------------------------------------------------------------------------------- tuning


def _make_tuning(rng, coords, voxel_roi, centre, traits: SubjectTraits | None) -> VoxelTuning:
    """Draw every voxel's tuning from its region: retinotopic, category (with sub-populations), mixed or noise.

    A one-subject world draws each category ROI's sub-population kind here, in halves; a study subject's kinds,
    splits and cross-category weights come from its ``traits``.
    """
    n = len(coords)
    n_cat, colors = len(S.CATEGORIES), list(S.COLORS)
    hemisphere = np.where(coords[:, 0] < centre[0], "left", "right")
    t = VoxelTuning(
        roi=voxel_roi.astype("<U16"), kind=np.full(n, "noise", "<U16"), hemisphere=hemisphere,
        category=np.full(n, -1), category_weights=np.zeros((n, n_cat)), subpopulation=np.full(n, "", "<U16"),
        field_side=np.where(hemisphere == "left", -1.0, 1.0), field_gain=np.full(n, 0.2),
        size_exponent=np.full(n, 0.6), color_preference=np.full(n, -1), color_gain=np.zeros(n),
        prf_x=np.full(n, np.nan), prf_y=np.full(n, np.nan), prf_sigma=np.full(n, np.nan),
        amplitude=np.zeros(n), c50=rng.uniform(*C50_RANGE, n), baseline=rng.uniform(-0.2, 0.5, n),
        noise_sd=np.zeros(n), target_ncsnr=np.zeros(n))
    for name in ROI_FILES["prf-visualrois"]:
        _tune_retinotopic(t, rng, coords, np.flatnonzero(t.roi == name), name)
    if traits is None:
        subpop_kinds = rng.permutation(np.resize(SUBPOPULATION_KINDS, len(CATEGORY_OF_ROI)))
    for k, (name, category) in enumerate(CATEGORY_OF_ROI.items()):
        members = np.flatnonzero(t.roi == name)
        secondary = related_weights(category) if traits is None else traits.secondary[name]
        _tune_category(t, rng, members, category, secondary)
        if name in PATCH_CATEGORY:
            continue
        if traits is None:
            _assign_subpopulations(t, rng, coords, members, subpopulation_pair(rng, subpop_kinds[k]), colors)
        else:
            _assign_subpopulations(t, rng, coords, members, traits.subpopulations[name], colors, traits.split[name])
    unlabelled = np.flatnonzero(t.roi == "")
    mixed = unlabelled[rng.random(len(unlabelled)) < 0.6]
    t.kind[mixed] = "mixed"
    t.category_weights[mixed] = rng.gamma(0.5, 0.3, (len(mixed), n_cat))
    t.amplitude[mixed] = rng.uniform(0.4, 0.8, len(mixed))
    t.target_ncsnr[mixed] = rng.uniform(0.1, 0.3, len(mixed))
    bad = np.flatnonzero((t.kind != "noise") & (rng.random(n) < 0.04))
    t.target_ncsnr[bad] = rng.uniform(0.0, 0.08, len(bad))
    return t


def _tune_retinotopic(t, rng, coords, members, name):
    """pRFs ordered on cortex: eccentricity grows anteriorly, polar angle along z; quadrant from hemisphere
    (contralateral field) and ventral/dorsal (upper/lower field)."""
    base_sigma = {"V1": 0.03, "V2": 0.05, "V3": 0.07, "hV": 0.1}[name[:2]]
    for hemi in ("left", "right"):
        part = members[t.hemisphere[members] == hemi]
        if len(part) == 0:
            continue
        along_y = _rank01(coords[part, 1])
        along_z = _rank01(coords[part, 2])
        eccentricity = 0.04 + 0.4 * along_y
        angle = (along_z if name.endswith("v") or name == "hV4" else 1 - along_z) * np.pi / 2
        field = 1.0 if hemi == "left" else -1.0  # left hemisphere sees the right field
        vertical = -1.0 if name.endswith("v") or name == "hV4" else 1.0  # ventral sees the upper field
        t.prf_x[part] = np.clip(0.5 + field * eccentricity * np.cos(angle), 0.02, 0.98)
        t.prf_y[part] = np.clip(0.5 + vertical * eccentricity * np.sin(angle), 0.02, 0.98)
        t.prf_sigma[part] = base_sigma + 0.2 * eccentricity
    t.kind[members] = "retinotopic"
    t.amplitude[members] = rng.uniform(1.0, 2.0, len(members))
    t.target_ncsnr[members] = np.clip(rng.lognormal(np.log(0.7), 0.3, len(members)), 0.3, 1.4)


def _rank01(values):
    ranks = np.argsort(np.argsort(values, kind="stable"), kind="stable")
    return ranks / max(len(values) - 1, 1)


def related_weights(category: str) -> np.ndarray:
    """The cross-category weights ``_RELATED`` gives a region preferring ``category``, (n_categories,)."""
    weights = np.zeros(len(S.CATEGORIES))
    for (cat, other), value in _RELATED.items():
        if cat == category:
            weights[S.CATEGORIES.index(other)] = value
    return weights


def _tune_category(t, rng, members, category, secondary):
    """Strong drive from the preferred category, weak drive from the others: random per voxel plus the region's
    structured ``secondary`` weights."""
    preferred = S.CATEGORIES.index(category)
    weights = rng.uniform(0.02, 0.12, (len(members), len(S.CATEGORIES))) + secondary
    weights[:, preferred] = 1.0
    t.kind[members] = "category"
    t.category[members] = preferred
    t.category_weights[members] = weights
    t.amplitude[members] = rng.uniform(1.2, 2.5, len(members))
    t.target_ncsnr[members] = np.clip(rng.lognormal(np.log(CATEGORY_NCSNR), 0.25, len(members)), 0.4, 1.3)


def subpopulation_pair(rng, kind: str) -> tuple[str, str]:
    """The two opposite sub-population labels of a kind (a colour pair is drawn from ``rng``)."""
    if kind != "colour":
        return _FIXED_PAIRS[kind]
    colors = list(S.COLORS)
    first, second = rng.choice(len(colors), 2, replace=False)
    return f"colour:{colors[first]}", f"colour:{colors[second]}"


def subpopulation_kind(label: str) -> str:
    """The kind ("hemifield", "size" or "colour") of a sub-population label."""
    if label.startswith("colour:"):
        return "colour"
    return next(kind for kind, pair in _FIXED_PAIRS.items() if label in pair)


def _assign_subpopulations(t, rng, coords, members, names, colors, split=None):
    """Split the ROI (in each hemisphere) into two contiguous parts with opposite preferences: halves at the
    median, or a ``split`` fraction of the voxels in the first part."""
    direction = rng.normal(size=3)
    for hemi in ("left", "right"):
        part = members[t.hemisphere[members] == hemi]
        projection = (coords[part] - coords[part].mean(0)) @ direction
        cut = np.median(projection) if split is None else np.quantile(projection, split)
        halves = (part[projection <= cut], part[projection > cut])
        for label, voxels in zip(names, halves):
            t.subpopulation[voxels] = label
            _apply_subpopulation(t, voxels, label, colors)


def _apply_subpopulation(t, voxels, label, colors):
    if label in ("left-field", "right-field"):
        t.field_side[voxels] = 1.0 if label == "left-field" else -1.0
        t.field_gain[voxels] = 0.8
    elif label in ("large", "small"):
        t.size_exponent[voxels] = 2.5 if label == "large" else -1.5
    else:
        t.color_preference[voxels] = colors.index(label.split(":", 1)[1])
        t.color_gain[voxels] = 2.0


def _calibrate_noise(brain, rng, n_calibration):
    """Noise sd = signal sd over random scenes / target ncsnr, so measured ncsnr lands where intended."""
    scenes = [S.sample_scene(rng) for _ in range(n_calibration)]
    signal_sd = true_response(brain, scenes).std(0).astype(float)
    t = brain.tuning
    reference = float(np.median(signal_sd[t.kind == "category"] / t.target_ncsnr[t.kind == "category"]))
    with np.errstate(divide="ignore"):
        noise = np.where(t.target_ncsnr > 0, signal_sd / np.maximum(t.target_ncsnr, 1e-3), reference)
    t.noise_sd = np.minimum(noise, 20 * reference)


# ----------------------------------------------------------------------------------------------- responses


@dataclass
class SceneContent:
    """What the brain sees of a batch of scenes: per-object attributes (padded with -1) and content maps."""

    category: np.ndarray  # int (n, K)
    color: np.ndarray  # int (n, K)
    x: np.ndarray  # float (n, K)
    size: np.ndarray  # float (n, K)
    visible: np.ndarray  # float (n, K): visible fraction of the object after occlusion
    background: np.ndarray  # float (n, CONTENT_SIZE**2): background contrast where no object is visible
    objects: np.ndarray  # float (n, K, CONTENT_SIZE**2): each object's visible contrast per location


def scene_content(scenes) -> SceneContent:
    """Tabulate the scene descriptions and their visible masks (the brain's only input)."""
    n, k, cells = len(scenes), max([len(s.objects) for s in scenes] + [1]), CONTENT_SIZE**2
    table = SceneContent(np.full((n, k), -1), np.full((n, k), -1), np.full((n, k), 0.5), np.full((n, k), 1.0),
                         np.zeros((n, k)), np.zeros((n, cells)), np.zeros((n, k, cells)))
    colors = list(S.COLORS)
    for i, scene in enumerate(scenes):
        full = S.silhouettes(scene, MASK_SIZE)
        visible = S.occlude(full)
        table.background[i] = BACKGROUND_CONTRAST[scene.background] * _pool(~visible.any(0))
        for j, obj in enumerate(scene.objects):
            table.category[i, j] = S.CATEGORIES.index(obj.category)
            table.color[i, j] = colors.index(obj.color)
            table.x[i, j], table.size[i, j] = obj.x, obj.size
            table.visible[i, j] = visible[j].sum() / max(full[j].sum(), 1)
            table.objects[i, j] = COLOR_CONTRAST[obj.color] * _pool(visible[j])
    return table


def _pool(mask: np.ndarray) -> np.ndarray:
    """Fraction of each CONTENT_SIZE² cell covered by a MASK_SIZE² mask, flattened."""
    f = MASK_SIZE // CONTENT_SIZE
    return mask.reshape(CONTENT_SIZE, f, CONTENT_SIZE, f).mean((1, 3)).ravel()


def true_response(brain: SimulatedBrain, scenes, chunk: int = 256) -> np.ndarray:
    """Noiseless response (% signal change) of every nsdgeneral voxel to each scene.

    Parameters
    ----------
    brain : SimulatedBrain
    scenes : sequence of scenes.Scene
        Any scenes, including edited ones; only their content matters.
    chunk : int
        Scenes per batch (bounds memory).

    Returns
    -------
    float32 array (n_scenes, n_voxels), voxels in ``np.flatnonzero(brain.mask)`` order.
    """
    out = np.empty((len(scenes), brain.n_voxels), np.float32)
    for start in range(0, len(scenes), chunk):
        out[start : start + chunk] = content_response(brain, scene_content(list(scenes[start : start + chunk])))
    return out


def content_response(brain: SimulatedBrain, table: SceneContent) -> np.ndarray:
    """:func:`true_response` to already tabulated scenes (float64), so a fixed scene set is tabulated once."""
    t = brain.tuning
    drives = _object_drives(t, table)
    category = (drives[:, :, ~t.retinotopic] ** brain.pooling_exponent).sum(1) ** (1 / brain.pooling_exponent)
    drive = np.empty((len(table.x), len(t.amplitude)))
    drive[:, ~t.retinotopic] = category
    drive[:, t.retinotopic] = drives[:, :, t.retinotopic].sum(1) + table.background @ _prfs(t).T
    return t.baseline + t.amplitude * drive * (1 + t.c50) / (drive + t.c50)


def object_drives(brain: SimulatedBrain, scenes) -> np.ndarray:
    """Each object's own drive of each voxel before pooling and saturation, ``float32 (n_scenes, K, n_voxels)``
    (K = most objects in a scene; zero for absent objects). Its arg-max over objects is the object that
    really drives a voxel on an image: the target of attribution scores such as the pointing game."""
    return _object_drives(brain.tuning, scene_content(list(scenes))).astype(np.float32)


def _object_drives(t: VoxelTuning, table: SceneContent) -> np.ndarray:
    """Category voxels: weight × visibility × size × hemifield × colour; retinotopic voxels: pRF integral of
    the object's visible contrast."""
    n, k = table.category.shape
    drives = np.zeros((n, k, len(t.amplitude)))
    retinotopic = t.retinotopic
    prfs = _prfs(t)
    for j in range(k):
        present = table.category[:, j] >= 0
        weight = t.category_weights[:, table.category[:, j]].T * present[:, None]
        size = (table.size[:, j, None] / S.LARGE_SIZE) ** t.size_exponent
        side = 1 / (1 + np.exp(-t.field_side * (0.5 - table.x[:, j, None]) / FIELD_WIDTH))
        field = (1 - t.field_gain) + 2 * t.field_gain * side
        color = 1 + t.color_gain * (table.color[:, j, None] == t.color_preference)
        drives[:, j] = weight * np.sqrt(table.visible[:, j, None]) * size * field * color
        drives[:, j, retinotopic] = table.objects[:, j] @ prfs.T
    return drives


def _prfs(t: VoxelTuning) -> np.ndarray:
    """Normalised Gaussian pRFs of the retinotopic voxels over the content grid, (n_retinotopic, cells)."""
    grid = (np.arange(CONTENT_SIZE) + 0.5) / CONTENT_SIZE
    gy, gx = (g.ravel() for g in np.meshgrid(grid, grid, indexing="ij"))
    r = t.retinotopic
    d2 = (gx[None] - t.prf_x[r, None]) ** 2 + (gy[None] - t.prf_y[r, None]) ** 2
    prf = np.exp(-d2 / (2 * t.prf_sigma[r, None] ** 2))
    return prf / prf.sum(1, keepdims=True)


def measured_betas(brain: SimulatedBrain, true_trials: np.ndarray, sessions: np.ndarray,
                   rng: np.random.Generator, shared_fraction: float = 0.2) -> np.ndarray:
    """Single-trial betas: true response + per-voxel noise (partly shared across voxels) + session offsets.

    Parameters
    ----------
    brain : SimulatedBrain
    true_trials : float array (n_trials, n_voxels)
        Noiseless response of the image shown on each trial.
    sessions : int array (n_trials,)
        Session index of each trial; each session shifts every voxel's baseline.
    rng : numpy Generator
    shared_fraction : float
        Fraction of the noise variance that is a global, trial-wise fluctuation.

    Returns
    -------
    float32 (n_trials, n_voxels), % signal change.
    """
    noise_sd = brain.tuning.noise_sd.astype(np.float32)
    n_trials, n_voxels = true_trials.shape
    noise = rng.standard_normal((n_trials, n_voxels), dtype=np.float32) * np.float32(np.sqrt(1 - shared_fraction))
    noise += rng.standard_normal((n_trials, 1), dtype=np.float32) * np.float32(np.sqrt(shared_fraction))
    offsets = rng.normal(0, 0.3, (int(sessions.max()) + 1, n_voxels)).astype(np.float32) * noise_sd
    return (true_trials + noise * noise_sd + offsets[sessions]).astype(np.float32)
