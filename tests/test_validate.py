"""Causal validation on a tiny synthetic world, through the real loaders, pipeline and procedural generator.

The tiny world (160 training images) cannot predict category voxels as well as the demo, so the tests check
the mechanics — pairs, shapes, keys, CIs, the true brain read in the right voxel order, signs counted
correctly — and leave the figures of merit to the demo-sized run.
"""

import json
import shutil

import numpy as np
import pytest

from napari_mine import report_validation as R
from napari_mine import validate as V
from napari_mine.errors import MineInputError
from napari_mine.generate import Generator, ProceduralGenerator, as_edits, images_of
from napari_mine.store import ResultsStore, write_arrays
from napari_mine.synthetic import scenes as S

SEED = 5
N_BOOT = 200


@pytest.fixture(scope="module")
def world(tmp_path_factory, fit_synthetic_world):
    import torch

    from napari_mine.synthetic.truth import load_truth
    from napari_mine.vocabulary import concept_space, synthetic_vocabulary

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("validate")
    dataset, backbone, store, _ = fit_synthetic_world(root, n_images=200)
    store.update_summary("encoder", {"kept": True})
    yield {"root": root, "dataset": dataset, "backbone": backbone, "store": store, "results": store.results(),
           "generator": ProceduralGenerator.from_world(root / "world"), "truth": load_truth(root / "world"),
           "space": concept_space(synthetic_vocabulary(), backbone, cache_dir=root / "cache")}
    torch.set_num_threads(threads)


def study_of(world):
    return V.open_workbench(world["results"], world["generator"], world["truth"], backbone=world["backbone"])


def category_voxel(world, category: str) -> int:
    """The best-predicted voxel of the category's ROIs whose true preference is ``category``."""
    tuning = world["truth"].brain.tuning
    nc_r = world["results"].accuracy["normalized_r"]
    wanted = (tuning.category == S.CATEGORIES.index(category)) & (tuning.kind == "category")
    return int(np.flatnonzero(wanted)[np.nanargmax(nc_r[wanted])])


@pytest.fixture(scope="module")
def pairs(world):
    return V.sample_pairs(world["results"], n_voxels=8, images_per_voxel=1, top_k=5, min_nc_r=-1.0, seed=SEED)


# ----------------------------------------------------------------------------------------------- sampling and truth


def test_pairs_come_from_each_category_roi_and_the_voxels_top_images(world, pairs):
    results = world["results"]
    assert pairs["voxel"].shape == pairs["row"].shape == pairs["roi"].shape == (8,)
    files = {results.space.roi_file_of(np.array([name], dtype=object))[0] for name in pairs["roi"]}
    assert files == set(V.CATEGORY_ROIS)
    weights, bias = results.weights()
    predicted = results.features() @ weights + bias
    for voxel, row in zip(pairs["voxel"], pairs["row"]):
        assert row in np.argsort(-predicted[:, voxel])[:5]
    again = V.sample_pairs(results, n_voxels=8, images_per_voxel=1, top_k=5, min_nc_r=-1.0, seed=SEED)
    assert np.array_equal(again["row"], pairs["row"]) and np.array_equal(again["voxel"], pairs["voxel"])


def test_store_voxels_and_truth_voxels_are_in_the_same_order(world):
    index = V.truth_voxels(world["results"], world["truth"])
    assert np.array_equal(index, np.arange(world["dataset"].n_voxels))
    ids, measured, _ = world["dataset"].image_responses()
    true = world["truth"].true_response([world["truth"].scenes[i] for i in world["dataset"].images.ids[ids]])
    face = category_voxel(world, "face")
    assert np.corrcoef(true[:, face], measured[:, face])[0, 1] > 0.5


def test_world_validation_gives_the_worlds_generator_and_truth_and_refuses_other_results(world, tmp_path):
    generator, truth = V.world_validation(world["results"])
    assert generator.scenes == world["truth"].scenes == truth.scenes
    assert generator.image_size == world["generator"].image_size
    empty = ResultsStore.create(tmp_path / "empty", model=world["backbone"].record, dataset={})
    with pytest.raises(MineInputError, match="not computed from the synthetic world"):
        V.world_validation(empty.results())


