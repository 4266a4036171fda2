"""Surface results in the docks: clicks and hovers resolved to vertices by our own picking, per-target values
drawn on both hemispheres, the marker of the selected vertex, and the flat / inflated / pial view switch.

The docks stay one code path: they hand a click or values over all sites (``space.unmask``) to these functions
when the store's brain layers are Surface layers (the reader's ``surface_layers``), and draw volumes as before
otherwise. napari's own Surface picking (a ray test of every face, on every mouse move of the active layer for
the status bar) is replaced on our layers by the same :class:`~napari_mine.picking.MeshPicker`.
"""

from __future__ import annotations

from functools import lru_cache, partial

import numpy as np
from qtpy.QtWidgets import QComboBox, QFormLayout, QWidget

from napari_mine._reader import (
    DEFAULT_SURFACE_VIEW,
    META,
    SURFACE_VIEWS,
    display_mesh,
    layer_metadata,
    surface_layer_data,
    surface_meta,
)
from napari_mine._widgets._common import fit_surface_view, mine_meta, store_layers
from napari_mine.picking import MeshPicker, first_pick

MARKER_SIZE_MM = 6.0
OWN_PICKING = "napari_mine_picking"  # set on a layer (and a layer list) once its value lookups are ours


# ---- which layers --------------------------------------------------------------------------------
def is_surface(layer) -> bool:
    """True for a Surface layer of a surface results store (it carries its hemisphere and view)."""
    from napari.layers import Surface

    return isinstance(layer, Surface) and "hemi" in mine_meta(layer)


def surface_layers(viewer, store: str, role: str | None = None) -> list:
    """The store's Surface layers (of one role), topmost first."""
    return [layer for layer in store_layers(viewer, role=role, store=store) if is_surface(layer)]


def store_view(viewer, store: str) -> str:
    """The view (flat, inflated or pial) the store's surface layers show."""
    layers = surface_layers(viewer, store)
    return mine_meta(layers[0])["view"] if layers else DEFAULT_SURFACE_VIEW


def _mesh_key(meta: dict, view: str | None = None) -> tuple:
    """``display_mesh``'s arguments for a surface layer's metadata (in ``view``, default the layer's own)."""
    surface = meta["surface"]
    return (meta["hemi"], view or meta["view"], surface["mesh"], int(surface["hemispheres"][meta["hemi"]]),
            surface.get("freesurfer_dir"))


def _mesh(meta: dict, view: str | None = None):
    return display_mesh(*_mesh_key(meta, view))


@lru_cache(maxsize=8)
def _picker(*mesh_key) -> MeshPicker:
    shown = display_mesh(*mesh_key)
    return MeshPicker(shown.vertices, shown.faces)


def layer_picker(layer) -> MeshPicker:
    """The picker of the mesh a surface layer shows now (its whole view mesh: every layer of a hemisphere lies
    on it, whatever faces that layer draws)."""
    return _picker(*_mesh_key(mine_meta(layer)))


def site_of(meta: dict, vertex: int) -> int:
    """The site (vertex over both hemispheres, the space's index) of a vertex of the layer's hemisphere."""
    hemispheres = list(meta["surface"]["hemispheres"].items())
    names = [name for name, _ in hemispheres]
    return sum(count for _, count in hemispheres[: names.index(meta["hemi"])]) + int(vertex)


def index_text(brain, ijk) -> str:
    """A target's index as the inspector shows it: "(i, j, k)" of a voxel, "lh vertex 1234" of a vertex."""
    if not is_surface(brain):
        return str(tuple(ijk))
    return f"{list(mine_meta(brain)['surface']['hemispheres'])[int(ijk[0])]} vertex {int(ijk[1])}"


def label_at(layer, ijk) -> int:
    """The label value of an ROI layer at a target's index (a voxel's (i, j, k), or (hemisphere index, vertex)
    on a surface layer: 0 on the other hemisphere)."""
    if not is_surface(layer):
        return int(layer.data[tuple(ijk)])
    meta = mine_meta(layer)
    if list(meta["surface"]["hemispheres"]).index(meta["hemi"]) != int(ijk[0]):
        return 0
    values = np.asarray(layer.vertex_values)
    return int(values[int(ijk[1])]) if int(ijk[1]) < values.shape[-1] else 0


# ---- picking -----------------------------------------------------------------------------------
def pick_layer(layer, position, view_direction=None, displayed=(1, 2)):
    """The :class:`~napari_mine.picking.Pick` under a world position on one surface layer (a ray along
    ``view_direction`` when all three layer axes are ``displayed``, else the nearest vertex over them), or None."""
    picker = layer_picker(layer)
    start = np.asarray(layer.world_to_data(position), dtype=float)
    if len(displayed) == 3 and view_direction is not None:
        towards = np.asarray(layer.world_to_data(np.asarray(position, float) + np.asarray(view_direction, float)))
        return picker.ray(start, towards - start)
    return picker.nearest(start, axes=displayed)


