"""Open napari on a results folder with the napari-mine widgets docked (what `napari-mine view` runs)."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_WIDGETS = ("Voxel inspector", "ROI explorer", "Counterfactual editor")
VENTRAL_VIEW = (180.0, 0.0, 180.0)  # camera angles (degrees) looking up at the ventral occipito-temporal cortex


def view_results(path: str | os.PathLike, *, widgets=DEFAULT_WIDGETS, block: bool = True, show: bool = True,
                 on_fsaverage: bool = False):
    """Open a napari viewer on the results store at ``path``, with ``widgets`` docked on the right.

    Parameters
    ----------
    path : path
        A results folder (holding ``manifest.json``), or a study of several subjects (holding ``study.json``): one
        napari grid cell per subject, a click linked across the subjects.
    widgets : sequence of str
        Display names of napari-mine widgets to dock ("Data and model", "Fit", "Voxel inspector",
        "ROI explorer", "Counterfactual editor").
    block : bool
        Run the Qt event loop until the window is closed (False returns at once, e.g. in a notebook).
    show : bool
        Show the window (False for scripted screenshots and tests).
    on_fsaverage : bool
        Also draw volume results of an NSD subject on the inflated fsaverage, carried there through the subject's
        transforms (the volume layers are hidden; switch them back on in the layer list).

    Returns
    -------
    napari.Viewer
    """
    import napari

    from napari_mine._widgets._common import brain_layer, focus_on_brain, mine_meta
    from napari_mine._widgets._study import keep_study_grid, subject_stores
    from napari_mine._widgets._surface import own_picking
    from napari_mine.errors import MineInputError
    from napari_mine.store import ResultsStore
    from napari_mine.study import Study, is_study

    if is_study(path):
        if on_fsaverage:
            raise MineInputError(f"{path} is a study; --on-fsaverage draws one subject's volume results, so open a "
                                 "subject's folder (e.g. STUDY/subj01) with it.")
        root = Study.open(path).root  # refuses subjects made with different models, spaces or vocabularies
    else:
        root = ResultsStore.open(path).root  # refuses a folder that is not a results store, in one sentence
    viewer = napari.Viewer(title=f"napari-mine: {Path(root).name}", show=show)
    viewer.open(str(root), plugin="napari-mine")
    own_picking(viewer)
    keep_study_grid(viewer)
    for index, name in enumerate(widgets):
        viewer.window.add_plugin_dock_widget("napari-mine", name, tabify=index > 0)
    subjects = subject_stores(viewer)
    brain = brain_layer(viewer, min(subjects, key=lambda store: subjects[store][1]) if subjects else None)
    if brain is not None:
        viewer.layers.selection.active = brain
        focus_on_brain(viewer, mine_meta(brain)["store"])
    if on_fsaverage:
        _show_on_fsaverage(viewer, root)
    if block:
        napari.run()
    return viewer


def _show_on_fsaverage(viewer, root) -> None:
    from napari.layers import Layer

    from napari_mine._reader import projected_layers
    from napari_mine.results import open_results

    layers = projected_layers(open_results(root))
    for layer in list(viewer.layers):
        layer.visible = False
    for data, kwargs, kind in layers:
        viewer.add_layer(Layer.create(data, kwargs, kind))
    viewer.dims.ndisplay = 3
    viewer.reset_view()
    viewer.camera.angles = VENTRAL_VIEW
