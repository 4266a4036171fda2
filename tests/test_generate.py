"""Generators: mask utilities, the synthetic world's procedural backend and the diffusers backend.

The diffusers tests build tiny Stable Diffusion and InstructPix2Pix pipelines with random weights once per
module, save them with ``save_pretrained`` and load them through the path real models take. They check
shapes, seeding, masking, cancellation and the out-of-memory fallback, not image quality.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_mine.attribution import upsample
from napari_mine.errors import Cancelled, MineInputError
from napari_mine.generate import (DiffusionGenerator, Edit, GenerationCancelled, ProceduralGenerator, as_edits,
                                  attribution_mask, composite, feather, images_of, random_pipeline,
                                  scene_from_description)
from napari_mine.synthetic import scenes as S

STEPS = 2


# ----------------------------------------------------------------------------------------------- masks


def test_attribution_mask_selects_the_top_patch_grows_and_feathers_it():
    grid = np.zeros((4, 4), np.float32)
    grid[1, 2] = 1.0
    hard = attribution_mask(grid, 32, top_fraction=1 / 16)
    assert hard.shape == (32, 32) and hard.dtype == np.float32
    assert set(np.unique(hard)) == {0.0, 1.0}
    assert hard[12, 20] == 1 and hard[0, 0] == 0 and abs(hard.mean() - 1 / 16) < 0.02

    grown = attribution_mask(grid, 32, top_fraction=1 / 16, dilate_px=2)
    assert (grown >= hard).all() and grown.sum() > hard.sum()

    soft = attribution_mask(grid, 32, top_fraction=1 / 16, feather_px=4)
    ramp = (soft > 0) & (soft < 1)
    assert ramp.any() and (soft[hard == 1] == 1).all()
    assert soft.min() == 0 and soft.max() == 1
    expected = upsample(grid, 32) >= 0.5
    assert np.array_equal(attribution_mask(grid, (32, 32), threshold=0.5), expected.astype(np.float32))


def test_attribution_mask_refuses_empty_whole_and_ambiguous_masks():
    grid = np.arange(16, dtype=np.float32).reshape(4, 4)
    with pytest.raises(MineInputError, match="empty"):
        attribution_mask(grid, 16, threshold=100.0)
    with pytest.raises(MineInputError, match="whole image"):
        attribution_mask(np.ones((4, 4)), 16, top_fraction=0.1)
    with pytest.raises(MineInputError, match="whole image"):
        attribution_mask(grid, 16, top_fraction=0.5, feather_px=30)
    with pytest.raises(MineInputError, match="not both"):
        attribution_mask(grid, 16, top_fraction=0.1, threshold=3.0)
    with pytest.raises(MineInputError, match="2-D"):
        attribution_mask(np.ones(16), 16)


def test_composite_keeps_pixels_where_the_mask_is_zero():
    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    generated = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    region = np.zeros((8, 8), bool)
    region[2:5, 3:6] = True
    mask = np.broadcast_to(feather(region, 2), (2, 8, 8))
    out = composite(original, generated, mask)
    assert np.array_equal(out[:, mask[0] == 0], original[:, mask[0] == 0])
    assert np.array_equal(out[:, mask[0] == 1], generated[:, mask[0] == 1])


# ----------------------------------------------------------------------------------------------- procedural


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 12-image world written by write_world (64 px stimuli)."""
    from napari_mine.synthetic.write_nsd import write_world

    root = tmp_path_factory.mktemp("world") / "nsd"
    write_world(root, seed=1, n_images=12, n_shared=3, repeats=2, trials_per_session=10, image_size=64)
    return root


def test_descriptions_read_back_the_worlds_own_captions():
    rng = np.random.default_rng(3)
    for i in range(15):
        scene = S.sample_scene(rng)
        parsed = scene_from_description(S.caption(scene), np.random.default_rng(i))
        assert S.caption(parsed) == S.caption(scene)
    assert scene_from_description("an empty scene", rng).objects == ()
    assert [o.category for o in scene_from_description("a photo of a face and car", rng).objects] == ["face", "car"]


def test_descriptions_with_unknown_words_are_refused():
    rng = np.random.default_rng(0)
    with pytest.raises(MineInputError, match="'dragon'"):
        scene_from_description("a large red dragon", rng)
    with pytest.raises(MineInputError, match="no category"):
        scene_from_description("a large red", rng)
    with pytest.raises(MineInputError, match="two colors"):
        scene_from_description("a red blue face", rng)