def pick_site(viewer, store: str, position, view_direction=None) -> int | None:
    """The site under a click on the store's visible hemispheres (the first hit along the ray in 3-D, the
    nearest vertex in 2-D), or None when the click misses the cortex."""
    by_hemi = {}
    for layer in surface_layers(viewer, store):
        if layer.visible:
            by_hemi.setdefault(mine_meta(layer)["hemi"], layer)
    picks = []
    for layer in by_hemi.values():
        extra = viewer.dims.ndim - layer.ndim  # world axes before the layer's (the stimulus axis)
        displayed = tuple(axis - extra for axis in viewer.dims.displayed if axis >= extra)
        picks.append((layer, pick_layer(layer, position, view_direction, displayed)))
    found = first_pick(picks)
    return None if found is None else site_of(mine_meta(found[0]), found[1].vertex)


def _hover_value(layer, pick):
    if pick is None:
        return None, None
    meta = mine_meta(layer)
    shown = meta.get("shown")
    inside = shown is None or (pick.vertex < len(shown) and shown[pick.vertex])
    value = float(np.ravel(layer.vertex_values[..., pick.vertex])[0]) if inside else None
    return value, f"{meta.get('hemi', layer.name)} vertex {pick.vertex}"


def _get_value(layer, picker_of, position, *, view_direction=None, dims_displayed=None, world: bool = False):
    """``Surface.get_value`` (what the status bar calls on every mouse move), answered by our picking: the value
    at the picked vertex and the vertex, ``(None, None)`` off the cortex. napari's own also recomputes the
    layer's extent over every vertex (~50 ms on a fsaverage7 hemisphere) before testing every face."""
    if not layer.visible:
        return None
    position = np.asarray(position, dtype=float)
    start = np.asarray(layer.world_to_data(position) if world else position, dtype=float)
    extra = len(position) - layer.ndim if world else 0  # world axes before the layer's
    displayed = [axis - extra for axis in (dims_displayed or []) if axis >= extra] or \
        list(layer._slice_input.displayed)
    picker = picker_of()
    if len(displayed) == 3 and view_direction is not None:
        direction = np.asarray(view_direction, dtype=float)
        if world:
            direction = np.asarray(layer.world_to_data(position + direction), dtype=float) - start
        return _hover_value(layer, picker.ray(start, direction))
    return _hover_value(layer, picker.nearest(start, axes=displayed))


def use_own_picking(layer, picker: MeshPicker | None = None) -> None:
    """Answer napari's value lookups on a Surface layer (status bar, tooltips) with our picking: napari's own
    tests every face, ~1 s per mouse move on both fsaverage7 hemispheres. A store's surface layers find the
    picker of the view they show; any other Surface layer needs its mesh's ``picker``."""
    layer = getattr(layer, "__wrapped__", layer)  # the layer itself, not a plugin's proxy of it
    if getattr(layer, OWN_PICKING, False) or (picker is None and not is_surface(layer)):
        return
    picker_of = partial(layer_picker, layer) if picker is None else (lambda: picker)
    layer.get_value = partial(_get_value, layer, picker_of)
    setattr(layer, OWN_PICKING, True)


def own_picking(viewer) -> None:
    """Use our picking on every surface layer of the viewer, now and when layers are added (once per viewer)."""
    for layer in viewer.layers:
        use_own_picking(layer)
    layers = getattr(viewer.layers, "__wrapped__", viewer.layers)
    if not getattr(layers, OWN_PICKING, False):
        layers.events.inserted.connect(_on_inserted)
        setattr(layers, OWN_PICKING, True)


def _on_inserted(event) -> None:
    use_own_picking(event.value)


# ---- drawing -----------------------------------------------------------------------------------
def mark_site(viewer, store: str, voxel: int, ijk, name: str) -> None:
    """Put the selected target (``ijk`` = (hemisphere index, vertex)) on the store's marker Points layer (role
    "voxel", called ``name`` when new), at the vertex on the view shown; drawn over the cortex so it stays
    visible from any side."""
    layers = surface_layers(viewer, store)
    if not layers:
        return
    meta = mine_meta(layers[0])
    hemi = list(meta["surface"]["hemispheres"])[int(ijk[0])]
    position = _mesh({**meta, "hemi": hemi}).vertices[int(ijk[1])][None].astype(float)
    metadata = layer_metadata(store, "voxel", voxel=int(voxel), ijk=[int(v) for v in ijk])
    markers = store_layers(viewer, role="voxel", store=store)
    if markers:
        marker = markers[0]
        if marker.data.shape == position.shape:  # moved in place: a new .data re-slices every layer
            marker.data[0] = position[0]
            marker.refresh(highlight=False)
        else:
            marker.data = position
        marker.metadata = metadata
        return
    active = viewer.layers.selection.active
    viewer.add_points(position, name=name, ndim=3, size=MARKER_SIZE_MM, symbol="ring", face_color="#00e5ff",
                      border_width=0, blending="translucent_no_depth", metadata=metadata)
    viewer.layers.selection.active = active if active in viewer.layers else layers[0]


