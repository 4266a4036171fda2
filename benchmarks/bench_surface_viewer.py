"""The viewer on surface results: click → inspector latency on the flat map (2-D) and the inflated cortex (3-D),
and the screenshots of both views with the inspector docked after a click.

Clicks go through the inspector's own mouse callback (press + release) and are timed to its ``updated`` signal
with the redraw processed, as in bench_viewer.py; the clicked vertices are the best-predicted vertices of the
category ROIs. The 3-D click is a ray from outside the inflated cortex through the vertex.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python benchmarks/bench_surface_viewer.py RESULTS \\
        [--clicks 20] [--shots docs]

RESULTS is a surface results folder (``napari-mine demo --space fsaverage --out DIR`` makes one: DIR/results).
Writes benchmarks/results/surface_viewer.json and, with ``--shots``, viewer_surface_flat.png and
viewer_surface_inflated.png there.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

RESULTS = Path(__file__).parent / "results" / "surface_viewer.json"
WINDOW = (1500, 950)
INFLATED_ANGLES = (180.0, 0.0, 180.0)  # camera (x, y, z) degrees: from below, the ventral occipito-temporal cortex


def wait_for(app, signal, start_action, timeout_s: float = 120.0):
    """Seconds from ``start_action()`` to ``signal`` with its redraw processed, and the signal's argument."""
    got = []
    signal.connect(got.append)
    try:
        start = time.perf_counter()
        start_action()
        while not got:
            app.processEvents()
            if time.perf_counter() - start > timeout_s:
                raise TimeoutError("no answer from the inspector")
            time.sleep(0.0005)
        app.processEvents()
        return time.perf_counter() - start, got[0]
    finally:
        signal.disconnect(got.append)


def click(viewer, inspector, position, view_direction=None):
    """A press and release through the inspector's mouse callback, as napari drives it."""
    [callback] = [cb for cb in viewer.mouse_drag_callbacks if getattr(cb, "__self__", None) is inspector]

    def act():
        event = SimpleNamespace(type="mouse_press", position=tuple(position), button=1, modifiers=[],
                                view_direction=view_direction, dims_displayed=list(viewer.dims.displayed))
        gesture = callback(viewer, event)
        next(gesture)
        event.type = "mouse_release"
        next(gesture, None)

    return act


def best_vertices(results, n: int) -> list[int]:
    """The best-predicted targets of the category ROIs, round robin over the labels."""
    space = results.space
    r = np.nan_to_num(results.accuracy["normalized_r"], nan=-np.inf)
    by_label = []
    for roi in (name for name in space.rois if name.startswith("floc-")):
        values = space.roi_values(roi)
        for label in space.present_labels().get(roi, {}):
            members = np.flatnonzero(values == label)
            by_label.append(list(members[np.argsort(-r[members])]))
    picked = []
    while len(picked) < n and any(by_label):
        for members in by_label:
            if members and len(picked) < n:
                picked.append(int(members.pop(0)))
    return picked


def layer_of(viewer, store, role, hemi):
    from napari_mine._widgets._surface import surface_layers

    return next(layer for layer in surface_layers(viewer, store, role) if layer.metadata["napari_mine"]["hemi"] == hemi)


def vertex_click(viewer, store, results, target, three_d: bool):
    """The world position (and in 3-D the view direction) of a click on a target's vertex."""
    hemi, vertex = results.space.hemisphere_of(target)
    layer = layer_of(viewer, store, "anatomy", hemi)
    point = np.asarray(layer.vertices[vertex], dtype=float)
    position = np.array(viewer.dims.point, dtype=float)
    if not three_d:
        position[-3:] = layer.data_to_world(point)
        return position, None
    outward = point - layer.vertices.mean(axis=0)
    outward /= np.linalg.norm(outward)
    position[-3:] = layer.data_to_world(point + 300 * outward)
    direction = np.zeros(viewer.dims.ndim)
    direction[-3:] = -outward
    return position, direction


def measure(store: Path, clicks: int, shots: Path | None) -> dict:
    from qtpy.QtWidgets import QApplication

    from napari_mine._widgets._surface import show_view
    from napari_mine.results import open_results
    from napari_mine.viewer import view_results

    viewer = view_results(store, widgets=("Voxel inspector",), block=False, show=True)
    viewer.window._qt_window.resize(*WINDOW)
    app = QApplication.instance()
    app.processEvents()
    inspector = viewer.window.dock_widgets["Voxel inspector (napari-mine)"]
    root = str(Path(store).resolve())
    results = open_results(root)
    targets = best_vertices(results, clicks + 1)
    out = {"store": str(store), "clicks": clicks}
    for view, three_d in (("flat", False), ("inflated", True)):
        show_view(viewer, root, view)
        if three_d:
            viewer.camera.angles = INFLATED_ANGLES
        app.processEvents()
        wait_for(app, inspector.updated, click(viewer, inspector, *vertex_click(viewer, root, results, targets[0],
                                                                                 three_d)))  # warm
        if shots is not None:  # the best vertex inspected, before any timed click's notification
            for _ in range(20):
                app.processEvents()
                time.sleep(0.05)
            shots.mkdir(parents=True, exist_ok=True)
            viewer.screenshot(str(shots / f"viewer_surface_{view}.png"), canvas_only=False)
        seconds, answers = [], []
        for target in targets[1:]:
            took, answer = wait_for(app, inspector.updated,
                                    click(viewer, inspector, *vertex_click(viewer, root, results, target, three_d)))
            seconds.append(took)
            answers.append(answer)
        out[view] = {"median_ms": 1000 * float(np.median(seconds)), "max_ms": 1000 * float(np.max(seconds)),
                     "answers": {answer: answers.count(answer) for answer in set(answers)}}
    viewer.close()
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--shots", type=Path, default=None, help="folder for the two screenshots (e.g. docs)")
    args = parser.parse_args(argv)
    from napari_mine.models.backbone import import_torch

    import_torch()  # before any canvas (see tests/test_widgets.py)
    out = measure(args.results, args.clicks, args.shots)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2))
    for view in ("flat", "inflated"):
        print(f"{view}: click → inspector median {out[view]['median_ms']:.0f} ms, max {out[view]['max_ms']:.0f} ms "
              f"over {args.clicks} clicks ({out[view]['answers']})")


if __name__ == "__main__":
    main()
