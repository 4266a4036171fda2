"""The synthetic world's subject on fsaverage: NSD's surface files, transforms that land on each vertex's voxel,
ROI patches where their real counterparts are, retinotopy on the cortex, and the truth re-indexed to vertices."""

from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import scipy.io
from scipy.ndimage import map_coordinates
from scipy.sparse.csgraph import connected_components
from scipy.stats import spearmanr

from napari_mine.errors import MineInputError
from napari_mine.spaces import SurfaceLayout, SurfaceSpace, VolumeSpace
from napari_mine.synthetic import cortex as C
from napari_mine.synthetic import write_fsaverage as F
from napari_mine.synthetic import write_nsd as W
from napari_mine.synthetic.brain import ROI_FILES

N_IMAGES, N_SHARED, REPEATS, PER_SESSION = 120, 40, 3, 60
N_TRIALS = N_IMAGES - N_SHARED + N_SHARED * REPEATS
HEMIS = ("lh", "rh")
LABEL_NAMES = ("nsdgeneral",) + tuple(ROI_FILES)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("cortex") / "world"
    info = W.write_world(root, seed=5, n_images=N_IMAGES, n_shared=N_SHARED, repeats=REPEATS,
                         trials_per_session=PER_SESSION, space="fsaverage")
    return root, info, W.load_truth(root)


@pytest.fixture(scope="module")
def plain_world(tmp_path_factory):
    """The same world written without its cortex."""
    root = tmp_path_factory.mktemp("cortex") / "plain"
    W.write_world(root, seed=5, n_images=N_IMAGES, n_shared=N_SHARED, repeats=REPEATS, trials_per_session=PER_SESSION)
    return root


