"""The synthetic subject on the cortex: the volume world's simulated neurons laid out on fsaverage5.

Each vertex of the surface nsdgeneral copies one voxel of the volume world — its tuning, hence its noiseless
response — so every ground-truth score reads the same truth on vertices as on voxels. ROIs are patches at the
anatomical places of their real counterparts: a centre in MNI305 millimetres (fsaverage's own space) on the
midthickness surface, grown along the cortex (never across the medial wall) to as many vertices as the volume ROI
has voxels in that hemisphere; all patches grow together, so neighbours share the cortex between their centres
(:func:`_grow_patches`). Word ROIs are left-lateralised, as in people:
both hemispheres' word voxels go to the left. Within a patch, voxels are matched to vertices so that positions
are kept (an optimal assignment on per-axis ranks): category ROIs by their lateral, posterior→anterior and
inferior→superior ranks, so each sub-population stays one contiguous half; early visual areas by eccentricity
(distance from the occipital pole on the cortex ↔ the volume's anterior rank, which sets pRF eccentricity) and
polar angle (height), turned so that V1's horizontal meridian lies on the calcarine sulcus. The left hemisphere
holds left-hemisphere voxels, which see the right visual field. The rest of nsdgeneral (the unlabelled mixed
and noise voxels) grows out from the ROIs, so the surface mask covers the posterior cortex between them.
"""

from __future__ import annotations

import heapq
import json
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components, dijkstra
from scipy.spatial import cKDTree

from ..errors import MineInputError
from ..surfaces import HEMISPHERES, fsaverage_mesh, sulcal_depth
from .brain import ROI_FILES, SimulatedBrain, VoxelTuning

MESH = "fsaverage5"
N_VERTICES = 10242  # per hemisphere
# Left-hemisphere centres (MNI305 mm) of each region; the right hemisphere mirrors x.
PLACES: dict[str, tuple[float, float, float]] = {
    "V1v": (-8, -88, -2), "V1d": (-8, -92, 8), "V2v": (-12, -82, -10), "V2d": (-10, -94, 18),
    "V3v": (-20, -80, -14), "V3d": (-18, -94, 24), "hV4": (-30, -78, -14),
    "OFA": (-40, -78, -12), "FFA-1": (-40, -60, -20), "FFA-2": (-40, -46, -22),
    "mTL-faces": (-52, -44, 6), "aTL-faces": (-36, -6, -34),
    "OPA": (-32, -82, 20), "PPA": (-26, -45, -10), "RSC": (-14, -55, 12),
    "OWFA": (-46, -70, -10), "VWFA-1": (-44, -56, -16), "VWFA-2": (-44, -44, -16), "mfs-words": (-38, -34, -20),
    "mTL-words": (-56, -34, 0),
    "EBA": (-47, -72, 2), "FBA-1": (-44, -50, -18), "FBA-2": (-42, -38, -22), "mTL-bodies": (-54, -56, 8),
    "food-patch": (-30, -56, -14), "car-patch": (-42, -84, 6), "tree-patch": (-22, -68, 24),
    "animal-patch": (-48, -64, -4),
}
LEFT_ONLY = frozenset(ROI_FILES["floc-words"])
# Areas whose polar angle runs against height: V1's horizontal meridian on the calcarine, V2/V3's at their border.
ANGLE_FLIPPED = frozenset({"V1v", "V1d", "V3v", "V3d"})
# mm of distance from the ROIs a filler vertex may trade per mm nearer the occipital pole: nsdgeneral fills the
# posterior cortex between the ROIs rather than rings around the anterior ones.
FILLER_POSTERIOR_BIAS = 0.5
GROWTH_TRIES = 8
CORTEX_FILE = "cortex.npz"
PLACES_FILE = "cortex.json"