def test_procedural_generate_is_seeded():
    generator = ProceduralGenerator(size=64)
    descriptions = ["a large red face on the left", "a small car and a green tree"]
    images = images_of(generator.generate(descriptions, seed=4))
    assert images.shape == (2, 64, 64, 3) and images.dtype == np.uint8
    assert np.array_equal(images, images_of(generator.generate(descriptions, seed=4)))
    assert not np.array_equal(images, images_of(generator.generate(descriptions, seed=5)))
    scene = generator.scenes_from_descriptions(descriptions, seed=4)[0]
    assert S.caption(scene) == "a large red face on the left"


def test_procedural_remove_by_stimulus_index_returns_the_edited_scene(world):
    from napari_mine.synthetic.truth import load_truth

    generator = ProceduralGenerator.from_world(world)
    truth = load_truth(world)
    assert generator.image_size == (64, 64) and len(generator.scenes) == 12
    index = next(i for i, scene in enumerate(truth.scenes) if len(scene.objects) >= 2)
    visible = S.object_masks(truth.scenes[index], 64)
    target = int(np.argmax(visible.sum((1, 2))))
    mask = feather(visible[target], 2)

    edited = generator.scenes_without([index], mask)[0]
    assert edited == S.remove_object(truth.scenes[index], target)
    image = generator.remove(generator.originals([index]), mask)[0].image
    assert np.array_equal(image, S.render(edited, 64))
    original = S.render(truth.scenes[index], 64)
    assert np.array_equal(image[mask == 0], original[mask == 0]) and not np.array_equal(image, original)
    assert truth.true_response([edited]).shape == (1, truth.brain.n_voxels)


def test_procedural_operations_return_edits_whose_image_is_the_rendering_of_their_scene(world):
    from napari_mine.synthetic.truth import load_truth

    generator, truth = ProceduralGenerator.from_world(world), load_truth(world)
    index = next(i for i, scene in enumerate(truth.scenes) if len(scene.objects) >= 2)
    original = generator.originals([index])[0]
    assert isinstance(original, Edit) and original.scene == truth.scenes[index]
    assert np.array_equal(original.image, S.render(truth.scenes[index], 64))
    visible = S.object_masks(original.scene, 64)
    target = int(np.argmax(visible.sum((1, 2))))
    removed = generator.remove([original], visible[target].astype(np.float32))[0]
    assert removed.scene == S.remove_object(original.scene, target)
    assert len(removed.scene.objects) == len(original.scene.objects) - 1
    assert np.array_equal(removed.image, S.render(removed.scene, 64))
    inserted = generator.insert([removed], visible[target].astype(np.float32), ["car"], seed=2)[0]
    assert inserted.scene.objects[:-1] == removed.scene.objects and inserted.scene.objects[-1].category == "car"
    assert np.array_equal(inserted.image, S.render(inserted.scene, 64))
    made = generator.generate(["a large red face"], seed=1)[0]
    assert made.scene == generator.scenes_from_descriptions(["a large red face"], seed=1)[0]
    assert np.array_equal(made.image, S.render(made.scene, 64))


def test_procedural_remove_refuses_a_mask_over_no_object_and_pixels():
    scene = S.Scene((S.SceneObject("face", "red", 0.15, 0.15, 0.2),), "plain", 0)
    generator = ProceduralGenerator([scene], size=32)
    corner = np.zeros((32, 32), np.float32)
    corner[24:, 24:] = 1
    with pytest.raises(MineInputError, match="overlaps no visible object"):
        generator.remove(generator.originals([0]), corner)
    with pytest.raises(MineInputError, match="scenes, not pixels"):
        generator.remove(as_edits(np.zeros((1, 32, 32, 3), np.uint8)), corner)
    with pytest.raises(MineInputError, match="outside this world"):
        generator.remove(generator.originals([3]), corner)


def test_procedural_insert_places_the_concept_on_the_mask():
    scene = S.Scene((S.SceneObject("house", "blue", 0.25, 0.5, 0.3),), "outdoor", 2)
    generator = ProceduralGenerator([scene], size=64)
    mask = np.zeros((64, 64), np.float32)
    mask[8:32, 30:60] = 1  # rows 8-31, columns 30-59
    edited = generator.scenes_with([0, scene], mask, ["red face", "a photo of a car"], seed=1)
    face = edited[0].objects[-1]
    assert (face.category, face.color) == ("face", "red") and edited[0].objects[:1] == scene.objects
    assert edited[1].objects[-1].category == "car"
    for inserted in (edited[0], edited[1]):
        rows, cols = np.nonzero(S.silhouettes(inserted, 64)[-1])
        assert 8 <= rows.min() and rows.max() <= 31 and 30 <= cols.min() and cols.max() <= 59, "inside the mask"
        assert rows.max() - rows.min() >= 20 or cols.max() - cols.min() >= 26, "as large as the mask allows"
    images = images_of(generator.insert(generator.originals([0]), mask, "face", seed=1))
    assert np.array_equal(images, images_of(generator.insert(generator.originals([0]), mask, "face", seed=1)))
    assert np.array_equal(images[0][mask == 0], S.render(scene, 64)[mask == 0])
    with pytest.raises(MineInputError, match="'unicorn'"):
        generator.insert(generator.originals([0]), mask, "unicorn")


