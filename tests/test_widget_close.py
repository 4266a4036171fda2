"""Closing a dock, or the viewer, while its job runs: the process exits cleanly and no result is half-written.

Each scenario runs in its own Python process (closing the viewer mid-job used to abort the interpreter: exit 134,
"wrapped C/C++ object of type WorkerBaseSignals has been deleted"), on a fitted synthetic world. The "docks"
scenario docks each widget in turn, starts its job and removes the dock while the job runs; then docks every
widget again, starts every job, closes the viewer while they all run, inside napari's event loop, and lets the
interpreter exit. The "all" scenario is the reported abort itself: every dock busy, the viewer closed, the
script ended (no event loop). The tests assert exit 0, that each dock was closed mid-job, and that the results
folder holds what it held: the same manifest, no ``.*.tmp`` left aside. Job functions are slowed (a sleep
before them) so that each close surely finds its job running; the Fit job's features are held until the close
starts, so it is closed while it writes them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.gui, pytest.mark.slow]
N_IMAGES = 150
DOCKS = ("Data and model", "Fit", "Voxel inspector", "ROI explorer", "Counterfactual editor")

SCENARIO = r'''
import functools
import sys
import threading
import time

import numpy as np

from napari_mine.models.backbone import import_torch

import_torch()  # torch before any napari canvas (see tests/test_widgets.py)

import napari
from qtpy.QtCore import QThreadPool, QTimer
from qtpy.QtWidgets import QApplication

from napari_mine._reader import META, layer_metadata
from napari_mine._widgets import _common, _data, _editor, _inspector, _roi

scenario, results, world, fresh = sys.argv[1:5]
NAMES = ("Data and model", "Fit", "Voxel inspector", "ROI explorer", "Counterfactual editor")
SLOW_S = 1.5
CLOSING = threading.Event()  # set just before the dock or the viewer is closed
HOLDING = threading.Event()  # set once a held function waits for the close: the Fit job writes its features
HOLD_S = 60


def slow(function):
    """The job function, made slower than the close (a slow disk): the job is surely running then."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        time.sleep(SLOW_S)
        return function(*args, **kwargs)
    return wrapper


