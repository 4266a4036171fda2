"""NSD's fsaverage betas through the real files: per-image means, labels, the bad input of issue 10.

The subject is the small NSD-layout subject of conftest (design, stimuli, volume ROIs) with fsaverage3 files
(642 vertices per hemisphere) written beside it in NSD's layout: ``{lh,rh}.betas_sessionNN.mgh``,
``{lh,rh}.ncsnr.mgh`` and fsaverage labels with their colour tables.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_mine.data import dataset_from_source, load_nsd_surface
from napari_mine.data.nsd import read_expdesign, trial_stimulus_ids
from napari_mine.errors import MineInputError

N_VERTICES = 642  # fsaverage3
BETAS = "nsddata_betas/ppdata/subj01/fsaverage/betas_fithrf_GLMdenoise_RR"
LABELS = "nsddata/freesurfer/fsaverage/label"


@dataclass
class SurfaceSubject:
    """The fsaverage files written, and the arrays behind them."""

    root: Path
    betas: list[np.ndarray]  # per session (n_sites, trials) float32, lh then rh
    labels: dict[str, np.ndarray]  # name -> (n_sites,) int
    ncsnr: np.ndarray

    @property
    def folder(self) -> Path:
        return self.root / BETAS


def write_mgh(path: Path, values: np.ndarray, dtype=np.float32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    values = np.asarray(values, dtype=dtype)
    shape = (values.shape[0], 1, 1) + values.shape[1:]
    nib.save(nib.freesurfer.mghformat.MGHImage(values.reshape(shape), np.eye(4)), str(path))
    return path


def write_surface_subject(volume_subject, seed: int = 0, n_vertices: int = N_VERTICES,
                          with_tables: bool = True) -> SurfaceSubject:
    """fsaverage betas (one per volume session, same trials), ncsnr and labels beside a conftest NSD subject."""
    rng = np.random.default_rng(seed)
    root = volume_subject.root
    n_sites = 2 * n_vertices
    betas = [rng.normal(0.3, 1.5, (n_sites, volume.shape[3])).astype(np.float32) for volume in volume_subject.betas]
    for number, session in enumerate(betas, start=1):
        for hemi, part in zip(("lh", "rh"), np.split(session, 2)):
            write_mgh(root / BETAS / f"{hemi}.betas_session{number:02d}.mgh", part)
    ncsnr = rng.random(n_sites).astype(np.float32)
    for hemi, part in zip(("lh", "rh"), np.split(ncsnr, 2)):
        write_mgh(root / BETAS / f"{hemi}.ncsnr.mgh", part)
    general = (rng.random(n_sites) < 0.6).astype(np.int32)
    faces = np.where(general > 0, rng.integers(0, 6, n_sites), 0).astype(np.int32)
    labels = {"nsdgeneral": general, "floc-faces": faces}
    tables = {"nsdgeneral": "0 Unknown 0 0 0 0\n1 nsdgeneral 255 0 0 0\n",
              "floc-faces": "".join(f"{k} {name} 0 0 0 0\n" for k, name in
                                    enumerate(("Unknown", "OFA", "FFA-1", "FFA-2", "mTL-faces", "aTL-faces")))}
    for name, values in labels.items():
        for hemi, part in zip(("lh", "rh"), np.split(values, 2)):
            write_mgh(root / LABELS / f"{hemi}.{name}.mgz", part, np.int32)
        if with_tables:
            (root / LABELS / f"{name}.mgz.ctab").write_text(tables[name])
    return SurfaceSubject(root, betas, labels, ncsnr)


@pytest.fixture
def surface_subject(make_nsd_subject):
    return write_surface_subject(make_nsd_subject())


def trial_images_of(subject_root, n_trials_per_session) -> np.ndarray:
    design = read_expdesign(Path(subject_root) / "nsddata/experiments/nsd/nsd_expdesign.mat")
    sessions = [(number, n) for number, n in enumerate(n_trials_per_session, start=1)]
    return trial_stimulus_ids(design, 1, sessions, max(n_trials_per_session))


def expected_means(surface: SurfaceSubject, mask: np.ndarray, zscore: bool):
    """Per-image means computed the plain way: all trials in memory."""
    trials = []
    for session in surface.betas:
        block = session[mask].T.astype(np.float64)
        if zscore:
            block = (block - block.mean(0)) / block.std(0)
        trials.append(block)
    stimulus = trial_images_of(surface.root, [s.shape[1] for s in surface.betas])
    ids, row = np.unique(stimulus, return_inverse=True)
    trials = np.concatenate(trials)
    sums = np.zeros((len(ids), trials.shape[1]))
    np.add.at(sums, row, trials)
    counts = np.bincount(row)
    return ids, sums / counts[:, None], counts


@pytest.mark.parametrize("zscore", [False, True])
def test_per_image_means_with_repeats_match_all_trials_in_memory(surface_subject, zscore):
    dataset = load_nsd_surface(surface_subject.root, zscore=zscore)
    mask = surface_subject.labels["nsdgeneral"] > 0
    ids, means, counts = expected_means(surface_subject, mask, zscore)
    assert np.array_equal(dataset.mask, mask)
    assert np.array_equal(np.asarray(dataset.images.ids), ids)
    np.testing.assert_allclose(dataset.responses, means, rtol=1e-4, atol=1e-5)
    image_ids, responses, n_repeats = dataset.image_responses()
    assert np.array_equal(image_ids, np.arange(len(ids))) and np.array_equal(n_repeats, counts)
    assert counts.max() > 1  # repeats are kept for the noise ceiling
    assert dataset.surface.mesh == "fsaverage3" and dataset.surface.hemispheres == {"lh": 642, "rh": 642}
    assert dataset.source["scale"] == 1.0  # float32 betas are % signal change already


def test_labels_ncsnr_anatomy_and_test_images(surface_subject):
    dataset = load_nsd_surface(surface_subject.root)
    mask = dataset.mask
    np.testing.assert_array_equal(dataset.ncsnr, surface_subject.ncsnr[mask])
    faces = dataset.rois["floc-faces"]
    assert faces.labels[2] == "FFA-1" and np.array_equal(faces.volume, surface_subject.labels["floc-faces"])
    names = dataset.roi_of_voxels("floc-faces")
    assert set(names) <= {"", "OFA", "FFA-1", "FFA-2", "mTL-faces", "aTL-faces"} and "FFA-1" in names
    assert dataset.anatomy.shape == (2 * N_VERTICES,) and np.isfinite(dataset.anatomy).all()
    assert dataset.test_images is not None and len(dataset.split()[1]) == len(dataset.test_images)


def test_the_source_record_reloads_the_same_surface_dataset(surface_subject):
    dataset = load_nsd_surface(surface_subject.root, sessions=[1])
    again = dataset_from_source(dataset.source)
    assert again.surface == dataset.surface and np.array_equal(again.mask, dataset.mask)
    np.testing.assert_array_equal(again.responses, dataset.responses)
    np.testing.assert_array_equal(again.n_repeats, dataset.n_repeats)


def test_nan_and_constant_vertices_are_dropped_and_counted_per_hemisphere(make_nsd_subject):
    subject = make_nsd_subject()
    surface = write_surface_subject(subject)
    general = surface.labels["nsdgeneral"] > 0
    lh_nan, rh_constant = np.flatnonzero(general[:N_VERTICES])[:3], N_VERTICES + np.flatnonzero(
        general[N_VERTICES:])[:2]
    surface.betas[1][lh_nan, 4] = np.nan  # NaN in one trial of session 2
    surface.betas[0][rh_constant] = 0.0  # the medial wall: zeros over a whole session
    for number, session in enumerate(surface.betas, start=1):
        for hemi, part in zip(("lh", "rh"), np.split(session, 2)):
            write_mgh(surface.folder / f"{hemi}.betas_session{number:02d}.mgh", part)
    with pytest.warns(UserWarning, match=r"left out of the mask: lh 3 of [\d,]+, rh 2 of"):
        dataset = load_nsd_surface(surface.root)
    expected = general.copy()
    expected[lh_nan] = expected[rh_constant] = False
    assert np.array_equal(dataset.mask, expected) and dataset.n_voxels == int(expected.sum())
    assert dataset.source["dropped_vertices"] == {"lh": 3, "rh": 2}
    _, means, _ = expected_means(surface, expected, zscore=True)
    np.testing.assert_allclose(dataset.responses, means, rtol=1e-4, atol=1e-5)  # the other columns are untouched
    assert np.isfinite(dataset.responses).all() and len(dataset.ncsnr) == dataset.n_voxels


def test_float_betas_holding_nsd_x300_values_and_int16_betas_are_divided(make_nsd_subject):
    subject = make_nsd_subject()
    surface = write_surface_subject(subject)
    for number, session in enumerate(surface.betas, start=1):
        for hemi, part in zip(("lh", "rh"), np.split(session, 2)):
            write_mgh(surface.folder / f"{hemi}.betas_session{number:02d}.mgh", np.round(part * 300))
    with pytest.warns(UserWarning, match="divided by 300"):
        scaled = load_nsd_surface(surface.root, zscore=False)
    assert scaled.source["scale"] == 300.0
    _, means, _ = expected_means(surface, scaled.mask, zscore=False)
    np.testing.assert_allclose(scaled.responses, means, atol=2e-3)
    for number, session in enumerate(surface.betas, start=1):
        for hemi, part in zip(("lh", "rh"), np.split(session, 2)):
            write_mgh(surface.folder / f"{hemi}.betas_session{number:02d}.mgh", np.round(part * 300), np.int32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_nsd_surface(surface.root, zscore=False).source["scale"] == 300.0


def test_betas_whose_vertex_count_fits_no_mesh_are_refused(make_nsd_subject):
    surface = write_surface_subject(make_nsd_subject(), n_vertices=700)
    with pytest.raises(MineInputError, match=r"700 vertices per hemisphere, which fits no fsaverage mesh"):
        load_nsd_surface(surface.root)


def test_hemispheres_of_different_resolutions_are_refused(surface_subject):
    write_mgh(surface_subject.folder / "rh.betas_session01.mgh", np.zeros((2562, surface_subject.betas[0].shape[1])))
    with pytest.raises(MineInputError, match="different resolutions"):
        load_nsd_surface(surface_subject.root)


def test_a_missing_hemisphere_is_named(surface_subject):
    (surface_subject.folder / "rh.betas_session02.mgh").unlink()
    with pytest.raises(MineInputError, match="Session 2 .* has no rh.betas_session02.mgh"):
        load_nsd_surface(surface_subject.root)
    assert load_nsd_surface(surface_subject.root, sessions=[1]).source["sessions"] == [1]


def test_a_label_file_of_another_resolution_is_refused(surface_subject):
    write_mgh(surface_subject.root / LABELS / "lh.floc-faces.mgz", np.zeros(2562), np.int32)
    with pytest.raises(MineInputError, match=r"lh.floc-faces.mgz has 2,562 vertices but the responses have 642 .*"
                                             "fsaverage3"):
        load_nsd_surface(surface_subject.root)


def test_a_missing_colour_table_names_labels_by_number_with_a_warning(make_nsd_subject):
    surface = write_surface_subject(make_nsd_subject(), with_tables=False)
    with pytest.warns(UserWarning, match="No floc-faces.mgz.ctab .* named by number"):
        dataset = load_nsd_surface(surface.root)
    assert dataset.rois["floc-faces"].labels == {k: f"floc-faces-{k}" for k in range(1, 6)}


def write_transforms(root: Path, voxels: dict[str, np.ndarray]) -> None:
    """NSD's transforms of a native surface that is fsaverage itself: each vertex at a voxel (0-based, (n, 3)),
    written 1-based at three depths a little apart, and the identity white-to-fsaverage map."""
    folder = root / "nsddata/ppdata/subj01/transforms"
    for hemi, points in voxels.items():
        for depth, offset in zip(("layerB1", "layerB2", "layerB3"), (-0.2, 0.0, 0.2)):
            write_mgh(folder / f"{hemi}.func1pt8-to-{depth}.mgz", points + 1 + offset)
        write_mgh(folder / f"{hemi}.white-to-fsaverage.mgz", np.arange(1, len(points) + 1), np.int32)


def test_volume_rois_are_carried_to_fsaverage_through_the_transforms(surface_subject):
    grid = surface_subject_grid(surface_subject)
    for hemi in ("lh", "rh"):
        (surface_subject.root / LABELS / f"{hemi}.floc-faces.mgz").unlink()
    rng = np.random.default_rng(1)
    voxels = np.stack([rng.integers(0, n, 2 * N_VERTICES) for n in grid], axis=1)
    write_transforms(surface_subject.root, dict(zip(("lh", "rh"), np.split(voxels.astype(float), 2))))
    dataset = load_nsd_surface(surface_subject.root)
    volume = nib.load(surface_subject.root / "nsddata/ppdata/subj01/func1pt8mm/roi/floc-faces.nii.gz").get_fdata()
    np.testing.assert_array_equal(dataset.rois["floc-faces"].volume, volume[tuple(voxels.T)].astype(int))
    assert dataset.rois["floc-faces"].labels[2] == "FFA-1"  # NSD's known names (no ctab for floc-faces)


def test_transforms_of_another_subjects_grid_are_refused(surface_subject):
    for hemi in ("lh", "rh"):
        (surface_subject.root / LABELS / f"{hemi}.floc-faces.mgz").unlink()
    grid = surface_subject_grid(surface_subject)
    outside = np.tile(np.array(grid, float) + 5, (N_VERTICES, 1))
    write_transforms(surface_subject.root, {"lh": outside, "rh": outside})
    with pytest.raises(MineInputError, match="another subject or grid"):
        load_nsd_surface(surface_subject.root)


def surface_subject_grid(surface_subject) -> tuple[int, int, int]:
    path = surface_subject.root / "nsddata/ppdata/subj01/func1pt8mm/roi/nsdgeneral.nii.gz"
    return tuple(nib.load(path).shape[:3])


# ---------------------------------------------------------------------------------------------------------
# Every MINE step on vertices, through the CLI and the results model


@pytest.fixture(scope="module")
def surface_results(tmp_path_factory):
    """features (--space fsaverage) → fit → profile on an fsaverage3 subject of 80 images, 16 shared."""
    from conftest import write_nsd_subject

    from napari_mine import cli

    root = tmp_path_factory.mktemp("surface_e2e")
    subject = write_nsd_subject(root / "nsd", n_sessions=3, n_design_sessions=3, trials_per_session=60,
                                n_subject_images=80, n_stimuli=120, n_shared=16, image_size=32)
    write_surface_subject(subject)
    out = root / "results"
    assert cli.main(["features", str(subject.root), "--out", str(out), "--space", "fsaverage"]) == 0
    assert cli.main(["fit", str(out)]) == 0
    assert cli.main(["profile", str(out), "--roi", "floc-faces"]) == 0
    return subject, out


def test_the_cli_runs_features_fit_and_profiles_on_vertices(surface_results):
    from napari_mine.results import Results

    _, out = surface_results
    results = Results.open(out)
    space = results.space
    assert space.kind == "surface" and space.layout.mesh == "fsaverage3"
    assert results.n_targets == space.n_targets == results.dataset().n_voxels
    nc = results.accuracy["noise_ceiling"]
    assert nc.shape == (space.n_targets,) and np.isfinite(nc).all() and (nc > 0).any()  # ncsnr + repeats
    clusters = results.saved_clusters()
    assert "FFA-1" in clusters and (out / "clusters" / "FFA-1.mgz").is_file()
    ffa = space.roi_values("floc-faces") == space.label_value("floc-faces", "FFA-1")
    assert (clusters["FFA-1"][ffa] > 0).all() and (clusters["FFA-1"][~ffa] == 0).all()
    assert results.group("profiles")["scores"].shape[0] == space.n_targets


def test_attribution_and_descriptions_of_a_vertex(surface_results, capsys):
    from napari_mine import cli
    from napari_mine.results import Results

    _, out = surface_results
    results = Results.open(out)
    target = int(np.flatnonzero(results.space.roi_values("floc-faces") > 0)[0])
    hemi, vertex = results.space.hemisphere_of(target)
    assert results.space.target_at_vertex(hemi, vertex) == target
    attribution = results.image_map(target, 0)
    assert attribution.predicted == pytest.approx(float(results.predict([target], [0])[0, 0]), rel=1e-4, abs=1e-5)
    assert np.isfinite(attribution.grid_map).all() and results.whole_brain_map(0).shape[-1] == results.n_targets
    assert cli.main(["describe", str(out), "--image", "0", "--voxel", str(target)]) == 0
    assert capsys.readouterr().out.startswith(f"image 0, voxel {target}: ")


# ---------------------------------------------------------------------------------------------------------
# A generic study on the surface


@pytest.fixture
def surface_study(tmp_path):
    """images/ (3 files), 8 trials with a split, fsaverage3 responses as .npy and as lh/rh MGH, a label folder."""
    from PIL import Image

    rng = np.random.default_rng(2)
    folder = tmp_path / "surface_study"
    (folder / "images").mkdir(parents=True)
    for name in ("cat.png", "dog.png", "tree.png"):
        Image.fromarray(rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)).save(folder / "images" / name)
    names = ["dog.png", "cat.png", "tree.png", "dog.png", "cat.png", "tree.png", "dog.png", "cat.png"]
    (folder / "trials.csv").write_text("image,split\n" + "".join(
        f"{n},{'test' if n == 'tree.png' else 'train'}\n" for n in names))
    values = rng.normal(size=(8, 2 * N_VERTICES)).astype(np.float32)
    values[:, [5, N_VERTICES + 7]] = 0.0  # medial wall: no data
    faces = rng.integers(0, 3, 2 * N_VERTICES).astype(np.int32)
    for hemi, part, label in zip(("lh", "rh"), np.split(values, 2, axis=1), np.split(faces, 2)):
        write_mgh(folder / "mgh" / f"{hemi}.responses.mgh", part.T)
        write_mgh(folder / "rois" / f"{hemi}.faces.mgz", label, np.int32)
    (folder / "rois" / "faces.ctab").write_text("0 none\n1 FFA\n2 OFA\n")
    return folder, values, faces, names


def test_generic_surface_from_npy_and_from_mgh_and_back_from_its_record(surface_study):
    from napari_mine.data import load_generic_surface

    folder, values, faces, names = surface_study
    np.save(folder / "responses.npy", values)
    with pytest.warns(UserWarning, match="lh 1 of 642, rh 1 of 642"):
        dataset = load_generic_surface(folder)
    kept = np.ones(2 * N_VERTICES, bool)
    kept[[5, N_VERTICES + 7]] = False
    assert dataset.surface.mesh == "fsaverage3" and np.array_equal(dataset.mask, kept)
    np.testing.assert_array_equal(dataset.responses, values[:, kept])
    assert [dataset.images.names[i] for i in dataset.trial_images] == names
    assert [dataset.images.names[i] for i in dataset.test_images] == ["tree.png"]
    assert dataset.rois["faces"].labels == {1: "FFA", 2: "OFA"} and np.array_equal(dataset.rois["faces"].volume, faces)
    with pytest.warns(UserWarning):
        from_mgh = load_generic_surface(folder, responses=[folder / "mgh" / "lh.responses.mgh",
                                                           folder / "mgh" / "rh.responses.mgh"])
        again = dataset_from_source(from_mgh.source)
    np.testing.assert_array_equal(from_mgh.responses, dataset.responses)
    np.testing.assert_array_equal(again.responses, dataset.responses)
    assert again.surface == dataset.surface


def test_generic_surface_bad_input(surface_study, tmp_path):
    from napari_mine.data import load_generic_surface

    folder, values, _, _ = surface_study
    write_mgh(tmp_path / "rh.responses.mgh", np.zeros((2562, 8)))
    with pytest.raises(MineInputError, match="different resolutions"):
        load_generic_surface(folder, responses=[folder / "mgh" / "lh.responses.mgh", tmp_path / "rh.responses.mgh"])
    np.save(tmp_path / "odd.npy", np.zeros((8, 1400), np.float32))
    with pytest.raises(MineInputError, match="700 vertices per hemisphere, which fits no fsaverage mesh"):
        load_generic_surface(folder, responses=tmp_path / "odd.npy")
    np.save(folder / "responses.npy", values)
    with pytest.raises(MineInputError, match="not the 10,242 of fsaverage5; give mesh='fsaverage3'"):
        load_generic_surface(folder, mesh="fsaverage5")
    write_mgh(folder / "rois" / "lh.faces.mgz", np.zeros(2562), np.int32)
    with pytest.raises(MineInputError, match="lh.faces.mgz has 2,562 vertices but the responses have 642"):
        load_generic_surface(folder)
