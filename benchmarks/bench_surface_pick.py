"""Vertex picking on both hemispheres: napari-mine's picker against napari's own Surface pick.

Meshes: fsaverage5 as nilearn ships it (10,242 vertices per hemisphere, what is drawn without a FreeSurfer
folder) and fsaverage7-size stand-ins (``surfaces.subdivide`` of fsaverage5 twice: 163,842 vertices, 327,680 faces
per hemisphere), both hemispheres in the reader's display coordinates. A 3-D pick is a ray from outside the
cortex through a random point of a random face, in a random direction; napari's pick is ``Surface.get_value`` with the view
direction and displayed dims, as its status bar calls it on every mouse move, once per hemisphere; ours is
``MeshPicker.ray`` on both and the nearest hit. The hover rows time ``get_status`` of one layer, napari's own and
with our picking installed (``use_own_picking``). 2-D picks (the flat map) are nearest-vertex queries; napari
returns nothing in 2-D.

    python benchmarks/bench_surface_pick.py [--rays 300] [--napari-rays 15]

Writes benchmarks/results/surface_pick.json and prints the markdown table quoted in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "surface_pick.json"
AIM_MS = 20.0


def meshes(view: str, levels: int) -> dict:
    from napari_mine._reader import display_mesh
    from napari_mine.surfaces import subdivide

    return {hemi: subdivide(display_mesh(hemi, view, "fsaverage5", 10242), levels) for hemi in ("lh", "rh")}


def random_rays(by_hemi: dict, n: int, rng, hemispheres=("lh", "rh")) -> list[tuple[np.ndarray, np.ndarray]]:
    """Rays from 400 mm outside, each through a random point of a random face of a random hemisphere (inside the
    face, so that no ray passes exactly through a vertex or an edge, where faces tie)."""
    rays = []
    for _ in range(n):
        mesh = by_hemi[hemispheres[rng.integers(len(hemispheres))]]
        weights = rng.dirichlet(np.ones(3))
        aim = weights @ mesh.vertices[mesh.faces[rng.integers(len(mesh.faces))]]
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        rays.append((aim - 400 * direction, direction))
    return rays


def timed(function, inputs) -> tuple[float, list]:
    """Median milliseconds of ``function(*item)`` over ``inputs``, and the answers."""
    seconds, answers = [], []
    for item in inputs:
        start = time.perf_counter()
        answers.append(function(*item))
        seconds.append(time.perf_counter() - start)
    return 1000 * float(np.median(seconds)), answers


def measure(name: str, levels: int, n_rays: int, n_napari: int, seed: int = 0) -> dict:
    from napari.components import ViewerModel

    from napari_mine._widgets._surface import use_own_picking
    from napari_mine.picking import MeshPicker, first_pick

    rng = np.random.default_rng(seed)
    inflated = meshes("inflated", levels)
    start = time.perf_counter()
    pickers = {hemi: MeshPicker(mesh.vertices, mesh.faces) for hemi, mesh in inflated.items()}
    for picker in pickers.values():
        picker.ray(np.zeros(3), np.ones(3))  # builds its KD-tree
    build_s = time.perf_counter() - start
    rays = random_rays(inflated, n_rays, rng)
    ours_ms, picks = timed(lambda o, d: first_pick([(h, p.ray(o, d)) for h, p in pickers.items()]), rays)

    scene = ViewerModel()  # no window: layers sliced for a 3-D view, as napari's status bar queries them
    scene.dims.ndisplay = 3
    layers = {hemi: scene.add_surface((mesh.vertices, mesh.faces, np.arange(mesh.n_vertices, dtype=np.float32)))
              for hemi, mesh in inflated.items()}
    napari_rays = rays[:n_napari]
    napari_ms, values = timed(lambda o, d: [layer.get_value(o, view_direction=d, dims_displayed=[0, 1, 2], world=True)
                                            for layer in layers.values()], napari_rays)
    hover_rays = random_rays(inflated, n_napari, rng, ("lh",))  # the mouse over the active (left) layer

    def hover(origin, direction):
        return layers["lh"].get_status(origin, view_direction=direction, dims_displayed=[0, 1, 2], world=True)

    hover_napari_ms, _ = timed(hover, hover_rays)
    for hemi, layer in layers.items():
        use_own_picking(layer, pickers[hemi])
    hover_ours_ms, _ = timed(hover, hover_rays)
    faces_hit = [[value[1] for value in pair] for pair in values]
    agree = sum(_same_face(inflated, pick, hits) for pick, hits in zip(picks, faces_hit))

    flat = meshes("flat", levels)
    flat_pickers = {hemi: MeshPicker(mesh.vertices, mesh.faces) for hemi, mesh in flat.items()}
    points = [(flat[hemi].vertices[rng.choice(flat_pickers[hemi].drawn)] + rng.normal(scale=0.5, size=3),)
              for hemi in rng.choice(["lh", "rh"], n_rays)]
    for picker in flat_pickers.values():
        picker.nearest(points[0][0])  # builds its KD-tree
    flat_ms, _ = timed(lambda p: first_pick([(h, q.nearest(p)) for h, q in flat_pickers.items()]), points)
    return {
        "mesh": name, "vertices_per_hemisphere": int(inflated["lh"].n_vertices),
        "faces_per_hemisphere": int(len(inflated["lh"].faces)), "rays": n_rays, "napari_rays": len(napari_rays),
        "ours_ray_ms": ours_ms, "napari_ray_ms": napari_ms, "ours_hover_ms": hover_ours_ms,
        "napari_hover_ms": hover_napari_ms, "ours_flat_ms": flat_ms, "picker_build_s": build_s,
        "same_face_as_napari": f"{agree}/{len(napari_rays)}",
    }


def _same_face(meshes_by_hemi, pick, napari_faces) -> bool:
    """Our pick's vertex is a corner of the face napari found first (both hemispheres' answers, nearest kept)."""
    if pick is None:
        return all(face is None for face in napari_faces)
    hemi, found = pick
    face = napari_faces[("lh", "rh").index(hemi)]
    return face is not None and found.vertex in meshes_by_hemi[hemi].faces[face]


def table(rows: list[dict]) -> str:
    lines = ["| mesh (both hemispheres) | vertices | napari `get_value`, 3-D (ms) | ours, 3-D ray (ms) | "
             "hover `get_status`: napari / ours (ms) | ours, 2-D flat (ms) | same face as napari |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['mesh']} | {2 * row['vertices_per_hemisphere']:,} | {row['napari_ray_ms']:.0f} | "
                     f"{row['ours_ray_ms']:.2f} | {row['napari_hover_ms']:.0f} / {row['ours_hover_ms']:.2f} | "
                     f"{row['ours_flat_ms']:.2f} | {row['same_face_as_napari']} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rays", type=int, default=300)
    parser.add_argument("--napari-rays", type=int, default=15)
    args = parser.parse_args(argv)
    rows = [measure("fsaverage5 (nilearn)", 0, args.rays, 4 * args.napari_rays),
            measure("fsaverage7 size (fsaverage5 subdivided twice)", 2, args.rays, args.napari_rays)]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"aim_ms": AIM_MS, "rows": rows}, indent=2))
    print(table(rows))
    print("picker build (both hemispheres, once per view): "
          + ", ".join(f"{row['mesh']} {row['picker_build_s']:.2f} s" for row in rows))


if __name__ == "__main__":
    main()