def test_the_true_brain_responds_to_the_scenes_the_originals_carry(world, pairs):
    bench = study_of(world)
    originals = bench.originals(pairs["row"])
    scenes = [world["truth"].scenes[i] for i in world["results"].image_ids[pairs["row"]]]
    assert [edit.scene for edit in originals] == scenes
    assert np.array_equal(images_of(originals), world["generator"].render(scenes))
    expected = world["truth"].true_response(scenes)[np.arange(len(scenes)), pairs["voxel"]]
    np.testing.assert_allclose(bench.true(originals, pairs["voxel"]), expected)
    with pytest.raises(MineInputError, match="responds to scenes"):
        bench.true(as_edits(images_of(originals)), pairs["voxel"])


def test_the_prediction_of_a_rendered_original_is_the_stored_prediction(world, pairs):
    bench = study_of(world)
    np.testing.assert_allclose(bench.predict(images_of(bench.originals(pairs["row"])), pairs["voxel"]),
                               bench.predicted(pairs["row"], pairs["voxel"]), rtol=1e-3, atol=1e-4)


# ----------------------------------------------------------------------------------------------- experiments


def test_sufficiency_compares_mine_with_both_controls_on_the_true_brain(world, pairs):
    result = V.sufficiency(study_of(world), space=world["space"], pairs=pairs, n_boot=N_BOOT, seed=SEED)
    n = len(result["row"])
    assert n + result["n_skipped"] == len(pairs["row"]) and n >= 6
    assert set(result["conditions"]) == set(V.SUFFICIENCY_CONDITIONS)
    for name, condition in result["conditions"].items():
        assert condition["images"].shape == (n, 128, 128, 3) and condition["predicted"].shape == (n,)
        scenes = world["generator"].scenes_from_descriptions(result["descriptions"][name], SEED)
        true = world["truth"].true_response(scenes)[np.arange(n), result["voxel"]]
        originals = [world["truth"].scenes[i] for i in world["dataset"].images.ids[result["row"]]]
        shift = result["true_original"] - world["truth"].true_response(originals)[np.arange(n), result["voxel"]]
        np.testing.assert_allclose(condition["true"], true + shift, rtol=1e-5, atol=1e-5)
    for kind in ("predicted", "true"):
        for name, entry in result["summary"][kind].items():
            assert entry["correlation_ci"][0] <= entry["correlation"] <= entry["correlation_ci"][1]
            assert entry["mae_ci"][0] <= entry["mae"] <= entry["mae_ci"][1]
            if name != "mine":
                assert 0.0 < entry["p_mae"] <= 1.0 and 0.0 < entry["p_correlation"] <= 1.0


def test_removing_the_driving_face_lowers_a_face_voxels_true_response(world):
    """Hand-picked: a face voxel, an image whose face drives it most, the face's own pixels as the mask."""
    from napari_mine.synthetic.brain import object_drives

    truth, voxel = world["truth"], category_voxel(world, "face")
    ids = world["results"].image_ids
    for row, stimulus in enumerate(ids):
        scene = truth.scenes[stimulus]
        drives = object_drives(truth.brain, [scene])[0, :len(scene.objects), voxel]
        if scene.objects[int(np.argmax(drives))].category == "face" and len(scene.objects) > 1:
            break
    face = int(np.argmax(drives))
    mask = S.object_masks(scene)[face].astype(np.float32)
    result = V.removal(study_of(world), pairs={"voxel": [voxel], "row": [row]}, masks=mask[None], n_boot=N_BOOT)
    expected = (truth.true_response([S.remove_object(scene, face)]) - truth.true_response([scene]))[0, voxel]
    assert expected < 0
    np.testing.assert_allclose(result["conditions"]["edited"]["true"], [expected], rtol=1e-5)
    assert result["removed"] == ["face"] and result["removed_driving_object"] == 1.0
    assert result["summary"]["true"]["value"] == 1.0 and result["summary"]["true"]["n"] == 1


def test_removal_with_attribution_masks_counts_signs_and_skips(world, pairs):
    result = V.removal(study_of(world), pairs=pairs, n_boot=N_BOOT, seed=SEED)
    n = len(result["row"])
    assert n + result["n_skipped"] == len(pairs["row"])
    assert result["masks"].shape == (n, 128, 128) and result["attribution"].shape == (n, 8, 8)
    for kind in ("predicted", "true"):
        deltas, summary = result["conditions"]["edited"][kind], result["summary"][kind]
        assert summary["value"] == pytest.approx(np.mean(deltas < 0))
        assert summary["ci"][0] <= summary["value"] <= summary["ci"][1]
        assert summary["mean_delta"] == pytest.approx(deltas.mean(), rel=1e-5)


