"""Target spaces: a surface space answers the same questions as a volume space, on fsaverage vertices."""

import numpy as np
import pytest

from napari_mine.errors import MineInputError
from napari_mine.spaces import SurfaceLayout, SurfaceSpace
from napari_mine.surfaces import RESOLUTIONS, fsaverage_mesh, resolution_of, subdivide

LAYOUT = SurfaceLayout("fsaverage5", {"lh": 10242, "rh": 10242})


@pytest.fixture
def space():
    mask = np.zeros(LAYOUT.n_vertices, bool)
    mask[[5, 9, 10242 + 3, 10242 + 7]] = True
    labels = np.zeros(LAYOUT.n_vertices, np.int32)
    labels[[9, 10242 + 3]] = 2
    return SurfaceSpace(mask, {"floc-faces": (labels, {1: "OFA", 2: "FFA-1"})}, LAYOUT)


def test_targets_are_vertices_of_the_left_then_the_right_hemisphere(space):
    assert space.n_targets == 4
    assert [space.hemisphere_of(t) for t in range(4)] == [("lh", 5), ("lh", 9), ("rh", 3), ("rh", 7)]
    assert space.target_at_vertex("rh", 3) == 2 and space.target_at_vertex("lh", 6) is None
    assert space.target_at(10242 + 7) == 3 and space.target_at(10 ** 6) is None
    assert space.ijk_of(2) == (1, 3)
    np.testing.assert_allclose(space.world_of(0), fsaverage_mesh("lh", "white").vertices[5])


def test_values_go_back_to_each_hemisphere_and_rois_read_per_vertex(space):
    on_sites = space.unmask(np.arange(4.0))
    halves = space.per_hemisphere(on_sites)
    assert halves["lh"].shape == (10242,) and halves["rh"][7] == 3.0 and np.isnan(halves["lh"][0])
    assert space.roi_names_of(1) == ("FFA-1",) and space.roi_names_of(0) == ()
    assert space.present_labels() == {"floc-faces": {2: "FFA-1"}}
    assert list(space.roi_of_targets()) == ["", "FFA-1", "FFA-1", ""]


def test_a_mask_of_another_size_and_unknown_resolutions_are_refused():
    with pytest.raises(MineInputError, match="does not cover"):
        SurfaceSpace(np.ones(100, bool), {}, LAYOUT)
    with pytest.raises(MineInputError, match="fits no fsaverage mesh"):
        resolution_of(12345, "lh.betas.mgh")
    assert resolution_of(163842, "x") == "fsaverage"


def test_icosahedral_refinement_reaches_the_fsaverage_sizes():
    mesh = fsaverage_mesh("lh", "sphere")
    finer = subdivide(mesh, 1)
    assert finer.n_vertices == RESOLUTIONS["fsaverage6"] and len(finer.faces) == 4 * len(mesh.faces)
    np.testing.assert_array_equal(finer.vertices[: mesh.n_vertices], mesh.vertices)  # coarse vertices come first
    flat = fsaverage_mesh("rh", "flat")
    assert np.all(flat.vertices[:, 2] == 0) and len(np.unique(flat.faces)) < flat.n_vertices  # medial wall cut