def held(function):
    """The function held until the close starts: the features being written when the Fit job is closed, however
    long the viewer takes to start its event loop (a fixed sleep lost that race on a loaded machine: the one
    chunk of features was written and the step recorded before the close)."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        HOLDING.set()
        CLOSING.wait(HOLD_S)
        return function(*args, **kwargs)
    return wrapper


def wait_until(condition, what, timeout=90):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {what}")
        QApplication.processEvents()
        time.sleep(0.005)


def layer(viewer, role):
    return next(layer for layer in viewer.layers if layer.metadata.get(META, {}).get("role") == role)


def running(job):
    """The job's code runs: it has started (a queued job's has not) and has not ended."""
    return job._helper_started and not job.ended.is_set()


import napari_mine.data as data

data.load_nsd = slow(data.load_nsd)  # Data and model's job stops after loading, before it writes
_inspector.inspect_voxel = slow(_inspector.inspect_voxel)
_inspector.VoxelInspector._answers_here = lambda *args: False  # a worker's job even once the store is in memory
_roi.analyse_roi = slow(_roi.analyse_roi)
import napari_mine.distributed as distributed

distributed._decompose_into = held(distributed._decompose_into)  # features still in flight when the viewer closes
import napari_mine.decompose as decompose

# one image per chunk of features: a closed job stops after the chunk in flight with the others still to do, so
# the next run resumes and is in flight again (with one chunk for all 150 images, the first close completed it
# and the second run recorded the step from the resumed partial without decomposing anything)
decompose.TOKEN_CHUNK_BYTES = 1
_editor.shared_generator = slow(_editor.shared_generator)
_data.open_results = slow(_data.open_results)
viewer = napari.Viewer(show=True)
viewer.open(results, plugin="napari-mine")
brain = layer(viewer, "accuracy")
ijk = [int(v) for v in np.argwhere(np.isfinite(brain.data))[0]]
# the voxel the inspector would have selected, for the editor
viewer.add_points(np.asarray([ijk], dtype=float), ndim=3, scale=brain.scale, translate=brain.translate,
                  metadata=layer_metadata(brain.metadata[META]["store"], "voxel", voxel=0, ijk=ijk))
viewer.layers.selection.active = brain


def ready(widget, name):
    """The dock can start its job: the ROI explorer has its ROI list, the editor its target."""
    if name == "ROI explorer":
        return widget.roi.count() > 0 and widget.label.count() > 0
    if name == "Counterfactual editor":
        return widget._target is not None and widget.run_button.isEnabled()
    return True


def start(widget, name):
    """Start the dock's job (once the dock is ready for it); returns the job and the condition under which it
    is mid-job."""
    wait_until(lambda: ready(widget, name), f"the {name} dock to be ready")
    if name == "Data and model":  # opens the world into a fresh results folder ("all": the results folder)
        widget.source.setCurrentText("results folder" if scenario == "all" else "NSD folder")
        widget.folder.setText(results if scenario == "all" else world)
        widget.results.setText(fresh)
        job = widget.open()
    elif name == "Fit":
        widget.recompute.setChecked(True)
        job = widget.run()
        return job, lambda: running(job) and HOLDING.is_set()  # its features are being written aside
    elif name == "Voxel inspector":
        position = np.array(viewer.dims.point, dtype=float)
        position[-3:] = brain.data_to_world(ijk)
        job = widget.inspect_position(position)
    else:
        job = widget.run()
    return job, lambda: running(job)


def dock(name):
    return viewer.window.add_plugin_dock_widget("napari-mine", name)[1]


if scenario == "all":  # every dock busy, the viewer closed at once and the script ended: no event loop
    docks = {other: dock(other) for other in NAMES}
    for other, widget in reversed(docks.items()):  # the ROI list and the editor's target are ready first
        start(widget, other)
    wait_until(HOLDING.is_set, "the features to be written")  # the other jobs wait or run (a pool thread per core)
    for other, widget in docks.items():  # and once more, at once, whatever the first ones did meanwhile
        if other != "Fit":
            start(widget, other)
    print("VIEWER CLOSED MID-JOB", ", ".join(sorted(job.name for widget in docks.values()
                                                    for job in _common.dock_jobs(widget))), flush=True)
    CLOSING.set()
    viewer.close()
    sys.exit(0)

QThreadPool.globalInstance().setMaxThreadCount(32)  # every job runs at once, none waits for a pool thread

# 1. remove each dock in turn while its job runs: the job is stopped, nothing of it reaches the removed widget
for name in NAMES:
    widget = dock(name)
    job, mid_job = start(widget, name)
    wait_until(mid_job, f"the {name} job to run")
    n_layers = len(viewer.layers)
    CLOSING.set()
    viewer.window.remove_dock_widget(widget)
    assert not _common.dock_jobs(widget), f"{name}: the removed dock's jobs were not stopped"
    assert job.ended.is_set(), f"{name}: the removed dock's job was still running"
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        QApplication.processEvents()
    assert len(viewer.layers) == n_layers, f"{name}: a job of the removed dock added layers"
    print(f"DOCK CLOSED MID-JOB {name}: {job.name}", flush=True)
    CLOSING.clear()  # the job has ended: nothing is held any more
    HOLDING.clear()

# 2. dock them all again, start every job, close the viewer while they all run (in napari's event loop), exit
docks = {name: dock(name) for name in NAMES}
wait_until(lambda: all(ready(widget, name) for name, widget in docks.items()), "every dock to be ready")
started = {"Fit": start(docks["Fit"], "Fit")}  # held at its features until the close: surely still mid-job
wait_until(started["Fit"][1], "the Fit job to write its features")


def start_the_others():
    started.update((name, start(widget, name)) for name, widget in docks.items() if name != "Fit")
    close_when_running(time.monotonic() + 30)


def close_when_running(deadline):
    """Close the viewer once every dock's job runs (or at the deadline: the test then names the docks whose
    job did not)."""
    busy = {name: mid_job() for name, (job, mid_job) in started.items()}
    if not all(busy.values()) and time.monotonic() < deadline:
        QTimer.singleShot(5, functools.partial(close_when_running, deadline))
        return
    for name, (job, _) in started.items():
        print(f"VIEWER CLOSED {'MID-JOB' if busy[name] else 'NOT MID-JOB'} {name}: {job.name}", flush=True)
    CLOSING.set()
    viewer.close()


QTimer.singleShot(0, start_the_others)
napari.run()
print("LOOP ENDED", flush=True)
'''


@pytest.fixture(scope="module")
def closing_world(tmp_path_factory, fit_synthetic_world):
    """A fitted synthetic world (150 images) and its results folder; each test copies the folder."""
    root = tmp_path_factory.mktemp("closing")
    fit_synthetic_world(root, n_images=N_IMAGES)
    return root


def aside(folder: Path) -> list[str]:
    """What a step writing aside (or the manifest) left behind: names like ``.features.x1y2.tmp``."""
    return sorted(path.name for path in folder.rglob(".*.tmp"))


def run_scenario(name, closing_world, tmp_path):
    """Run the scenario ``name`` ("docks" or "all") on a copy of the results folder, assert a clean
    exit and an unchanged folder; returns the scenario's output and what to say on failure."""
    results, fresh = tmp_path / "results", tmp_path / "fresh-results"
    shutil.copytree(closing_world / "results", results)
    manifest = json.loads((results / "manifest.json").read_text())
    script = tmp_path / "scenario.py"
    script.write_text(SCENARIO)
    start = time.monotonic()
    done = subprocess.run([sys.executable, str(script), name, str(results), str(closing_world / "world"), str(fresh)],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ))
    said = (f"exit {done.returncode} after {time.monotonic() - start:.0f} s\nstdout:\n{done.stdout}\n"
            f"stderr:\n{done.stderr[-4000:]}")
    assert done.returncode == 0, said
    assert "Traceback" not in done.stderr and "has been deleted" not in done.stderr, said
    after = json.loads((results / "manifest.json").read_text())
    changed = sorted(step for step in {**after["steps"], **manifest["steps"]}
                     if after["steps"].get(step) != manifest["steps"].get(step))
    assert after == manifest, f"steps changed: {changed}\n{said}"
    assert aside(results) == [], said
    if fresh.exists():  # Data and model stopped before writing, or wrote a whole results folder
        assert aside(fresh) == [], said
        assert "brain" in json.loads((fresh / "manifest.json").read_text())["steps"], said
    return done.stdout, said


def test_closing_each_dock_then_the_viewer_mid_job_exits_cleanly_and_writes_nothing_half(closing_world, tmp_path):
    stdout, said = run_scenario("docks", closing_world, tmp_path)
    for name in DOCKS:
        assert f"DOCK CLOSED MID-JOB {name}:" in stdout, f"{name}: the dock was not removed mid-job\n{said}"
        assert f"VIEWER CLOSED MID-JOB {name}:" in stdout, f"{name}: the viewer was not closed mid-job\n{said}"
    assert "LOOP ENDED" in stdout, said


def test_closing_the_viewer_at_once_with_every_dock_busy_exits_cleanly(closing_world, tmp_path):
    """The reported abort: docks on a results folder, every job running, the viewer closed, the script ends."""
    stdout, said = run_scenario("all", closing_world, tmp_path)
    assert "VIEWER CLOSED MID-JOB" in stdout, said
    live = stdout.split("VIEWER CLOSED MID-JOB")[1].split("\n")[0]
    assert "fit_steps" in live and len(live.split(",")) >= 3, said
