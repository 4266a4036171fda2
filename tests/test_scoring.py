"""Ground-truth scores of the interpretation steps, on a tiny world through the real pipeline."""

import dataclasses

import numpy as np
import pytest

from napari_mine.attribution import METHODS
from napari_mine.errors import MineInputError
from napari_mine.synthetic import scenes as S
from napari_mine.synthetic import scoring

SEED = 3
GRID = 8  # mine-small's patch grid (64 px input, 8 px patches)
DIM = 16


@pytest.fixture(scope="module")
def world(tmp_path_factory, fit_synthetic_world):
    import torch

    from napari_mine.synthetic.write_nsd import load_truth

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("scoring")
    dataset, backbone, store, _ = fit_synthetic_world(root, n_images=240)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NAPARI_MINE_CACHE", str(root / "cache"))
        yield {"dataset": dataset, "backbone": backbone, "store": store, "truth": load_truth(root / "world")}
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def scores(world):
    return scoring.score_interpretation(world["store"].results(), world["dataset"], world["truth"], world["backbone"],
                                        seed=SEED, n_voxels=12, n_images_per_voxel=2, n_faithfulness_pairs=1)


def test_scores_have_the_summary_structure_and_valid_ranges(scores, world):
    assert set(scores) == {"attribution", "description", "profile", "clusters"}
    attribution, description, profile = scores["attribution"], scores["description"], scores["profile"]
    assert set(attribution) == {"pointing_game", "n_pairs", "faithfulness", "faithfulness_pairs"}
    assert attribution["n_pairs"] == description["n_pairs"] and 2 <= attribution["n_pairs"] <= 24
    assert set(attribution["faithfulness"]) == set(METHODS)
    pairs = attribution["faithfulness_pairs"]
    for method, aucs in attribution["faithfulness"].items():
        assert set(aucs) == {"deletion_auc", "insertion_auc", "deletion_auc_ci", "insertion_auc_ci"}
        for key in ("deletion_auc", "insertion_auc"):
            assert 0.0 <= aucs[key] <= 1.0
            low, high = aucs[f"{key}_ci"]
            assert low <= aucs[key] <= high  # one pair here: the CI is that pair's value
            assert np.mean(pairs[method][key]) == pytest.approx(aucs[key])
    assert len(pairs["row"]) == len(pairs["voxel"]) == len(pairs["spatial_fraction"])
    assert all(0.0 <= fraction <= 1.0 for fraction in pairs["spatial_fraction"])
    for accuracy in (attribution["pointing_game"], description["top1_accuracy"], profile["top1_accuracy"],
                     profile["baseline_top1_accuracy"]):
        assert 0.0 <= accuracy <= 1.0
    scored = scoring.scored_voxels(world["store"].results(), world["dataset"], world["truth"])
    assert profile["n_voxels"] == len(scored)
    rois = set(world["truth"].brain.tuning.roi[scored])
    assert set(profile["roi_category"]) == set(profile["roi_category_correct"]) == rois
    assert set(profile["roi_category"].values()) <= set(S.CATEGORIES) | {""}
    assert all(isinstance(correct, bool) for correct in profile["roi_category_correct"].values())
    ari = scores["clusters"]["ari"]
    assert set(ari) <= rois and all(-1.0 <= value <= 1.0 for value in ari.values())
    if ari:
        assert scores["clusters"]["mean_ari"] == pytest.approx(np.mean(list(ari.values())))
    else:
        assert scores["clusters"]["mean_ari"] is None


def test_scored_voxels_are_reliable_category_roi_voxels(world):
    tuning = world["truth"].brain.tuning
    voxels = scoring.scored_voxels(world["store"].results(), world["dataset"], world["truth"])
    normalized_r = world["store"].results().accuracy["normalized_r"][voxels]
    assert np.all(tuning.kind[voxels] == "category") and np.all(normalized_r >= scoring.MIN_NORMALIZED_R)
    assert set(tuning.roi[voxels]) <= set(scoring.CATEGORY_ROIS)