def test_procedural_scenes_hold_the_size_colour_and_position_a_phrase_names():
    generator = ProceduralGenerator(size=64)
    for text in ("a large red face on the left", "a small blue car on the right", "a large green word in the centre"):
        scenes = generator.scenes_from_descriptions([text] * 20, seed=2)
        assert {S.caption(scene) for scene in scenes} == {text}
    scene = S.Scene((S.SceneObject("house", "blue", 0.25, 0.5, 0.3),), "outdoor", 2)
    small_mask, large_mask = np.zeros((2, 64, 64), np.float32)
    small_mask[30:42, 40:52] = 1
    large_mask[4:60, 4:60] = 1
    fitted = [generator.scenes_with([scene], mask, ["red face"])[0].objects[-1].size
              for mask in (small_mask, large_mask)]
    assert S.size_word(fitted[0]) == "small" and S.size_word(fitted[1]) == "large", "the masks alone disagree"
    large = generator.scenes_with([scene], small_mask, ["large red face"])[0].objects[-1]
    small = generator.scenes_with([scene], large_mask, ["small red face"])[0].objects[-1]
    assert (S.size_word(large.size), S.size_word(small.size)) == ("large", "small")
    assert (large.category, large.color, small.color) == ("face", "red", "red")
    assert generator.scenes_with([scene], small_mask, ["small face"])[0].objects[-1].size == fitted[0]


def test_procedural_progress_and_cancellation():
    generator = ProceduralGenerator(size=32)
    reports = []
    generator.generate(["face", "car", "tree"], on_progress=lambda done, total: reports.append((done, total)))
    assert reports == [(1, 3), (2, 3), (3, 3)]
    with pytest.raises(GenerationCancelled) as stopped:
        generator.generate(["face", "car", "tree"], should_stop=lambda: len(reports) >= 4,
                           on_progress=lambda done, total: reports.append((done, total)))
    assert isinstance(stopped.value, Cancelled) and len(reports) == 4


# ----------------------------------------------------------------------------------------------- diffusers


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny tensors gain nothing from threads, and on shared cores thread hand-offs cost 100× the work."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory):
    """Tiny random-weight Stable Diffusion and InstructPix2Pix pipelines saved with save_pretrained."""
    root = tmp_path_factory.mktemp("diffusers")
    random_pipeline("tiny", seed=0).save_pretrained(root / "sd")
    random_pipeline("tiny", "instruct", seed=1).save_pretrained(root / "ip2p")
    return root


@pytest.fixture(scope="module")
def diffusion(model_folders):
    return DiffusionGenerator.load(model_folders / "sd", steps=STEPS, batch_size=2, negative_prompt="blurry")


def _square_mask(size: int) -> np.ndarray:
    region = np.zeros((size, size), bool)
    region[size // 4 : size // 2, size // 4 : size // 2] = True
    return feather(region, 2)


def test_diffusion_loads_on_cpu_in_float32_at_the_models_size(diffusion):
    import torch

    assert diffusion.text2image.unet.dtype == torch.float32 and diffusion.text2image.device.type == "cpu"
    assert diffusion.image_size == (16, 16) and not diffusion.instruct


def test_diffusion_generate_is_seeded_per_image(diffusion):
    prompts = ["a red face", "a car", "a house"]
    images = images_of(diffusion.generate(prompts, seed=7))
    assert images.shape == (3, 16, 16, 3) and images.dtype == np.uint8
    assert np.array_equal(images, images_of(diffusion.generate(prompts, seed=7)))
    assert not np.array_equal(images, images_of(diffusion.generate(prompts, seed=8)))
    assert np.array_equal(images[2], diffusion.generate(prompts[:1] * 2 + prompts[2:], seed=7)[2].image)


def test_diffusion_edits_keep_unmasked_pixels_and_resize_in_and_out(diffusion):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 24, 24, 3), dtype=np.uint8)
    mask = _square_mask(24)
    removed = images_of(diffusion.remove(as_edits(images), mask, seed=1))
    inserted = images_of(diffusion.insert(as_edits(images), np.stack([mask, mask[::-1]]), ["a face", "a car"], seed=1))
    for edited, masks in ((removed, np.stack([mask, mask])), (inserted, np.stack([mask, mask[::-1]]))):
        assert edited.shape == images.shape and edited.dtype == np.uint8
        assert np.array_equal(edited[masks == 0], images[masks == 0])
        assert not np.array_equal(edited[masks == 1], images[masks == 1])
    assert np.array_equal(removed, images_of(diffusion.remove(as_edits(images), mask, seed=1)))
    assert not np.array_equal(removed, images_of(diffusion.remove(as_edits(images), mask, seed=2)))
    with pytest.raises(MineInputError, match="empty"):
        diffusion.remove(as_edits(images), np.zeros((24, 24)))
    with pytest.raises(MineInputError, match="uint8"):
        diffusion.remove(images[0], mask)