@pytest.mark.parametrize("source", V.CONCEPT_SOURCES)
def test_insertion_puts_the_feature_into_the_voxels_low_response_images(world, pairs, source):
    bench = study_of(world)
    result = V.insertion(bench, space=world["space"], concept_source=source, pairs=pairs,
                         n_boot=N_BOOT, seed=SEED)
    n = len(result["row"])
    for voxel, target in zip(result["voxel"], result["target_row"]):
        predicted = bench.features @ bench.weights[:, voxel] + bench.bias[voxel]
        assert predicted[target] <= np.quantile(predicted, 0.2) + 1e-6
    ids, truth = world["dataset"].images.ids, world["truth"]
    targets = [truth.scenes[ids[row]] for row in result["target_row"]]
    edited = result["conditions"]["edited"]["scenes"]
    for target, scene, concept in zip(targets, edited, result["concepts"]):
        assert scene.objects[:-1] == target.objects and scene.objects[-1].category in concept.split()
    expected = truth.true_response(edited) - truth.true_response(targets)
    np.testing.assert_allclose(result["conditions"]["edited"]["true"], expected[np.arange(n), result["voxel"]],
                               rtol=1e-5, atol=1e-6)
    deltas = result["conditions"]["edited"]["true"]
    assert deltas.shape == (n,) and result["summary"]["true"]["value"] == pytest.approx(np.mean(deltas > 0))


# ----------------------------------------------------------------------------------------------- statistics


def test_bootstraps_draw_whole_voxels_and_the_within_voxel_correlation_ignores_voxel_levels():
    voxels = np.repeat([10, 20, 30, 40], 2)
    unbalanced = V.stats.bootstrap(lambda i: np.ptp(np.bincount(i, minlength=8).reshape(4, 2), axis=1).max(), voxels,
                              50, SEED)
    assert np.all(unbalanced == 0), "a drawn voxel brings both its pairs"
    rng = np.random.default_rng(SEED)
    original = rng.normal(size=8) + np.repeat([0.0, 3.0, 6.0, 9.0], 2)
    mine = original + np.repeat([9.0, 3.0, -3.0, -9.0], 2)  # each voxel's images kept apart, levels reversed
    summary = V.stats.sufficiency_summary(original, {"mine": mine, "random": original + 20}, voxels, N_BOOT, SEED)
    assert summary["mine"]["correlation_within_voxel"] == pytest.approx(1.0)
    assert summary["mine"]["correlation"] < 0.5
    assert summary["random"]["p_mae"] == pytest.approx(1 / 16), "signed-rank test on 4 voxel means, not 8 pairs"


def test_the_low_attribution_control_names_where_its_region_lies():
    from napari_mine.vocabulary import ConceptSpace, synthetic_vocabulary

    vocabulary = synthetic_vocabulary()
    space = ConceptSpace.from_embeddings(vocabulary, np.random.default_rng(SEED).normal(size=(len(vocabulary), 32)))
    weight = space.embeddings[vocabulary.concepts.index("face")]
    tokens = np.zeros((17, 32), np.float32)
    tokens[[1, 5, 9, 13]] = weight  # left column: high attribution
    tokens[[4, 8, 12, 16]] = -weight  # right column: the lowest
    assert V.low_attribution_text(tokens, weight, space, n_patches=4).endswith("on the right")


# ----------------------------------------------------------------------------------------------- the whole run


def test_run_validation_writes_every_key_and_the_strips(world):
    store = world["store"]
    summary = V.run_validation(world["results"], world["generator"], world["truth"], backbone=world["backbone"],
                               space=world["space"], n_voxels=4, images_per_voxel=1, top_k=5,
                               min_nc_r=-1.0, n_boot=N_BOOT, n_examples=2, seed=SEED)
    written = json.loads((store.root / "summary.json").read_text())
    assert written["validation"] == summary and written["encoder"] == {"kept": True}
    assert summary["complete"] is True
    for key in ("removal_sign_accuracy", "insertion_sign_accuracy", "profile_vs_image_insertion_delta_ratio"):
        assert {"predicted", "true"} <= set(summary[key])
    assert set(summary["sufficiency"]["true"]) == set(V.SUFFICIENCY_CONDITIONS)
    for relative in summary["figures"].values():
        assert (store.root / relative).stat().st_size > 0
    fragment = R.validation_html(summary, store.root)
    assert fragment.count("<table>") == 3 and "data:image/png;base64" in fragment


# ----------------------------------------------------------------------------------------------- bad input


