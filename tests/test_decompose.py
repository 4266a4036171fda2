"""The exact CLIP decomposition (DESIGN.md §2): the terms sum to `encode_image`, per token and per head.

Real open_clip towers with random weights; every LayerNorm and bias is randomised too, so the bias, β P and
LayerScale terms are exercised (open_clip initialises them to zero or one).
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from napari_mine.decompose import decompose_heads, decompose_images, decompose_to_store
from napari_mine.errors import MineInputError

TOLERANCE = 1e-4


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One intra-op thread: on a shared 2-core machine, spinning worker threads cost more than they give."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _randomize_norms_and_biases(model, seed: int, layer_scale: bool = False):
    """Give every LayerNorm weight/bias, every bias and (optionally) every LayerScale γ random values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            is_norm = ".ln_" in name or name.startswith("ln_")
            if name.endswith("bias") or is_norm or ("gamma" in name and layer_scale):
                centre = 1.0 if name.endswith("weight") or "gamma" in name else 0.0
                parameter.copy_(centre + 0.2 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def _tiny(seed=0, **options):
    from open_clip.transformer import VisionTransformer

    torch.manual_seed(seed)
    config = dict(image_size=32, patch_size=8, width=64, layers=3, heads=4, mlp_ratio=2.0, output_dim=24)
    model = VisionTransformer(**{**config, **options})
    return _randomize_norms_and_biases(model, seed, layer_scale="ls_init_value" in options)


def _images(n, size, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _relative_error(summed, reference):
    return float((np.linalg.norm(summed - reference, axis=-1) / np.linalg.norm(reference, axis=-1)).max())


def _encode(model, images):
    with torch.no_grad():
        encode = model.encode_image if hasattr(model, "encode_image") else model
        return encode(images).float().cpu().numpy()


@pytest.fixture(scope="module")
def vit_b16():
    """A random-weight ViT-B-16 CLIP, two images and their `encode_image` reference."""
    import open_clip

    torch.manual_seed(1)
    model = _randomize_norms_and_biases(open_clip.create_model("ViT-B-16", pretrained=None), 1)
    images = _images(2, 224, seed=3)
    return SimpleNamespace(model=model, images=images, reference=_encode(model, images))


@pytest.fixture(scope="module")
def vit_l14_tower():
    """A ViT-L-14-shaped tower (24 layers, width 1024, 16 heads, patch 14) with LayerScale, at 56 px."""
    from open_clip import get_model_config
    from open_clip.transformer import VisionTransformer

    config = get_model_config("ViT-L-14")
    vision = config["vision_cfg"]
    torch.manual_seed(2)
    model = VisionTransformer(
        image_size=56, patch_size=vision["patch_size"], width=vision["width"], layers=vision["layers"],
        heads=vision["width"] // 64, mlp_ratio=4.0, output_dim=config["embed_dim"], ls_init_value=0.1,
    )
    return _randomize_norms_and_biases(model, 2, layer_scale=True)


# ---------------------------------------------------------------------------------------- the invariant


@pytest.mark.parametrize(
    "options",
    [{}, {"ls_init_value": 0.5}, {"final_ln_after_pool": True}, {"no_ln_pre": True}],
    ids=["plain", "layerscale", "ln-after-pool", "no-ln-pre"],
)
def test_tiny_terms_sum_to_encode_image(options):
    model, images = _tiny(**options), _images(2, 32)
    parts = decompose_images(model, images)
    reference = _encode(model, images)
    assert parts.tokens.shape == (2, 17, 24) and parts.rest.shape == (2, 24)
    assert parts.tokens.dtype == np.float32 and parts.layers == (0, 1, 2)
    assert _relative_error(parts.tokens.sum(1) + parts.rest, reference) < TOLERANCE
    assert _relative_error(parts.embedding, reference) < TOLERANCE


def test_vit_b16_clip_terms_sum_to_encode_image_and_normalise(vit_b16):
    backbone = SimpleNamespace(model=vit_b16.model)
    parts = decompose_images(backbone, vit_b16.images)
    assert parts.tokens.shape == (2, 197, 512)
    assert _relative_error(parts.tokens.sum(1) + parts.rest, vit_b16.reference) < TOLERANCE
    unit = parts.normalized()
    features = vit_b16.reference / np.linalg.norm(vit_b16.reference, axis=1, keepdims=True)
    assert _relative_error(unit.tokens.sum(1) + unit.rest, features) < TOLERANCE
    np.testing.assert_allclose(np.linalg.norm(unit.embedding, axis=1), 1.0, atol=1e-6)


def test_vit_l14_shaped_tower_with_layerscale_sums_to_forward(vit_l14_tower):
    images = _images(2, 56, seed=4)
    parts = decompose_images(vit_l14_tower, images)
    assert parts.tokens.shape == (2, 17, 768) and len(parts.layers) == 24
    assert _relative_error(parts.tokens.sum(1) + parts.rest, _encode(vit_l14_tower, images)) < TOLERANCE


def test_vit_b16_layer_subset_moves_the_rest_exactly(vit_b16):
    subset = decompose_images(vit_b16.model, vit_b16.images[:1], layers=[-1, 9, 9])
    assert subset.layers == (9, 11)
    assert _relative_error(subset.tokens.sum(1) + subset.rest, vit_b16.reference[:1]) < TOLERANCE


def test_layer_subsets_add_up_per_token():
    model, images = _tiny(seed=5), _images(2, 32, seed=5)
    both = decompose_images(model, images, layers=[0, 2])
    first, last = decompose_images(model, images, layers=[0]), decompose_images(model, images, layers=[2])
    np.testing.assert_allclose(first.tokens + last.tokens, both.tokens, atol=1e-5 * np.abs(both.tokens).max())
    np.testing.assert_allclose(first.embedding, both.embedding, rtol=1e-6, atol=1e-6)


def test_per_token_terms_match_an_independent_float64_reference():
    """Rebuild every term from open_clip's own forward (block inputs, nn.MultiheadAttention's weights)."""
    model, images = _tiny(seed=6, ls_init_value=0.5), _images(2, 32, seed=6)
    inputs = []
    hooks = [block.register_forward_pre_hook(lambda _, args: inputs.append(args[0])) for block in
             model.transformer.resblocks]
    final = []
    hooks.append(model.ln_post.register_forward_pre_hook(lambda _, args: final.append(args[0][:, 0])))
    with torch.no_grad():
        model(images)
    for hook in hooks:
        hook.remove()
    expected = _reference_token_terms(model, inputs, final[0])
    tokens = decompose_images(model, images).tokens
    np.testing.assert_allclose(tokens, expected, atol=1e-5 * np.abs(expected).max())


def _reference_token_terms(model, block_inputs, final_class):
    """Σ_l Σ_h A[l,h,0,j] · LN1(x_j) W_V W_O ⊙ γ_ls, through the frozen ln_post and proj, in float64."""
    total = 0
    with torch.no_grad():
        for block, x in zip(model.transformer.resblocks, block_inputs):
            attn, normed = block.attn, block.ln_1(x)
            _, weights = attn(normed, normed, normed, need_weights=True, average_attn_weights=False)
            width, heads = attn.embed_dim, attn.num_heads
            values = (normed.double() @ attn.in_proj_weight[2 * width:].double().T)
            values = values.view(*values.shape[:2], heads, width // heads)
            per_token = torch.einsum("bht,bthd->bthd", weights[:, :, 0].double(), values).flatten(2)
            total = total + per_token @ attn.out_proj.weight.double().T * block.ls_1.gamma.double()
        sigma = torch.sqrt(final_class.double().var(-1, unbiased=False) + model.ln_post.eps)
        centred = (total - total.mean(-1, keepdim=True)) * model.ln_post.weight.double()
        return (centred @ model.proj.double() / sigma[:, None, None]).numpy()


def test_heads_sum_to_encode_image_and_to_the_token_terms():
    model, image = _tiny(seed=7, ls_init_value=0.5), _images(1, 32, seed=7)
    detail = decompose_heads(model, image)
    reference = _encode(model, image)[0]
    assert detail.heads.shape == (3, 4, 17, 24)
    assert _relative_error(detail.heads.sum((0, 1, 2)) + detail.rest, reference) < TOLERANCE
    tokens = decompose_images(model, image).tokens[0]
    np.testing.assert_allclose(detail.heads.sum((0, 1)), tokens, atol=1e-5 * np.abs(tokens).max())
    late = decompose_heads(model, image, layers=[2])
    assert late.heads.shape == (1, 4, 17, 24) and late.layers == (2,)
    assert _relative_error(late.heads.sum((0, 1, 2)) + late.rest, reference) < TOLERANCE
    normalized = late.normalized()
    assert np.isclose(np.linalg.norm(normalized.heads.sum((0, 1, 2)) + normalized.rest), 1.0, atol=1e-5)


def test_heads_of_vit_b16_sum_to_encode_image(vit_b16):
    detail = decompose_heads(vit_b16.model, vit_b16.images[1:], layers=[0, 11])
    assert detail.heads.shape == (2, 12, 197, 512)
    assert _relative_error(detail.heads.sum((0, 1, 2)) + detail.rest, vit_b16.reference[1]) < TOLERANCE


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_model_decomposes_on_its_device():
    model, images = _tiny(seed=10).cuda(), _images(2, 32, seed=10)
    parts = decompose_images(model, images)
    assert isinstance(parts.tokens, np.ndarray)
    assert _relative_error(parts.tokens.sum(1) + parts.rest, _encode(model, images.cuda())) < TOLERANCE


# ------------------------------------------------------------------------------------- refused models


def test_unsupported_towers_are_refused_with_the_property_named():
    from open_clip.modified_resnet import ModifiedResNet

    cases = {
        "pool_type='avg'": _tiny(pool_type="avg"),
        "attn_pool": _tiny(attentional_pool=True, attn_pooler_heads=4, attn_pooler_queries=4),
        "CustomResidualAttentionBlock": _tiny(qk_norm=True),
        "ModifiedResNet": ModifiedResNet(layers=(1, 1, 1, 1), output_dim=16, heads=2, image_size=64, width=16),
        "model.eval()": _tiny(patch_dropout=0.5).train(),
    }
    for expected, model in cases.items():
        with pytest.raises(MineInputError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            decompose_images(model, _images(1, 32))


def test_training_mode_without_dropout_is_accepted():
    model, images = _tiny(seed=11).train(), _images(1, 32, seed=11)
    parts = decompose_images(model, images)
    assert _relative_error(parts.tokens.sum(1) + parts.rest, _encode(model, images)) < TOLERANCE


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: decompose_images(m, _images(1, 48)), "shape"),
        (lambda m: decompose_images(m, (_images(1, 32) * 100).to(torch.uint8)), "float"),
        (lambda m: decompose_images(m, _images(1, 32), layers=[3]), "layer indices"),
        (lambda m: decompose_images(m, _images(1, 32), layers=[]), "layer indices"),
        (lambda m: decompose_heads(m, _images(2, 32)), "one image"),
    ],
)
def test_bad_input_is_refused(call, message):
    with pytest.raises(MineInputError, match=message):
        call(_tiny())


# ------------------------------------------------------------------------------- the contribution cache


def test_store_writes_normalised_parts_that_sum_to_the_features(tmp_path):
    import zarr

    model, images = _tiny(seed=12), _images(5, 32, seed=12)
    group = zarr.open_group(tmp_path / "features.zarr", mode="w")
    progress = []
    written = decompose_to_store(model, images, group, batch_size=2, on_progress=lambda *a: progress.append(a))
    assert written == 5 and progress == [(2, 5), (4, 5), (5, 5)]
    assert group.attrs["complete"] is True and group.attrs["n_done"] == 5
    tokens, rest, features = (np.asarray(group[name][...]) for name in ("tokens", "rest", "features"))
    assert tokens.shape == (5, 17, 24) and tokens.dtype == np.float32
    expected = torch.nn.functional.normalize(torch.from_numpy(_encode(model, images)), dim=-1).numpy()
    assert _relative_error(features, expected) < TOLERANCE
    assert _relative_error(tokens.sum(1) + rest, features) < TOLERANCE


def test_store_reads_loader_style_batches_and_honours_should_stop(tmp_path):
    import zarr

    model, images = _tiny(seed=13), _images(6, 32, seed=13)
    loader = [(images[:3], "labels"), (images[3:], "labels")]
    group = zarr.open_group(tmp_path / "stopped.zarr", mode="w")
    calls = iter([False, True])
    written = decompose_to_store(model, loader, group, n_images=6, should_stop=lambda: next(calls))
    assert written == 3 and group.attrs["complete"] is False and group.attrs["n_done"] == 3
    features = np.asarray(group["features"][...])
    assert np.isfinite(features[:3]).all() and np.isnan(features[3:]).all()
    with pytest.raises(MineInputError, match="n_images"):
        decompose_to_store(model, iter(loader), zarr.open_group(tmp_path / "short.zarr", mode="w"), n_images=7)
    with pytest.raises(MineInputError, match="n_images"):
        decompose_to_store(model, iter(loader), zarr.open_group(tmp_path / "unsized.zarr", mode="w"))
