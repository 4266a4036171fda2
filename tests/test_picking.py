"""Vertex picking on fsaverage meshes: a known vertex under a ray, the first of several surfaces along it, napari's
own ray cast as the reference, and the nearest drawn vertex of a flat map in 2-D."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mine.picking import MeshPicker, first_pick
from napari_mine.surfaces import fsaverage_mesh


@pytest.fixture(scope="module")
def sphere():
    return fsaverage_mesh("lh", "sphere")


def test_a_ray_through_a_vertex_of_a_convex_mesh_picks_that_vertex(sphere):
    picker = MeshPicker(sphere.vertices, sphere.faces)
    centre = sphere.vertices.mean(axis=0)
    for vertex in np.random.default_rng(0).choice(sphere.n_vertices, 25, replace=False):
        outward = sphere.vertices[vertex] - centre
        start = sphere.vertices[vertex] + 2 * outward  # outside, looking at the centre through the vertex
        pick = picker.ray(start, -outward)
        assert pick.vertex == vertex and pick.distance == pytest.approx(2.0, abs=0.02)
        behind = picker.ray(centre - 3 * outward, outward)  # from the far side the near hit is the antipode
        assert behind.vertex != vertex and behind.distance < 3.0


def test_ray_picks_match_napari_s_ray_cast_over_every_face():
    from napari.utils.geometry import find_nearest_triangle_intersection

    mesh = fsaverage_mesh("rh", "inflated")
    picker = MeshPicker(mesh.vertices, mesh.faces)
    rng = np.random.default_rng(1)
    triangles = mesh.vertices[mesh.faces].astype(float)
    for _ in range(20):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        aim = mesh.vertices[rng.integers(mesh.n_vertices)] + rng.normal(scale=3, size=3)
        start = aim - 400 * direction  # outside the mesh: every hit lies ahead (napari's is the nearest to start)
        index, point = find_nearest_triangle_intersection(start, direction, triangles)
        pick = picker.ray(start, direction)
        if index is None:
            assert pick is None
            continue
        corners = mesh.faces[index]
        assert pick.vertex == corners[np.argmin(np.linalg.norm(mesh.vertices[corners] - point, axis=1))]
        assert pick.distance == pytest.approx(np.dot(point - start, direction), abs=1e-3)


def test_a_ray_that_misses_the_mesh_picks_nothing(sphere):
    picker = MeshPicker(sphere.vertices, sphere.faces)
    beside = sphere.vertices.max(axis=0) + 10
    assert picker.ray(beside, [1.0, 0, 0]) is None and picker.ray(beside, [0, 0, 1.0]) is None
    assert picker.ray(beside, [0, 0, 0]) is None


def test_the_first_hemisphere_along_the_ray_wins(sphere):
    near = MeshPicker(sphere.vertices, sphere.faces)
    far = MeshPicker(sphere.vertices + [500.0, 0, 0], sphere.faces)
    start, direction = np.array([-300.0, 0, 0]), np.array([1.0, 0, 0])
    key, pick = first_pick([("far", far.ray(start, direction)), ("near", near.ray(start, direction)),
                            ("none", None)])
    assert key == "near" and pick.vertex == near.ray(start, direction).vertex


def test_flat_map_picks_the_nearest_drawn_vertex_and_nothing_beside_the_map():
    flat = fsaverage_mesh("lh", "flat")
    layer_axes = flat.vertices[:, [2, 1, 0]]  # the flat map's (x, y) on layer axes (2, 1), as napari shows it
    picker = MeshPicker(layer_axes, flat.faces)
    drawn = np.unique(flat.faces)
    rng = np.random.default_rng(2)
    for vertex in rng.choice(drawn, 25, replace=False):
        point = layer_axes[vertex] + [0, 0.1 * picker.spacing, -0.1 * picker.spacing]
        assert picker.nearest(point, axes=(1, 2)).vertex == vertex
    cut = np.setdiff1d(np.arange(flat.n_vertices), drawn)  # the medial wall: no faces, never picked
    assert len(cut) and all(picker.nearest(layer_axes[v], axes=(1, 2)).vertex in drawn for v in cut[:25])
    assert picker.nearest(layer_axes[drawn].max(axis=0) + 40, axes=(1, 2)) is None
