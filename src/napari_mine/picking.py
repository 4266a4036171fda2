"""Vertex picking on cortical meshes (DESIGN.md §9): a click or a hover resolved to one vertex, from a spatial index.

napari's Surface layer ray-casts against every face on each call (about 1 s on both fsaverage7 hemispheres) and
finds nothing in 2-D. A :class:`MeshPicker` answers a 2-D point with the nearest vertex of the drawn faces (a
KD-tree on the displayed coordinates) and a 3-D ray with the vertex nearest to its first hit: only the faces
around the vertices close to the ray are intersected (Möller–Trumbore), so a pick costs a pass over the vertices
instead of a ray test per face.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NEAR_EDGES = 2.0  # a 2-D pick further than this many median edge lengths from every vertex finds none
_PARALLEL = 1e-12  # |determinant| below which a ray is taken to be parallel to a triangle


@dataclass(frozen=True)
class Pick:
    """The vertex a click found, and how far: along the ray (in units of its direction) or from the 2-D point."""

    vertex: int
    distance: float = 0.0


class MeshPicker:
    """Picks vertices of one mesh (vertices (n, 3), faces (m, 3)) in 2-D (nearest vertex) or 3-D (ray hit).

    Only vertices that belong to a face can be picked: a flat map's cut-out medial wall is not clickable.
    """

    def __init__(self, vertices: np.ndarray, faces: np.ndarray):
        self.vertices = np.asarray(vertices, dtype=np.float64)
        self.faces = np.asarray(faces, dtype=np.int64)
        corners_per_vertex = np.bincount(self.faces.ravel(), minlength=len(self.vertices))
        self.drawn = np.flatnonzero(corners_per_vertex)
        corners = self.vertices[self.faces]
        edges = np.linalg.norm(corners - np.roll(corners, 1, axis=1), axis=2)
        # Every point of a triangle lies within its longest edge of one of its corners: vertices further than
        # that from a ray cannot belong to a face the ray crosses.
        self.reach = float(edges.max()) if edges.size else 0.0
        self.spacing = float(np.median(edges)) if edges.size else 0.0
        self._face_of_corner = np.argsort(self.faces.ravel(), kind="stable") // 3
        self._first_corner = np.concatenate([[0], np.cumsum(corners_per_vertex)])
        drawn = self.vertices[self.drawn]
        self._low = drawn.min(axis=0) - self.reach if len(drawn) else np.zeros(3)
        self._high = drawn.max(axis=0) + self.reach if len(drawn) else np.zeros(3)
        self._trees: dict[tuple[int, ...], object] = {}

    def _tree(self, axes: tuple[int, ...]):
        """A KD-tree of the drawn vertices over coordinates ``axes`` (built on first use)."""
        tree = self._trees.get(axes)
        if tree is None:
            from scipy.spatial import cKDTree

            tree = self._trees[axes] = cKDTree(self.vertices[self.drawn][:, axes])
        return tree

    # ---- 2-D: the nearest drawn vertex -----------------------------------------------------------
    def nearest(self, point, axes=(1, 2), max_distance: float | None = None) -> Pick | None:
        """The drawn vertex nearest to ``point`` (a position in the mesh's coordinates) over the coordinates
        ``axes`` (those a 2-D view shows), or None when it lies further than ``max_distance`` (default
        :data:`NEAR_EDGES` median edges): a click beside the map."""
        axes = tuple(int(axis) for axis in axes)
        tree = self._tree(axes)
        limit = NEAR_EDGES * self.spacing if max_distance is None else max_distance
        distance, index = tree.query(np.asarray(point, dtype=np.float64)[list(axes)])
        if not np.isfinite(distance) or distance > limit:
            return None
        return Pick(int(self.drawn[index]), float(distance))

    # ---- 3-D: the first face the ray crosses ---------------------------------------------------------
    def ray(self, origin, direction) -> Pick | None:
        """The corner nearest to the ray's first hit (smallest ``t`` of ``origin + t·direction``, t of any sign:
        napari's click position lies mid-scene), or None when the ray misses the mesh."""
        origin = np.asarray(origin, dtype=np.float64)
        direction = np.asarray(direction, dtype=np.float64)
        length = float(np.linalg.norm(direction))
        if length == 0 or not len(self.faces):
            return None
        unit = direction / length
        near = self._vertices_near(origin, unit)
        if not len(near):
            return None
        faces = np.unique(self._faces_around(near))
        hit = _first_hit(self.vertices[self.faces[faces]], origin, unit)
        if hit is None:
            return None
        index, t = hit
        corners = self.faces[faces[index]]
        distances = np.linalg.norm(self.vertices[corners] - (origin + t * unit), axis=1)
        return Pick(int(corners[np.argmin(distances)]), t / length)

    def _vertices_near(self, origin: np.ndarray, unit: np.ndarray) -> np.ndarray:
        """Drawn vertices within :attr:`reach` of the line: KD-tree balls at points a reach apart along the part
        of the line inside the mesh's bounds, then the exact distance to the line."""
        enter, leave = -np.inf, np.inf
        for axis in range(3):  # the slab test: where the line is inside the bounds on every axis
            if unit[axis] == 0:
                if not self._low[axis] <= origin[axis] <= self._high[axis]:
                    return np.zeros(0, np.int64)
                continue
            first, last = sorted(((self._low[axis] - origin[axis]) / unit[axis],
                                  (self._high[axis] - origin[axis]) / unit[axis]))
            enter, leave = max(enter, first), min(leave, last)
        if enter > leave or self.reach == 0:
            return np.zeros(0, np.int64)
        steps = origin + np.arange(enter, leave + self.reach, self.reach)[:, None] * unit
        balls = self._tree((0, 1, 2)).query_ball_point(steps, self.reach * np.sqrt(1.25), return_sorted=False)
        found = np.unique(np.concatenate([np.asarray(ball, np.int64) for ball in balls]))
        near = self.drawn[found]
        offset = self.vertices[near] - origin
        along = offset @ unit
        square = np.einsum("ij,ij->i", offset, offset) - along * along
        return near[square <= self.reach * self.reach]

    def _faces_around(self, vertices: np.ndarray) -> np.ndarray:
        """The faces that have one of ``vertices`` as a corner (with repeats), from the vertex → faces index."""
        starts = self._first_corner[vertices]
        counts = self._first_corner[vertices + 1] - starts
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        return self._face_of_corner[np.repeat(starts, counts) + within]


def _first_hit(triangles: np.ndarray, origin: np.ndarray, unit: np.ndarray):
    """Möller–Trumbore on (k, 3, 3) triangles: (index, t) of the hit with the smallest t, or None."""
    a, b, c = triangles[:, 0], triangles[:, 1], triangles[:, 2]
    edge1, edge2 = b - a, c - a
    p = np.cross(unit, edge2)
    determinant = np.einsum("ij,ij->i", edge1, p)
    usable = np.abs(determinant) > _PARALLEL
    inverse = np.divide(1.0, determinant, out=np.zeros_like(determinant), where=usable)
    s = origin - a
    u = np.einsum("ij,ij->i", s, p) * inverse
    q = np.cross(s, edge1)
    v = (q @ unit) * inverse
    t = np.einsum("ij,ij->i", edge2, q) * inverse
    inside = usable & (u >= 0) & (v >= 0) & (u + v <= 1)
    if not inside.any():
        return None
    index = int(np.flatnonzero(inside)[np.argmin(t[inside])])
    return index, float(t[index])


def first_pick(picks) -> tuple[object, Pick] | None:
    """Of ``(key, Pick or None)`` pairs (one per visible hemisphere), the nearest: hit first along the ray, or
    closest to the 2-D point."""
    found = [(key, pick) for key, pick in picks if pick is not None]
    return min(found, key=lambda item: item[1].distance) if found else None