def _values(path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def _stored(image) -> np.dtype:
    """The stored dtype in native byte order (MGH files are big-endian)."""
    return image.get_data_dtype().newbyteorder("=")


def _surface_space(root) -> SurfaceSpace:
    """The world's surface nsdgeneral and ROI labels, read from its fsaverage label files."""
    folder = root / F.LABELS
    rois = {}
    for name in LABEL_NAMES:
        values = np.concatenate([_values(folder / f"{hemi}.{name}.mgz").ravel() for hemi in HEMIS])
        table = dict(line.split()[:2] for line in (folder / f"{name}.mgz.ctab").read_text().splitlines())
        rois[name] = (values, {int(k): v for k, v in table.items() if k != "0"})
    layout = SurfaceLayout(C.MESH, {hemi: C.N_VERTICES for hemi in HEMIS})
    return SurfaceSpace(rois["nsdgeneral"][0] == 1, rois, layout)


def test_fsaverage_files_have_nsd_names_shapes_and_units(world):
    root, info, truth = world
    assert (info.space, info.n_vertices) == ("fsaverage", info.n_voxels)
    assert sorted(p.name for p in root.parent.iterdir()) == ["world"], "no staging folder is left behind"
    n_sessions = -(-N_TRIALS // PER_SESSION)
    lengths = [PER_SESSION] * (n_sessions - 1) + [N_TRIALS - PER_SESSION * (n_sessions - 1)]
    for hemi in HEMIS:
        for session, length in enumerate(lengths, start=1):
            image = nib.load(root / F.BETAS / f"{hemi}.betas_session{session:02d}.mgh")
            assert image.shape == (C.N_VERTICES, 1, 1, length) and _stored(image) == np.float32
        assert not (root / F.BETAS / f"{hemi}.betas_session{n_sessions + 1:02d}.mgh").exists()
        ncsnr = nib.load(root / F.BETAS / f"{hemi}.ncsnr.mgh")
        assert ncsnr.shape == (C.N_VERTICES, 1, 1) and _stored(ncsnr) == np.float32
        for name in LABEL_NAMES:
            label = nib.load(root / F.LABELS / f"{hemi}.{name}.mgz")
            assert label.shape == (C.N_VERTICES, 1, 1) and _stored(label) == np.int32
        for depth in F.DEPTHS:
            transform = nib.load(root / F.TRANSFORMS / f"{hemi}.func1pt8-to-{depth}.mgz")
            assert transform.shape == (C.N_VERTICES, 1, 1, 3) and _stored(transform) == np.float32
        native = _values(root / F.TRANSFORMS / f"{hemi}.white-to-fsaverage.mgz").ravel()
        assert np.array_equal(native, np.arange(1, C.N_VERTICES + 1))
    assert (root / F.LABELS / "floc-faces.mgz.ctab").read_text().splitlines()[:3] == [
        "0 Unknown 0 0 0 0", "1 OFA 242 61 61 0", "2 FFA-1 206 242 61 0"]
    assert (root / W.BETAS / "betas_session01.nii.gz").is_file(), "the volume files are written as well"
    # float32 percent signal change, no ×300: the spread of the signal vertices is the volume's / 300
    space, betas = _surface_space(root), _values(root / F.BETAS / "lh.betas_session01.mgh")
    volume = _values(root / W.BETAS / "betas_session01.nii.gz")[truth.brain.mask] / W.BETA_SCALE
    lh_signal = betas.reshape(C.N_VERTICES, -1)[space.mask[: C.N_VERTICES]]
    assert 0.7 < lh_signal.std() / volume.std() < 1.4


def test_betas_carry_each_vertex_voxel_signal_and_ncsnr(world):
    root, _, truth = world
    space = _surface_space(root)
    on_vertices = truth.for_space(space)
    design = scipy.io.loadmat(root / W.EXPDESIGN)
    stimuli = truth.subject_images[design["masterordering"][0, :PER_SESSION].astype(int) - 1]
    clean = on_vertices.true_response([truth.scenes[i] for i in stimuli])
    betas = np.concatenate([_values(root / F.BETAS / f"{hemi}.betas_session01.mgh").reshape(C.N_VERTICES, -1)
                            for hemi in HEMIS])[space.mask].T
    category = np.flatnonzero(on_vertices.brain.tuning.kind == "category")
    r = [np.corrcoef(betas[:, v], clean[:, v])[0, 1] for v in category[::10]]
    assert np.median(r) > 0.4
    ncsnr = np.concatenate([_values(root / F.BETAS / f"{hemi}.ncsnr.mgh").ravel() for hemi in HEMIS])
    assert 0.5 < np.median(ncsnr[space.mask][category]) < 1.3
    cortex = truth.cortex.cortex
    assert np.median(ncsnr[cortex & ~space.mask]) < 0.25
    medial_wall = _values(root / F.BETAS / "lh.betas_session01.mgh").reshape(C.N_VERTICES, -1)[~cortex[:C.N_VERTICES]]
    assert (medial_wall == 0).all()


def test_sampling_volume_betas_through_the_transforms_lands_on_each_vertex_voxel(world):
    root, _, truth = world
    brain, cortex_map = truth.brain, truth.cortex
    clean = truth.true_response(truth.scenes[:40])
    noiseless = np.zeros(brain.shape + (40,), np.float32)
    noiseless[brain.mask] = clean.T
    measured = _values(root / W.BETAS / "betas_session01.nii.gz").astype(np.float32)
    general = np.flatnonzero(brain.mask)
    for hemi in HEMIS:
        depths = np.stack([_values(root / F.TRANSFORMS / f"{hemi}.func1pt8-to-{d}.mgz").reshape(-1, 3)
                           for d in F.DEPTHS])
        voxel = cortex_map.voxel_of_site[cortex_map.sites(hemi)]
        inside = voxel >= 0
        assert (depths[:, ~cortex_map.cortex[cortex_map.sites(hemi)]] == F.INVALID).all()
        assert (depths[:, cortex_map.cortex[cortex_map.sites(hemi)]] < F.INVALID).all()

        def sampled(volume, order):
            return np.mean([np.stack([map_coordinates(volume[..., t], (c[inside] - 1).T, order=order)
                                      for t in range(volume.shape[-1])]) for c in depths], axis=0)

        target = clean[:, voxel[inside]]
        varying = target.std(0) > 1e-3
        for order, floor in ((0, 0.9999), (1, 0.95)):
            samples = sampled(noiseless, order)
            r = np.array([np.corrcoef(samples[:, j], target[:, j])[0, 1] for j in np.flatnonzero(varying)])
            assert np.median(r) > floor, (hemi, order)
        # the real volume betas, nearest neighbour: exactly the vertex's voxel, at every depth
        ijk = np.rint(depths[:, inside] - 1).astype(int)
        assert all(np.array_equal(np.ravel_multi_index(tuple(d.T), brain.shape), general[voxel[inside]]) for d in ijk)
        assert np.array_equal(sampled(measured[..., :5], 0), measured[brain.mask][voxel[inside], :5].T)
        # other cortex vertices point into cortex voxels outside nsdgeneral, so volume maps stay off them
        rest = cortex_map.cortex[cortex_map.sites(hemi)] & ~inside
        ijk = tuple(np.rint(depths[1, rest] - 1).astype(int).T)
        assert brain.cortex[ijk].all() and not brain.mask[ijk].any()


def test_roi_patches_lie_at_their_anatomical_places(world):
    root, _, truth = world
    tuning, cortex_map = truth.brain.tuning, truth.cortex
    labels = {name: np.concatenate([_values(root / F.LABELS / f"{hemi}.{name}.mgz").ravel() for hemi in HEMIS])
              for name in ROI_FILES}
    for hemi in HEMIS:
        geometry = C._geometry(hemi)
        span = cortex_map.sites(hemi)
        for name, centre in C.PLACES.items():
            if name in C.LEFT_ONLY and hemi == "rh":
                assert name not in cortex_map.places or hemi not in cortex_map.places[name]
                continue
            requested = np.array(centre) * ([-1, 1, 1] if hemi == "rh" else [1, 1, 1])
            patch = np.flatnonzero(tuning.roi[np.maximum(cortex_map.voxel_of_site[span], 0)] == name)
            patch = patch[cortex_map.voxel_of_site[span][patch] >= 0]
            expected = (tuning.roi == name).sum() if name in C.LEFT_ONLY else \
                ((tuning.roi == name) & (tuning.hemisphere == ("left" if hemi == "lh" else "right"))).sum()
            assert len(patch) == expected, (hemi, name)
            distance = np.linalg.norm(geometry.points[patch] - requested, axis=1)
            assert distance.min() < 6.0, (hemi, name, distance.min())  # the patch holds the centre's vertex
            assert np.linalg.norm(geometry.points[patch].mean(0) - requested) < 15.0, (hemi, name)
            n_parts, _ = connected_components(geometry.graph[patch][:, patch], directed=False)
            assert n_parts == 1, (hemi, name)
            assert cortex_map.cortex[span][patch].all()
            for file_name, names in ROI_FILES.items():
                if name in names:
                    assert (labels[file_name][span][patch] == names.index(name) + 1).all()
    # floc-words only on the left; the surface mask covers both hemispheres, half the voxels each
    assert (labels["floc-words"][cortex_map.sites("rh")] <= 0).all()
    per_hemisphere = [cortex_map.mask[cortex_map.sites(hemi)].sum() for hemi in HEMIS]
    assert abs(per_hemisphere[0] - per_hemisphere[1]) <= 1 and sum(per_hemisphere) == truth.brain.n_voxels
    assert np.array_equal(np.sort(cortex_map.voxel_of_site[cortex_map.mask]), np.arange(truth.brain.n_voxels))


def test_early_visual_vertices_keep_hemifield_and_eccentricity(world):
    root, _, truth = world
    on_vertices = truth.for_space(_surface_space(root))
    tuning, sites = on_vertices.brain.tuning, np.flatnonzero(on_vertices.brain.mask)
    eccentricity = np.hypot(tuning.prf_x - 0.5, tuning.prf_y - 0.5)
    for hemi, contralateral in (("lh", tuning.prf_x >= 0.5), ("rh", tuning.prf_x <= 0.5)):
        span = truth.cortex.sites(hemi)
        in_hemi = (sites >= span.start) & (sites < span.stop)
        pole = C._geometry(hemi).pole_distance[sites[in_hemi] - span.start]
        for area in ROI_FILES["prf-visualrois"]:
            members = tuning.roi[in_hemi] == area
            assert contralateral[in_hemi][members].all(), (hemi, area)  # the left hemisphere sees the right field
            assert spearmanr(pole[members], eccentricity[in_hemi][members])[0] > 0.7, (hemi, area)


def test_truth_reindexed_to_surface_targets_is_the_voxel_truth(world):
    from napari_mine.validate import truth_voxels

    root, _, truth = world
    space = _surface_space(root)
    on_vertices = truth.for_space(space)
    voxel = truth.cortex.voxel_of_site[space.mask]
    assert np.array_equal(on_vertices.brain.mask, space.mask)
    scenes = truth.scenes[:6]
    assert np.array_equal(on_vertices.true_response(scenes), truth.true_response(scenes)[:, voxel])
    assert np.array_equal(on_vertices.brain.tuning.subpopulation, truth.brain.tuning.subpopulation[voxel])
    # the ROI label files say what the truth says, vertex by vertex
    named = np.isin(on_vertices.brain.tuning.roi, [n for names in ROI_FILES.values() for n in names])
    assert np.array_equal(space.roi_of_targets()[named], on_vertices.brain.tuning.roi[named])
    assert (space.roi_of_targets()[~named] == "").all()
    # idempotent, and what validation's voxel matching reads
    assert on_vertices.for_space(space) is on_vertices
    assert np.array_equal(truth_voxels(SimpleNamespace(space=space), on_vertices), np.arange(space.n_targets))
    subset = space.mask.copy()
    subset[np.flatnonzero(subset)[::7]] = False
    smaller = truth.for_space(SurfaceSpace(subset, {}, space.layout))
    copied = truth.cortex.voxel_of_site[subset]
    assert np.array_equal(smaller.true_response(scenes), truth.true_response(scenes)[:, copied])
    volume = VolumeSpace(truth.brain.mask, truth.brain.affine, {})
    assert truth.for_space(volume) is truth


def test_truth_refuses_surfaces_it_cannot_answer_for(world, plain_world, tmp_path):
    root, _, truth = world
    space = _surface_space(root)
    outside = space.mask | truth.cortex.cortex
    with pytest.raises(MineInputError, match="outside the world's surface nsdgeneral"):
        truth.for_space(SurfaceSpace(outside, {}, space.layout))
    coarse = SurfaceLayout("fsaverage4", {"lh": 2562, "rh": 2562})
    with pytest.raises(MineInputError, match="not this world's fsaverage5"):
        truth.for_space(SurfaceSpace(np.ones(2 * 2562, bool), {}, coarse))
    volume_only = W.load_truth(plain_world)
    assert volume_only.cortex is None and not (plain_world / F.BETAS).exists()
    with pytest.raises(MineInputError, match="--space fsaverage"):
        volume_only.for_space(space)
    with pytest.raises(MineInputError, match="not a world space"):
        W.write_world(tmp_path / "bad", n_images=N_IMAGES, n_shared=N_SHARED, space="fsaverage7")


def test_the_volume_world_is_the_same_with_or_without_its_cortex(world, plain_world):
    root, _, truth = world
    plain = plain_world
    for session in ("betas_session01.nii.gz", "betas_session04.nii.gz", "ncsnr.nii.gz"):
        assert np.array_equal(_values(plain / W.BETAS / session), _values(root / W.BETAS / session))
    assert np.array_equal(W.load_truth(plain).brain.tuning.noise_sd, truth.brain.tuning.noise_sd)


def test_cli_world_takes_the_space():
    from napari_mine.cli import build_parser

    assert build_parser().parse_args(["world", "out", "--space", "fsaverage"]).space == "fsaverage"
    assert build_parser().parse_args(["world", "out"]).space == "volume"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["world", "out", "--space", "mni"])