def test_a_dataset_whose_voxels_are_not_the_truths_is_refused(world):
    brain = world["truth"].brain
    moved = brain.mask.copy()
    moved.flat[np.flatnonzero(brain.mask)[0]] = False
    moved.flat[np.flatnonzero(brain.cortex & ~brain.mask)[0]] = True
    truth = dataclasses.replace(world["truth"], brain=dataclasses.replace(brain, mask=moved))
    with pytest.raises(MineInputError, match="voxel mask is not the ground truth's"):
        scoring.score_interpretation(world["store"].results(), world["dataset"], truth, world["backbone"])


def _spike_tokens(cells, dim=DIM):
    """Token contributions whose attribution on weight e_0 is 1 at the given (row, col) patches, 0 elsewhere,
    with a larger value on the class token (which the pointing game must ignore)."""
    tokens = np.zeros((len(cells), 1 + GRID * GRID, dim), np.float32)
    tokens[:, 0, 0] = 5.0
    for pair, (row, col) in enumerate(cells):
        tokens[pair, 1 + row * GRID + col, 0] = 1.0
    return tokens


def _pointing(cells, mask):
    weights = np.zeros((DIM, len(cells)), np.float32)
    weights[0] = 1.0
    return scoring.pointing_game_hits(_spike_tokens(cells), weights, [mask] * len(cells)).tolist()


def test_pointing_game_hits_the_rendered_object_and_not_elsewhere():
    # A face centred in cell (row 2, column 5) of the 8 × 8 grid, a quarter of the 128 px image wide.
    scene = S.Scene((S.SceneObject("face", "red", 5.5 / GRID, 2.5 / GRID, 0.25),), "plain", 0)
    mask = S.object_masks(scene, 128)[0]
    # On the face; the transposed cell (rows and columns swapped); same row, far left.
    assert _pointing([(2, 5), (5, 2), (2, 2)], mask) == [True, False, False]


def test_pointing_game_tolerance_is_half_a_cell_from_the_cell_centre():
    # 16 px cells: the centre of cell (2, 4) is at pixel (40, 72), that of cell (1, 5) at (24, 88).
    reaching = np.zeros((128, 128), bool)
    reaching[31:64, 79:96] = True  # nearest pixel centres 7.5 px from both cells' centres
    short = np.zeros((128, 128), bool)
    short[32:64, 80:96] = True  # 8.5 px away
    assert _pointing([(2, 4), (1, 5), (2, 5)], reaching) == [True, True, True]
    assert _pointing([(2, 4), (1, 5), (2, 5)], short) == [False, False, True]
    assert _pointing([(2, 5)], np.zeros((128, 128), bool)) == [False]


def test_pointing_game_refuses_mismatched_inputs():
    with pytest.raises(MineInputError, match="one voxel and one mask per image"):
        scoring.pointing_game_hits(_spike_tokens([(0, 0)]), np.zeros((DIM, 2)), [np.ones((128, 128), bool)])


def test_the_driving_object_is_the_one_the_voxel_prefers(world):
    brain = world["truth"].brain
    tuning = brain.tuning
    face_voxel = np.flatnonzero((tuning.roi == "FFA-1") & (tuning.kind == "category"))[0]
    place_voxel = np.flatnonzero((tuning.roi == "PPA") & (tuning.kind == "category"))[0]
    scene = S.Scene((S.SceneObject("house", "green", 0.3, 0.5, 0.3), S.SceneObject("face", "red", 0.7, 0.5, 0.3)),
                    "plain", 1)
    drivers = scoring.driving_objects(brain, [scene, scene], np.array([face_voxel, place_voxel]))
    assert drivers.tolist() == [1, 0]


def test_best_category_is_the_arg_max_over_categories_and_ties_give_no_answer():
    from napari_mine.vocabulary import ConceptSpace, synthetic_vocabulary

    vocabulary = synthetic_vocabulary()
    space = ConceptSpace.from_embeddings(vocabulary, np.random.default_rng(SEED).normal(size=(len(vocabulary), DIM)))
    scores = np.zeros((3, len(vocabulary)))
    scores[0, vocabulary.concepts.index("house")] = 0.4
    scores[0, vocabulary.concepts.index("red")] = 0.9  # an attribute, not a category
    scores[1] = -1.0
    scores[1, vocabulary.concepts.index("word")] = -0.2  # a projection baseline may be negative everywhere
    assert scoring.best_categories(scores, space).tolist() == ["house", "word", ""]