class GreyGenerator(Generator):
    """A pixel generator: descriptions through the world's renderer, removal paints the mask grey, and an
    insertion that fails (or edits that come back at another size) to test refusals."""

    def __init__(self, world_root, edit_size=None, fail_insert=False):
        self.world = ProceduralGenerator.from_world(world_root)
        self.image_size, self.edit_size, self.fail_insert = self.world.image_size, edit_size, fail_insert

    def generate(self, descriptions, seed=0, **_):
        return as_edits(images_of(self.world.generate(descriptions, seed)))

    def remove(self, edits, masks, seed=0, **_):
        edited = np.where(np.asarray(masks)[..., None] > 0, 128, images_of(edits)).astype(np.uint8)
        return as_edits(edited if self.edit_size is None else edited[:, :self.edit_size, :self.edit_size])

    def insert(self, edits, masks, concepts, seed=0, **_):
        if self.fail_insert:
            raise RuntimeError("the generator broke")
        return self.remove(edits, masks, seed)


def test_a_store_without_an_encoder_is_refused(world, tmp_path):
    empty = ResultsStore.create(tmp_path / "empty", model=world["backbone"].record, dataset={})
    with pytest.raises(MineInputError, match="no fitted encoder"):
        V.open_workbench(empty.results(), world["generator"], backbone=world["backbone"])
    with pytest.raises(MineInputError, match="no fitted encoder"):
        V.sample_pairs(empty.results())


def test_a_voxel_without_top_images_is_named(world, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(world["store"].root, copy)
    store = ResultsStore.open(copy)
    weights, bias = store.results().weights()
    arrays = {"effective_weights": np.array(weights), "effective_bias": np.array(bias),
              "accuracy/normalized_r": np.array(store.results().accuracy["normalized_r"])}
    arrays["effective_bias"][3] = np.nan
    with store.write_step("encoder") as group:
        write_arrays(group, arrays)
    results = store.results()
    with pytest.raises(MineInputError, match="Voxel 3 has no top images"):
        V.sample_pairs(results, voxels=[3])
    with pytest.raises(MineInputError, match="top_k"):
        V.sample_pairs(results, voxels=[4], top_k=0)
    above_every_voxel = float(np.nanmax(arrays["accuracy/normalized_r"])) + 1.0
    with pytest.raises(MineInputError, match="No category voxel reaches a noise-ceiling-normalised r"):
        V.sample_pairs(results, min_nc_r=above_every_voxel)


def test_pixel_generators_need_images_and_must_keep_the_size(world, pairs):
    results, backbone = world["results"], world["backbone"]
    with pytest.raises(MineInputError, match="pass images="):
        V.open_workbench(results, GreyGenerator(world["root"] / "world"), backbone=backbone)
    with pytest.raises(MineInputError, match="truth"):
        V.open_workbench(results, GreyGenerator(world["root"] / "world"), world["truth"], world["dataset"].images,
                     backbone=backbone)
    shrinking = GreyGenerator(world["root"] / "world", edit_size=100)
    with pytest.raises(MineInputError, match="must keep the size"):
        V.removal(V.open_workbench(results, shrinking, images=world["dataset"].images, backbone=backbone), pairs=pairs,
                  n_boot=N_BOOT)
    result = V.removal(V.open_workbench(results, GreyGenerator(world["root"] / "world"), images=world["dataset"].images,
                                    backbone=backbone), pairs=pairs, n_boot=N_BOOT)
    assert set(result["summary"]) == {"predicted"} and result["n_skipped"] == 0


def test_a_procedural_generator_of_another_size_renders_the_originals_at_its_size(world, pairs):
    small = ProceduralGenerator(world["generator"].scenes, size=96)
    result = V.removal(V.open_workbench(world["results"], small, world["truth"], backbone=world["backbone"]), pairs=pairs,
                       n_boot=N_BOOT)
    assert result["original"].shape[1:] == (96, 96, 3) and result["masks"].shape[1:] == (96, 96)


def test_a_failure_mid_run_keeps_the_finished_experiments(world):
    store = world["store"]
    broken = GreyGenerator(world["root"] / "world", fail_insert=True)
    with pytest.raises(RuntimeError, match="broke"):
        V.run_validation(world["results"], broken, backbone=world["backbone"], space=world["space"],
                         images=world["dataset"].images, n_voxels=4, images_per_voxel=1, top_k=5, min_nc_r=-1.0,
                         n_boot=N_BOOT, seed=SEED)
    written = json.loads((store.root / "summary.json").read_text())
    assert written["encoder"] == {"kept": True}
    assert written["validation"]["complete"] is False
    assert {"sufficiency", "removal_sign_accuracy"} <= set(written["validation"])
    assert "insertion_sign_accuracy" not in written["validation"]