@dataclass
class CortexMap:
    """Where the world's neurons lie on fsaverage5; sites are lh vertices 0..10241, then rh's."""

    hemispheres: dict[str, int]
    voxel_of_site: np.ndarray  # int (n_sites,): index among np.flatnonzero(brain.mask), -1 off the surface mask
    cortex: np.ndarray  # bool (n_sites,): off the medial wall
    labels: dict[str, np.ndarray]  # ROI file -> int16 (n_sites,): -1 medial wall, 0 unlabelled, k = k-th name
    anatomy: np.ndarray  # float32 (n_sites,): sulcal depth
    places: dict  # {name: {hemi: {requested_mm, vertex (nearest the centre), distance_mm, n_vertices,
    #                             nearest_patch_mm, centroid_mm}}}

    @property
    def mask(self) -> np.ndarray:
        """The surface nsdgeneral: the vertices that carry a voxel's signal."""
        return self.voxel_of_site >= 0

    @property
    def n_sites(self) -> int:
        return len(self.voxel_of_site)

    def sites(self, hemi: str) -> slice:
        start = sum(self.hemispheres[h] for h in HEMISPHERES[: HEMISPHERES.index(hemi)])
        return slice(start, start + self.hemispheres[hemi])


# ----------------------------------------------------------------------------------------------- placement


def place_on_cortex(brain: SimulatedBrain) -> CortexMap:
    """Lay the brain's nsdgeneral voxels out on fsaverage5 (see the module docstring)."""
    tuning = brain.tuning
    missing = sorted(set(tuning.roi) - set(PLACES) - {""})
    if missing:
        raise MineInputError(f"No cortical place is defined for {missing}; add them to cortex.PLACES.")
    world = _voxel_world(brain)
    groups = _voxel_groups(tuning, world)
    voxel_of_site, cortex, places = [], [], {}
    for hemi in HEMISPHERES:
        geometry = _geometry(hemi)
        voxel_of_vertex = _place_hemisphere(geometry, hemi, groups, tuning, world, places)
        voxel_of_site.append(voxel_of_vertex)
        cortex.append(geometry.cortex)
    voxel_of_site, cortex = np.concatenate(voxel_of_site), np.concatenate(cortex)
    roi = np.where(voxel_of_site >= 0, tuning.roi[np.maximum(voxel_of_site, 0)], "")
    labels = {}
    for file_name, names in ROI_FILES.items():
        values = np.where(cortex, 0, -1).astype(np.int16)
        for k, name in enumerate(names, start=1):
            values[roi == name] = k
        labels[file_name] = values
    labels["nsdgeneral"] = np.where(voxel_of_site >= 0, 1, np.where(cortex, 0, -1)).astype(np.int16)
    anatomy = np.concatenate([sulcal_depth(hemi) for hemi in HEMISPHERES]).astype(np.float32)
    return CortexMap({hemi: N_VERTICES for hemi in HEMISPHERES}, voxel_of_site, cortex, labels, anatomy, places)


def _voxel_world(brain: SimulatedBrain) -> np.ndarray:
    """World (mm) position of each nsdgeneral voxel, in mask order."""
    ijk = np.argwhere(brain.mask)
    return ijk @ brain.affine[:3, :3].T + brain.affine[:3, 3]


