"""The viewer on a study of several subjects: click → inspector latency in each subject's grid cell (the clicked
subject's report, then the other subjects' values at the linked selection), and the screenshot of the grid with
the inspector showing every subject's ROI profile side by side.

Clicks go through the inspector's own mouse callback (press + release, with the grid cell napari reports) and are
timed to its ``updated`` signals with the redraw processed, as in bench_viewer.py; the clicked voxels are each
subject's best-predicted voxels of the category ROIs, the subjects taken in turn.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python benchmarks/bench_study_viewer.py STUDY \\
        [--clicks 10] [--shot docs/viewer_study.png]

STUDY is a study folder (``napari-mine features NSD_ROOT --subject 1 2 --out STUDY``, then ``fit`` and
``profile``; ``write_world(..., n_subjects=2)`` writes a synthetic NSD root of two subjects). Writes
benchmarks/results/study_viewer.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

RESULTS = Path(__file__).parent / "results" / "study_viewer.json"
WINDOW = (1600, 1000)
CATEGORY_ROIS = ("floc-faces", "floc-places", "floc-bodies", "floc-words")


def pump(app, seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.01)


def click_until(app, viewer, inspector, position, viewbox, timeout_s: float = 120.0) -> dict:
    """Click ``position`` in grid cell ``viewbox``; seconds until the report and until the subjects' values."""
    [callback] = [cb for cb in viewer.mouse_drag_callbacks if getattr(cb, "__self__", None) is inspector]
    answers, at = [], {}

    def on_answer(answer):
        answers.append(answer)
        at.setdefault(answer, time.perf_counter() - start)

    inspector.updated.connect(on_answer)
    try:
        start = time.perf_counter()
        event = SimpleNamespace(type="mouse_press", position=tuple(position), button=1, modifiers=[],
                                view_direction=None, dims_displayed=list(viewer.dims.displayed), viewbox=viewbox)
        gesture = callback(viewer, event)
        next(gesture)
        event.type = "mouse_release"
        next(gesture, None)
        while not {"subjects", "outside", "failed"} & set(answers):
            app.processEvents()
            if time.perf_counter() - start > timeout_s:
                raise TimeoutError("no answer from the inspector")
            time.sleep(0.0005)
        app.processEvents()
        return at
    finally:
        inspector.updated.disconnect(on_answer)


def best_voxels(results, n: int) -> list[int]:
    """The best-predicted voxel of each category ROI label, best first, ``n`` of them."""
    space, r = results.space, results.accuracy["r"]
    found = []
    for roi in CATEGORY_ROIS:
        values = space.roi_values(roi) if roi in space.rois else np.zeros(space.n_targets)
        for label in np.unique(values[values > 0]):
            members = np.flatnonzero(values == label)
            found.append(int(members[np.nanargmax(r[members])]))
    found.sort(key=lambda voxel: -r[voxel])
    return (found * (n // max(len(found), 1) + 1))[:n]


def measure(study_root: Path, clicks: int, shot: Path | None) -> dict:
    from qtpy.QtWidgets import QApplication

    from napari_mine._reader import META
    from napari_mine.study import Study
    from napari_mine.viewer import view_results

    viewer = view_results(study_root, widgets=("Voxel inspector", "ROI explorer"), block=False, show=True)
    viewer.window._qt_window.resize(*WINDOW)
    app = QApplication.instance()
    inspector = viewer.window.dock_widgets["Voxel inspector (napari-mine)"]
    pump(app, 2.0)
    study = Study.open(study_root)
    brains = {layer.metadata[META]["subject"]: layer for layer in viewer.layers
              if layer.metadata.get(META, {}).get("role") == "accuracy"}
    plan = [(subject, voxel) for voxels in zip(*(best_voxels(study.results(s), clicks + 1) for s in study.subjects))
            for subject, voxel in zip(study.subjects, voxels)][: clicks + 1]

    def position(subject, voxel):
        point = np.array(viewer.dims.point, dtype=float)
        point[-3:] = brains[subject].data_to_world(study.results(subject).space.ijk_of(voxel))
        viewer.dims.set_point(range(viewer.dims.ndim - 3, viewer.dims.ndim), point[-3:])
        return point

    cells = {subject: (0, index) for index, subject in enumerate(study.subjects)}
    report, subjects = [], []
    for index, (subject, voxel) in enumerate(plan):
        at = click_until(app, viewer, inspector, position(subject, voxel), cells[subject])
        if index:  # the first click is the warm-up
            report.append(at.get("report", np.nan))
            subjects.append(at.get("subjects", np.nan))
    if shot is not None:  # the first subject's best voxel, with every subject's bars beside it
        click_until(app, viewer, inspector, position(*plan[0]), cells[plan[0][0]])
        viewer.window._dock_widgets["Voxel inspector (napari-mine)"].raise_()  # its tab over the ROI explorer's
        pump(app, 1.0)
        viewer.reset_view()  # fitted to the canvas as the docks left it
        pump(app, 1.0)
        shot.parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(shot), canvas_only=False)
    viewer.close()
    return {"study": str(study_root), "subjects": len(study.subjects), "clicks": clicks,
            "report_median_ms": 1000 * float(np.nanmedian(report)), "report_max_ms": 1000 * float(np.nanmax(report)),
            "subjects_median_ms": 1000 * float(np.nanmedian(subjects)),
            "subjects_max_ms": 1000 * float(np.nanmax(subjects))}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("--clicks", type=int, default=10)
    parser.add_argument("--shot", type=Path, default=None, help="the screenshot's path (e.g. docs/viewer_study.png)")
    args = parser.parse_args(argv)
    from napari_mine.models.backbone import import_torch

    import_torch()  # before any canvas (see tests/test_widgets.py)
    out = measure(args.study, args.clicks, args.shot)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2))
    print(f"click → the subject's report: median {out['report_median_ms']:.0f} ms (max {out['report_max_ms']:.0f}); "
          f"→ every subject's values: median {out['subjects_median_ms']:.0f} ms (max {out['subjects_max_ms']:.0f}) "
          f"over {args.clicks} clicks")


if __name__ == "__main__":
    main()