def test_pixel_originals_are_resized_images_and_pixel_edits_have_no_scene(diffusion):
    images = np.random.default_rng(2).integers(0, 256, (2, 24, 24, 3), dtype=np.uint8)
    originals = diffusion.originals([7, 8], iter(images))
    assert all(isinstance(edit, Edit) and edit.scene is None for edit in originals)
    assert images_of(originals).shape == (2, 16, 16, 3)
    removed = diffusion.remove(originals, _square_mask(16), seed=1)
    assert all(isinstance(edit, Edit) and edit.scene is None for edit in removed)
    assert images_of(removed).shape == (2, 16, 16, 3)
    with pytest.raises(MineInputError, match="pass images="):
        diffusion.originals([7])
    with pytest.raises(MineInputError, match="list of Edit"):
        diffusion.remove(images, _square_mask(24))


def test_diffusion_reports_progress_and_stops_after_the_first_step(diffusion, monkeypatch):
    reports = []
    diffusion.generate(["a", "b", "c"], on_progress=lambda done, total: reports.append((done, total)))
    assert reports[-1] == (3 * STEPS, 3 * STEPS) and [d for d, _ in reports] == sorted(d for d, _ in reports)

    unet = diffusion.text2image.unet
    calls = []
    real_forward = unet.forward
    monkeypatch.setattr(unet, "forward", lambda *a, **k: calls.append(1) or real_forward(*a, **k))
    with pytest.raises(GenerationCancelled):
        diffusion.generate(["a", "b", "c"], should_stop=lambda: len(calls) >= 1)
    assert len(calls) == 1


def test_diffusion_halves_the_batch_on_out_of_memory(diffusion, monkeypatch):
    import torch

    prompts = ["a red face", "a car", "a tree"]
    expected = images_of(diffusion.generate(prompts, seed=3))
    unet = diffusion.text2image.unet
    real_forward = unet.forward
    batches = []

    def forward_that_fits_one_image(sample, *args, **kwargs):
        batches.append(len(sample))
        if len(sample) > 2:  # one image with its unconditional twin
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return real_forward(sample, *args, **kwargs)

    monkeypatch.setattr(unet, "forward", forward_that_fits_one_image)
    retried = images_of(diffusion.generate(prompts, seed=3))
    assert np.abs(retried.astype(int) - expected).max() <= 1, "per-image seeds: the batch split does not matter"
    assert batches[0] == 4 and set(batches[1:]) == {2}

    monkeypatch.setattr(unet, "forward", lambda *a, **k: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("OOM")))
    with pytest.raises(MineInputError, match="Out of GPU memory"):
        diffusion.generate(prompts[:1])


def test_instruct_pix2pix_edits_are_composited(model_folders):
    generator = DiffusionGenerator.load(model_folders / "sd", edit_model=model_folders / "ip2p",
                                        edit_method="instruct", steps=STEPS)
    assert generator.instruct
    images = np.random.default_rng(1).integers(0, 256, (1, 16, 16, 3), dtype=np.uint8)
    mask = _square_mask(16)
    edited = images_of(generator.insert(as_edits(images), mask, "a face", seed=0))
    assert edited.shape == images.shape and np.array_equal(edited[0][mask == 0], images[0][mask == 0])
    assert np.array_equal(edited, images_of(generator.insert(as_edits(images), mask, "a face", seed=0)))


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks` argument is deprecated")
def test_missing_models_fail_fast_with_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(MineInputError, match="'someone/no-such-model' is not in the local Hugging Face cache"):
        DiffusionGenerator.load("someone/no-such-model")
    with pytest.raises(MineInputError, match="no model_index.json"):
        DiffusionGenerator.load(tmp_path)
    with pytest.raises(MineInputError, match="InstructPix2Pix"):
        DiffusionGenerator.load(tmp_path, edit_method="instruct")