def show_site_values(viewer, store: str, role: str, values, shown, *, name: str, key: dict | None = None,
                     extra: dict | None = None, **style) -> list:
    """Values over all sites (``space.unmask``) drawn per hemisphere on the faces whose corners are ``shown``,
    as the store's layers of ``role`` (and ``key``, e.g. the ROI clustered; ``extra`` is metadata that does not
    tell layers apart); returns the layers drawn.

    A layer of that role and key is updated in place; a hemisphere with nothing to show loses its layer.
    """
    template = surface_layers(viewer, store)
    if not template:
        return []
    base = mine_meta(template[0])
    key = key or {}
    hemispheres = base["surface"]["hemispheres"]
    drawn = []
    for hemi in hemispheres:
        start = site_of({**base, "hemi": hemi}, 0)
        end = start + int(hemispheres[hemi])
        meta = {**base, "hemi": hemi}
        data = surface_layer_data(_mesh(meta), np.asarray(values)[..., start:end], np.asarray(shown)[start:end])
        existing = [layer for layer in surface_layers(viewer, store, role)
                    if mine_meta(layer)["hemi"] == hemi and all(mine_meta(layer).get(k) == v for k, v in key.items())]
        if not len(data[1]):
            for layer in existing:
                viewer.layers.remove(layer)
            continue
        drawn_shown = np.asarray(shown)[start:end][: len(data[0])]
        metadata = layer_metadata(store, role, **surface_meta(_layout(base), hemi, base["view"], drawn_shown),
                                  **key, **(extra or {}))
        if existing:
            layer = existing[0]
            layer.data, layer.metadata, layer.name = data, metadata, f"{hemi} {name}"
            for attribute, value in style.items():
                setattr(layer, attribute, value)
        else:
            active = viewer.layers.selection.active
            layer = viewer.add_surface(data, name=f"{hemi} {name}", shading="smooth", metadata=metadata, **style)
            viewer.layers.selection.active = active if active in viewer.layers else template[0]
        drawn.append(layer)
    return drawn


def _layout(meta: dict):
    from napari_mine.spaces import SurfaceLayout

    return SurfaceLayout.parse(meta["surface"])


# ---- the view ----------------------------------------------------------------------------------
def show_view(viewer, store: str, view: str) -> None:
    """Show the store's cortex in ``view``: every surface layer's mesh swapped in place (its values kept), the
    marker moved to its vertex, then the view fitted (2-D for the flat map, 3-D otherwise)."""
    if view not in SURFACE_VIEWS:
        raise ValueError(f"no surface view {view!r}; choose one of {SURFACE_VIEWS}.")
    for layer in surface_layers(viewer, store):
        meta = mine_meta(layer)
        if meta["view"] != view:
            values = np.asarray(layer.vertex_values)
            shown = np.asarray(meta.get("shown", np.ones(values.shape[-1], bool)))
            layer.data = surface_layer_data(_mesh(meta, view), values, shown)
            layer.metadata = {**layer.metadata, META: {**meta, "view": view}}
    for marker in store_layers(viewer, role="voxel", store=store):
        meta = mine_meta(marker)
        mark_site(viewer, store, meta["voxel"], meta["ijk"], marker.name)
    fit_surface_view(viewer, store)


class SurfaceViewChoice(QWidget):
    """A "cortex view" choice (flat / inflated / pial) for the current store, shown only for surface results."""

    def __init__(self, viewer, parent=None):
        super().__init__(parent)
        from napari_mine._widgets._common import current_store

        self.viewer = viewer
        self._current_store = partial(current_store, viewer)
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        self.view = QComboBox()
        self.view.addItems(SURFACE_VIEWS)
        self.view.setToolTip("Draw the cortex flat (2-D) or as the inflated or pial surface (3-D)")
        self.view.currentTextChanged.connect(self._on_choice)
        form.addRow("cortex view", self.view)
        viewer.layers.events.inserted.connect(self.refresh)
        viewer.layers.events.removed.connect(self.refresh)
        viewer.dims.events.ndisplay.connect(self.refresh)  # a view switched elsewhere (show_view)
        self.destroyed.connect(partial(_disconnect, viewer, self.refresh))
        self.refresh()

    def refresh(self, event=None) -> None:
        store = self._current_store()
        surface = store is not None and bool(surface_layers(self.viewer, store))
        self.setVisible(surface)
        if surface:
            self.view.blockSignals(True)
            self.view.setCurrentText(store_view(self.viewer, store))
            self.view.blockSignals(False)

    def _on_choice(self, view: str) -> None:
        store = self._current_store()
        if store is not None and surface_layers(self.viewer, store):
            show_view(self.viewer, store, view)


def _disconnect(viewer, handler) -> None:
    viewer.layers.events.inserted.disconnect(handler)
    viewer.layers.events.removed.disconnect(handler)
    viewer.dims.events.ndisplay.disconnect(handler)
