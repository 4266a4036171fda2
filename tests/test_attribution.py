"""Attribution: exact maps sum to the encoder's prediction, land in the right cell, match the cached queries;
baselines and the faithfulness score run on a small random-weight CLIP; bad indices are refused."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

from napari_mine import attribution as A  # noqa: E402
from napari_mine.decompose import decompose_images  # noqa: E402
from napari_mine.encoding import fit_encoder  # noqa: E402
from napari_mine.errors import MineInputError  # noqa: E402
from napari_mine.store import ResultsStore, write_arrays  # noqa: E402

GRID = 4  # tiny model: 32 px images, 8 px patches


@pytest.fixture(scope="module")
def model():
    """A random-weight CLIP small enough for many forward passes on 2 CPU cores."""
    torch.manual_seed(0)
    vision = {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16, "mlp_ratio": 2.0}
    text = {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}
    return open_clip.CLIP(embed_dim=16, vision_cfg=vision, text_cfg=text).eval()


@pytest.fixture(scope="module")
def images():
    return torch.from_numpy(np.random.default_rng(1).normal(size=(24, 3, 32, 32)).astype(np.float32))


@pytest.fixture(scope="module")
def voxel_weights():
    rng = np.random.default_rng(2)
    return rng.normal(size=(16, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)


def grey_pixels():
    """Mid-grey in the model's input space (open_clip's default normalisation), (3, 1, 1)."""
    mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    return torch.tensor([(0.5 - m) / s for m, s in zip(mean, std)]).view(3, 1, 1)


def response(model, pixels, weights, bias=0.0):
    """ŷ = normalize(encode_image(x)) @ w̃ + b̃, straight from open_clip."""
    with torch.no_grad():
        features = model.encode_image(pixels, normalize=True).double().numpy()
    return features @ weights + bias


# ---- exact maps -------------------------------------------------------------------------------------------


def test_token_scores_rest_and_bias_sum_to_the_encoder_prediction(model, images):
    parts = decompose_images(model, images).normalized()
    responses = np.random.default_rng(3).normal(size=(len(images), 5)).astype(np.float32)
    encoder = fit_encoder(parts.embedding, responses, cv=3, backend="numpy")
    weights, bias = encoder.effective_weights()
    scores = A.patch_attribution(parts.tokens, weights)
    assert scores.shape == (len(images), 1 + GRID**2, 5)
    total = scores.sum(axis=1) + parts.rest @ weights + bias
    np.testing.assert_allclose(total, encoder.predict(parts.embedding), rtol=1e-4, atol=1e-4)
    one_voxel = A.patch_attribution(parts.tokens, weights[:, 2])
    np.testing.assert_allclose(one_voxel, scores[..., 2], rtol=1e-5, atol=1e-6)


def test_a_patch_lands_in_its_own_grid_cell():
    side, dim = 3, 4
    weights = np.array([1.0, 0.0, 0.0, 0.0], dtype=np.float32)
    for row in range(side):
        for col in range(side):
            tokens = np.zeros((1 + side * side, dim), dtype=np.float32)
            tokens[1 + row * side + col, 0] = 5.0  # open_clip flattens the grid row by row
            tokens[0, 0] = 7.0  # the class token is not a patch
            grid = A.to_patch_grid(A.patch_attribution(tokens, weights))
            expected = np.zeros((side, side))
            expected[row, col] = 5.0
            np.testing.assert_array_equal(grid, expected)


def test_patch_grid_of_many_voxels_keeps_the_voxel_axis():
    scores = np.arange(10 * 2, dtype=np.float32).reshape(10, 2)  # (T, V)
    grid = A.to_patch_grid(scores, axis=0)
    assert grid.shape == (3, 3, 2)
    np.testing.assert_array_equal(grid[1, 2], scores[1 + 1 * 3 + 2])
    with pytest.raises(MineInputError, match="square patch grid"):
        A.to_patch_grid(np.zeros(11))


def test_upsample_nearest_paints_blocks_and_bilinear_matches_torch():
    grid_map = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    np.testing.assert_array_equal(A.upsample(grid_map, 4, "nearest"), np.kron(grid_map, np.ones((2, 2))))
    maps = np.random.default_rng(4).normal(size=(2, 5, 5)).astype(np.float32)
    expected = torch.nn.functional.interpolate(torch.from_numpy(maps)[:, None], size=(20, 15), mode="bilinear",
                                               align_corners=False)[:, 0].numpy()
    np.testing.assert_allclose(A.upsample(maps, (20, 15)), expected, atol=1e-5)
    with pytest.raises(MineInputError, match="unknown upsampling method"):
        A.upsample(grid_map, 4, "cubic")


def test_spatial_fraction_is_the_patch_share_of_all_terms():
    tokens = np.array([[2.0], [1.0], [-3.0], [0.0], [0.0]], dtype=np.float32)  # class token, 2 × 2 patches
    fraction = A.spatial_fraction(tokens, rest=np.array([1.0]), weights=np.array([1.0]), bias=-1.0)
    assert fraction == pytest.approx(4.0 / (4.0 + 2.0 + 1.0 + 1.0))
    rng = np.random.default_rng(5)
    many = A.spatial_fraction(rng.normal(size=(6, 17, 8)), rng.normal(size=(6, 8)), rng.normal(size=(8, 3)),
                              rng.normal(size=3))
    assert many.shape == (6, 3) and np.all((many >= 0) & (many <= 1))


def test_layer_and_head_subsets_sum_to_all_and_all_is_the_cached_map(model, images, voxel_weights):
    weights, _ = voxel_weights
    image = images[:1]
    everything = A.exact_map(model, image, weights)
    cached = decompose_images(model, image).normalized().tokens[0]
    np.testing.assert_allclose(everything, A.to_patch_grid(A.patch_attribution(cached, weights), axis=0),
                               rtol=1e-4, atol=1e-6)
    by_layer = A.exact_map(model, image, weights, layers=[0]) + A.exact_map(model, image, weights, layers=[1])
    np.testing.assert_allclose(by_layer, everything, rtol=1e-4, atol=1e-6)
    by_head = A.exact_map(model, image, weights, heads=[0]) + A.exact_map(model, image, weights, heads=[1])
    np.testing.assert_allclose(by_head, everything, rtol=1e-4, atol=1e-6)
    assert A.exact_map(model, image, weights[:, 0], grid=False).shape == (1 + GRID**2,)
    with pytest.raises(MineInputError, match="choose heads from 0 to 1"):
        A.exact_map(model, image, weights, heads=[2])


# ---- cached queries over a store -------------------------------------------------------------------------


def write_store(root, rng, n_images=11, n_tokens=10, dim=6, n_voxels=4):
    """A results store with random features, tokens (chunked by 3 images) and encoder weights."""
    tokens = rng.normal(size=(n_images, n_tokens, dim)).astype(np.float32)
    rest = rng.normal(size=(n_images, dim)).astype(np.float32)
    arrays = {"tokens": tokens, "rest": rest, "features": tokens.sum(1) + rest,
              "effective_weights": rng.normal(size=(dim, n_voxels)).astype(np.float32),
              "effective_bias": rng.normal(size=n_voxels).astype(np.float32)}
    store = ResultsStore.create(root, model={"id": "test"}, dataset={})
    with store.write_step("features") as group:
        write_arrays(group, {name: arrays[name] for name in ("tokens", "rest", "features")}, chunk_rows=3)
    refit(store, arrays["effective_weights"], arrays["effective_bias"])
    return store, arrays


def refit(store, weights, bias):
    with store.write_step("encoder") as group:
        write_arrays(group, {"effective_weights": weights, "effective_bias": bias})


def test_whole_brain_and_voxel_maps_equal_the_per_pair_maps(tmp_path):
    store, arrays = write_store(tmp_path, np.random.default_rng(6))
    tokens, weights = arrays["tokens"], arrays["effective_weights"]
    for row in (0, 7, 10):
        brain = store.results().whole_brain_map(row)
        assert brain.shape == (3, 3, 4)
        for voxel in range(4):
            np.testing.assert_allclose(brain[..., voxel], A.to_patch_grid(tokens[row] @ weights[:, voxel]),
                                       rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(store.results().whole_brain_map(4, grid=False), tokens[4] @ weights, rtol=1e-5, atol=1e-6)
    for workers in (1, 3):
        maps = store.results().target_maps(2, workers=workers)
        assert maps.shape == (11, 3, 3)
        np.testing.assert_allclose(maps, A.to_patch_grid(tokens @ weights[:, 2]), rtol=1e-5, atol=1e-6)


def test_a_refit_encoder_is_read_again(tmp_path):
    store, arrays = write_store(tmp_path, np.random.default_rng(7))
    first = store.results().whole_brain_map(0)
    refit(store, -arrays["effective_weights"], arrays["effective_bias"])
    np.testing.assert_allclose(store.results().whole_brain_map(0), -first, rtol=1e-6)


def test_top_images_by_predicted_and_measured_response(tmp_path):
    store, arrays = write_store(tmp_path, np.random.default_rng(8))
    predicted = arrays["features"] @ arrays["effective_weights"][:, 1] + arrays["effective_bias"][1]
    rows, values = store.results().top_images(1, k=4)
    np.testing.assert_array_equal(rows, np.argsort(-predicted)[:4])
    np.testing.assert_allclose(values, predicted[rows], rtol=1e-5)
    measured = np.random.default_rng(9).normal(size=(11, 4))
    measured[np.argmax(measured[:, 1]), 1] = np.nan  # an image without a response is left out
    rows, values = store.results().top_images(1, k=20, by="measured", responses=measured)
    assert len(rows) == 10 and np.all(np.diff(values) <= 0) and np.all(np.isfinite(values))
    with pytest.raises(MineInputError, match="needs `responses`"):
        store.results().top_images(1, by="measured")
    with pytest.raises(MineInputError, match="unknown ranking"):
        store.results().top_images(1, by="loudest")


def test_out_of_range_rows_and_voxels_name_the_valid_range(tmp_path):
    store, _ = write_store(tmp_path, np.random.default_rng(10))
    for bad in (11, -1):
        with pytest.raises(MineInputError, match="image row .* out of range; the store has images 0 to 10"):
            store.results().whole_brain_map(bad)
    for query in (store.results().target_maps, store.results().top_images):
        with pytest.raises(MineInputError, match="voxel 4 is out of range; the store has voxels 0 to 3"):
            query(4)


# ---- baselines and faithfulness --------------------------------------------------------------------------


def test_baselines_give_finite_maps_of_the_grid(model, images, voxel_weights):
    weights = voxel_weights[0][:, 0]
    image = images[:1]
    for grid_map in (A.gradient_x_input(model, image, weights), A.integrated_gradients(model, image, weights, 8),
                     A.occlusion(model, image, weights), A.occlusion(model, image, weights, fill="blur")):
        assert grid_map.shape == (GRID, GRID) and np.all(np.isfinite(grid_map))


def test_integrated_gradients_are_complete(model, images, voxel_weights):
    weights = voxel_weights[0][:, 0]
    image = images[1:2]
    grid_map = A.integrated_gradients(model, image, weights, n_steps=48)
    expected = response(model, image, weights) - response(model, torch.zeros_like(image), weights)
    assert grid_map.sum() == pytest.approx(expected[0], rel=0.02, abs=1e-4)


def test_occlusion_is_the_drop_when_a_patch_turns_grey(model, images, voxel_weights):
    weights = voxel_weights[0][:, 0]
    image = images[2:3]
    grid_map = A.occlusion(model, image, weights)
    occluded = image.clone()
    occluded[0, :, 8:16, 16:24] = grey_pixels()  # cell (1, 2)
    drop = response(model, image, weights) - response(model, occluded, weights)
    assert grid_map[1, 2] == pytest.approx(drop[0], rel=1e-4, abs=1e-6)


def test_contrast_map_is_the_exact_map_minus_that_of_a_grey_image(model, images, voxel_weights):
    weights = voxel_weights[0][:, 0]
    maps = A.attribution_maps(model, images[:2], weights, methods=("exact", "exact_contrast"))
    grey_map = A.exact_map(model, grey_pixels().expand(1, 3, 32, 32).contiguous(), weights)
    for index in range(2):
        np.testing.assert_allclose(maps["exact"][index], A.exact_map(model, images[index:index + 1], weights),
                                   rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(maps["exact_contrast"][index], maps["exact"][index] - grey_map, rtol=1e-4,
                                   atol=1e-6)


def test_deletion_and_insertion_curves_run_between_the_image_and_the_fill(model, images, voxel_weights):
    weights, bias = voxel_weights[0][:, 0], float(voxel_weights[1][0])
    image = images[3:4]
    grid_map = np.random.default_rng(11).normal(size=(GRID, GRID))
    fractions, deletion, insertion = A.deletion_insertion_curves(model, image, weights, bias, grid_map, n_steps=5)
    assert len(fractions) == len(deletion) == len(insertion) == 6
    assert fractions[0] == 0 and fractions[-1] == 1 and np.all(np.diff(fractions) > 0)
    full = response(model, image, weights, bias)[0]
    assert deletion[0] == pytest.approx(full, rel=1e-4) and insertion[-1] == pytest.approx(full, rel=1e-4)
    assert deletion[-1] == pytest.approx(insertion[0], rel=1e-4)
    with pytest.raises(MineInputError, match="patch grid"):
        A.deletion_insertion_curves(model, image, weights, bias, np.zeros((3, 3)))


def test_faithfulness_compares_methods_on_one_scale(model, images, voxel_weights):
    weights, bias = voxel_weights[0][:, :2], voxel_weights[1][:2]
    some = images[:2]
    maps = A.attribution_maps(model, some, weights, methods=("exact", "exact_contrast", "gradient_x_input",
                                                              "occlusion"))
    assert {name: values.shape for name, values in maps.items()} == dict.fromkeys(maps, (2, 2, GRID, GRID))
    maps["random"] = np.random.default_rng(12).normal(size=(2, 2, GRID, GRID))
    scores = A.faithfulness(model, some, weights, bias, maps, n_steps=4)
    assert set(scores) == {"exact", "exact_contrast", "gradient_x_input", "occlusion", "random"}
    for score in scores.values():
        assert 0 <= score["deletion_auc"] <= 1 and 0 <= score["insertion_auc"] <= 1
        assert len(score["deletion_curve"]) == len(score["insertion_curve"]) == len(score["fractions"]) == 5
    one_voxel = A.faithfulness(model, some, weights[:, 0], bias[0], {"exact": maps["exact"][:, 0]}, n_steps=4)
    assert 0 <= one_voxel["exact"]["deletion_auc"] <= 1
    with pytest.raises(MineInputError, match="'exact' maps have shape"):
        A.faithfulness(model, some, weights, bias, {"exact": maps["exact"][:1]})


def test_bad_model_inputs_are_refused(model, images, voxel_weights):
    weights = voxel_weights[0][:, 0]
    with pytest.raises(MineInputError, match="one preprocessed image tensor"):
        A.gradient_x_input(model, images[:2], weights)
    with pytest.raises(MineInputError, match="one voxel's effective weights"):
        A.occlusion(model, images[:1], voxel_weights[0])
    with pytest.raises(MineInputError, match="unknown fill"):
        A.occlusion(model, images[:1], weights, fill="noise")
    with pytest.raises(MineInputError, match="unknown attribution methods"):
        A.attribution_maps(model, images[:1], weights, methods=("saliency",))