def _voxel_groups(tuning: VoxelTuning, world: np.ndarray) -> dict[tuple[str, str], np.ndarray]:
    """The voxels each (region, hemisphere) patch holds; unlabelled voxels fill each hemisphere to half the mask."""
    groups = {}
    for name in PLACES:
        members = np.flatnonzero(tuning.roi == name)
        left = np.ones(len(members), bool) if name in LEFT_ONLY else tuning.hemisphere[members] == "left"
        groups[(name, "lh")], groups[(name, "rh")] = members[left], members[~left]
    fillers = np.flatnonzero(tuning.roi == "")
    fillers = fillers[np.argsort(world[fillers, 0], kind="stable")]  # leftmost first
    in_lh = sum(len(v) for (_, hemi), v in groups.items() if hemi == "lh")
    n_lh = int(np.clip(-(-len(tuning.roi) // 2) - in_lh, 0, len(fillers)))
    groups[("", "lh")], groups[("", "rh")] = fillers[:n_lh], fillers[n_lh:]
    return groups


@dataclass(frozen=True)
class _Geometry:
    """One hemisphere's midthickness vertices, its cortex (off the medial wall) and its edge graph (mm)."""

    points: np.ndarray
    cortex: np.ndarray
    graph: sparse.csr_matrix
    pole_distance: np.ndarray  # along the cortex from the occipital pole (the most posterior cortex vertex)

    def grow(self, sources, allowed: np.ndarray, candidates: np.ndarray, n: int, what: str,
             bias: np.ndarray | float = 0.0) -> np.ndarray:
        """The ``n`` candidate vertices nearest ``sources`` along edges between ``allowed`` vertices (plus ``bias``)."""
        index = np.flatnonzero(allowed)
        position = np.full(len(allowed), -1)
        position[index] = np.arange(len(index))
        distance = np.full(len(allowed), np.inf)
        distance[index] = dijkstra(self.graph[index][:, index], indices=position[np.asarray(sources)],
                                   min_only=True)
        distance = distance + bias
        distance[~candidates] = np.inf
        order = np.argsort(distance, kind="stable")[:n]
        if len(order) < n or not np.isfinite(distance[order]).all():
            raise MineInputError(f"fsaverage5 has too few free cortex vertices around {what} for its {n} voxels; "
                                 "write a world with a smaller nsdgeneral (n_general).")
        return order


@lru_cache(maxsize=2)
def _geometry(hemi: str) -> _Geometry:
    points = (fsaverage_mesh(hemi, "white").vertices.astype(float) + fsaverage_mesh(hemi, "pial").vertices) / 2
    cortex = np.zeros(len(points), bool)
    cortex[np.unique(fsaverage_mesh(hemi, "flat").faces)] = True
    faces = fsaverage_mesh(hemi, "white").faces
    a, b = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).T
    keep = cortex[a] & cortex[b]
    a, b = a[keep], b[keep]
    length = np.linalg.norm(points[a] - points[b], axis=1)
    graph = sparse.coo_matrix((np.r_[length, length], (np.r_[a, b], np.r_[b, a])), shape=(len(points),) * 2).tocsr()
    pole = np.flatnonzero(cortex)[np.argmin(points[cortex, 1])]
    pole_distance = dijkstra(graph, indices=pole)
    return _Geometry(points, cortex, graph, pole_distance)


def _place_hemisphere(geometry: _Geometry, hemi: str, groups, tuning, world, places) -> np.ndarray:
    """Grow every region's patch from its centre at once, then the filler around them; returns the voxel per vertex."""
    voxel_of_vertex = np.full(len(geometry.points), -1)
    mirror = np.array([-1.0 if hemi == "rh" else 1.0, 1.0, 1.0])
    names = [name for name in PLACES if len(groups[(name, hemi)])]
    requested = [np.array(PLACES[name]) * mirror for name in names]
    distances = [np.where(geometry.cortex, np.linalg.norm(geometry.points - centre, axis=1), np.inf)
                 for centre in requested]
    patches = _grow_patches(geometry, [int(np.argmin(d)) for d in distances],
                            [len(groups[(name, hemi)]) for name in names], [f"{hemi} {name}" for name in names])
    for name, centre, distance, patch in zip(names, requested, distances, patches):
        voxels = groups[(name, hemi)]
        voxel_of_vertex[patch] = voxels[_match(_vertex_axes(geometry, patch, name), _voxel_axes(world, voxels, name))]
        nearest = int(np.argmin(distance))
        places.setdefault(name, {})[hemi] = {
            "requested_mm": [float(v) for v in centre], "vertex": nearest,
            "distance_mm": round(float(distance[nearest]), 2), "n_vertices": len(patch),
            "nearest_patch_mm": round(float(distance[patch].min()), 2),
            "centroid_mm": [round(float(v), 1) for v in geometry.points[patch].mean(0)]}
    fillers = groups[("", hemi)]
    if len(fillers):
        taken = voxel_of_vertex >= 0
        patch = geometry.grow(np.flatnonzero(taken), geometry.cortex, geometry.cortex & ~taken, len(fillers),
                              f"the {hemi} ROIs", bias=FILLER_POSTERIOR_BIAS * geometry.pole_distance)
        voxel_of_vertex[patch] = fillers[_match(_vertex_axes(geometry, patch, ""), _voxel_axes(world, fillers, ""))]
    return voxel_of_vertex


def _grow_patches(geometry: _Geometry, seeds: list[int], sizes: list[int], what: list[str]) -> list[np.ndarray]:
    """Grow all patches together, each claiming the free cortex vertex nearest its seed (along its own territory)
    until it has its size: a geodesic Voronoi partition with quotas, so neighbouring ROIs share the cortex between
    their centres instead of the first placed pushing the next away. A patch walled in by full neighbours grows
    faster on the next try; one still walled in after that moves, whole, to the nearest free cortex with room."""
    pace = np.ones(len(seeds))
    for _ in range(GROWTH_TRIES):
        owner = _claim(geometry.graph, seeds, np.asarray(sizes), pace)
        short = np.bincount(owner[owner >= 0], minlength=len(seeds)) < np.asarray(sizes)
        if not short.any():
            break
        pace[short] *= 0.75
    for k in np.flatnonzero(short):
        owner[owner == k] = -1
        free = geometry.cortex & (owner < 0)
        index = np.flatnonzero(free)
        _, component = connected_components(geometry.graph[index][:, index], directed=False)
        room = np.zeros(len(owner), bool)
        room[index] = np.bincount(component)[component] >= sizes[k]
        if not room.any():
            raise MineInputError(f"fsaverage5 has too little free cortex around {what[k]} for its voxels; write a "
                                 "world with a smaller nsdgeneral (n_general).")
        start = int(np.argmin(np.where(room, dijkstra(geometry.graph, indices=seeds[k]), np.inf)))
        owner[geometry.grow([start], free, free, sizes[k], what[k])] = k
    return [np.flatnonzero(owner == k) for k in range(len(seeds))]


def _claim(graph: sparse.csr_matrix, seeds, sizes: np.ndarray, pace: np.ndarray) -> np.ndarray:
    """The owner of every vertex (-1 none) after concurrent growth, each patch's distances scaled by its pace."""
    owner, counts = np.full(graph.shape[0], -1), np.zeros(len(seeds), int)
    heap = [(0.0, k, seed) for k, seed in enumerate(seeds)]
    while heap:
        distance, k, vertex = heapq.heappop(heap)
        if owner[vertex] >= 0 or counts[k] >= sizes[k]:
            continue
        owner[vertex], counts[k] = k, counts[k] + 1
        for position in range(graph.indptr[vertex], graph.indptr[vertex + 1]):
            neighbour = graph.indices[position]
            if owner[neighbour] < 0:
                heapq.heappush(heap, (distance + graph.data[position] * pace[k], k, neighbour))
    return owner


def _vertex_axes(geometry: _Geometry, vertices: np.ndarray, name: str) -> np.ndarray:
    points = geometry.points[vertices]
    if name in ROI_FILES["prf-visualrois"]:
        return np.column_stack([geometry.pole_distance[vertices], points[:, 2]])
    return np.column_stack([np.abs(points[:, 0]), points[:, 1], points[:, 2]])


def _voxel_axes(world: np.ndarray, voxels: np.ndarray, name: str) -> np.ndarray:
    points = world[voxels]
    if name in ROI_FILES["prf-visualrois"]:
        return np.column_stack([points[:, 1], -points[:, 2] if name in ANGLE_FLIPPED else points[:, 2]])
    return np.column_stack([np.abs(points[:, 0]), points[:, 1], points[:, 2]])


def _match(vertex_axes: np.ndarray, voxel_axes: np.ndarray) -> np.ndarray:
    """For each vertex, the voxel (a position in ``voxel_axes``) of an assignment that keeps per-axis ranks."""
    a, b = _ranks(vertex_axes), _ranks(voxel_axes)
    cost = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    rows, columns = linear_sum_assignment(cost)
    return columns[np.argsort(rows)]


def _ranks(points: np.ndarray) -> np.ndarray:
    ranks = np.argsort(np.argsort(points, axis=0, kind="stable"), axis=0, kind="stable")
    return ranks / max(len(points) - 1, 1)


# ----------------------------------------------------------------------------------------------- transforms


def native_voxel_coordinates(brain: SimulatedBrain, cortex_map: CortexMap, rng: np.random.Generator,
                             invalid: float) -> dict[str, np.ndarray]:
    """Per hemisphere, NSD's ``func1pt8-to-layerB{1,2,3}``: 1-based decimal voxel coordinates ``(n, 3 depths, 3)``.

    A surface-mask vertex points into its own voxel at three depths (±0.25 voxel along a random direction, with a
    little jitter: nearest-neighbour sampling finds the voxel exactly); another cortex vertex into the cortex voxel
    outside nsdgeneral in the same direction from the brain's centre (so a volume map's mask stays off it); the
    medial wall is ``invalid``.
    """
    ijk = np.argwhere(brain.mask).astype(float)
    centre, radii = (np.array(brain.shape) - 1) / 2, 0.44 * np.array(brain.shape)
    outside = np.argwhere(brain.cortex & ~brain.mask)
    outside_direction = _unit((outside - centre) / radii)
    points = np.concatenate([_geometry(hemi).points for hemi in HEMISPHERES])
    low, high = points.min(0), points.max(0)
    coordinates = {}
    for hemi in HEMISPHERES:
        sites = cortex_map.sites(hemi)
        voxel = cortex_map.voxel_of_site[sites]
        out = np.full((len(voxel), 3, 3), invalid, np.float32)
        inside = voxel >= 0
        direction = _unit(rng.normal(size=(int(inside.sum()), 3)))
        depths = np.array([-0.25, 0.0, 0.25])[None, :, None] * direction[:, None, :]
        jitter = rng.uniform(-0.05, 0.05, (int(inside.sum()), 3, 3))
        out[inside] = ijk[voxel[inside]][:, None, :] + 1 + depths + jitter
        rest = cortex_map.cortex[sites] & ~inside
        side = outside[:, 0] < centre[0] if hemi == "lh" else outside[:, 0] > centre[0]
        wanted = _unit(((points[sites][rest] - (low + high) / 2) / ((high - low) / 2)))
        _, nearest = cKDTree(outside_direction[side]).query(wanted)
        out[rest] = (outside[side][nearest] + 1)[:, None, :]
        coordinates[hemi] = out
    return coordinates


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


# ----------------------------------------------------------------------------------------------- truth on vertices


def brain_on_sites(brain: SimulatedBrain, cortex_map: CortexMap, mask: np.ndarray) -> SimulatedBrain:
    """The brain whose neurons are the vertices of ``mask`` (over all sites), each with its voxel's tuning.

    Its ``mask``, ROI label arrays, cortex and anatomy are over the surface's sites; ``true_response`` and
    ``object_drives`` then answer per vertex.
    """
    mask = np.asarray(mask, bool)
    if mask.shape != (cortex_map.n_sites,):
        raise MineInputError(f"A surface of {mask.size:,} vertices is not this world's {MESH} "
                             f"({cortex_map.n_sites:,} over both hemispheres); score results computed from it.")
    index = cortex_map.voxel_of_site[mask]
    if (index < 0).any():
        raise MineInputError(f"{int((index < 0).sum())} of the vertices lie outside the world's surface nsdgeneral, "
                             "where no simulated neuron is; use the nsdgeneral mask of the world's fsaverage labels.")
    tuning = VoxelTuning(**{f.name: getattr(brain.tuning, f.name)[index] for f in fields(VoxelTuning)})
    tuning.hemisphere = np.where(np.flatnonzero(mask) < cortex_map.hemispheres[HEMISPHERES[0]], "left", "right")
    return replace(brain, affine=np.eye(4), brainmask=cortex_map.cortex, cortex=cortex_map.cortex, mask=mask,
                   anatomy=cortex_map.anatomy, roi_volumes=dict(cortex_map.labels), tuning=tuning)


def save_cortex_map(folder: Path, cortex_map: CortexMap) -> None:
    """Write the map into the ground-truth folder (arrays in an .npz, the placements as readable JSON)."""
    np.savez_compressed(Path(folder) / CORTEX_FILE, voxel_of_site=cortex_map.voxel_of_site, cortex=cortex_map.cortex,
                        anatomy=cortex_map.anatomy, **{f"label/{name}": v for name, v in cortex_map.labels.items()})
    (Path(folder) / PLACES_FILE).write_text(json.dumps(
        {"mesh": MESH, "hemispheres": cortex_map.hemispheres, "places": cortex_map.places,
         "note": "voxel_of_site in cortex.npz: index among np.flatnonzero(brain.mask) of the voxel each vertex "
                 "(lh 0..n-1, then rh) copies, -1 outside the surface nsdgeneral"}, indent=1))


def load_cortex_map(folder: Path) -> CortexMap | None:
    """The world's cortex map, or None for a world written without its surface."""
    folder = Path(folder)
    if not (folder / CORTEX_FILE).is_file():
        return None
    meta = json.loads((folder / PLACES_FILE).read_text())
    with np.load(folder / CORTEX_FILE) as data:
        labels = {key.split("/", 1)[1]: data[key] for key in data.files if key.startswith("label/")}
        return CortexMap({k: int(v) for k, v in meta["hemispheres"].items()}, data["voxel_of_site"], data["cortex"],
                         labels, data["anatomy"], meta["places"])
