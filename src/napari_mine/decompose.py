"""The exact decomposition of a CLIP image embedding into per-token contributions (DESIGN.md §2).

The class token's residual stream after the last block of an open_clip `VisionTransformer` is a sum: the
embedding r0, and per layer the attention output (per head, per source token j: A[l,h,0,j] · LN1(x_j) W_V W_O,
plus the value and output biases) and the MLP output. With `ln_post`'s mean and σ frozen at the image's
own forward pass, `ln_post` followed by `proj` is linear in each summand, so the image embedding is exactly the
sum of every term mapped through T(c) = ((c − mean(c)) / σ ⊙ γ) P, plus β P. This is what makes MINE
mechanistic: a voxel's prediction is the same sum, each term projected on the voxel's weights.

Token 0 is the class token itself (a source like any other); tokens 1: are the patches in row-major grid order.
As in the formula, a token's term carries its whole LN1 output (β1 included); the value bias and the
attention-output bias do not depend on any source token (the attention row sums to one) and are counted in
`rest`, with r0, the MLP terms and β P. q, k and v are computed once per block and serve both the forward
pass and the class token's attention row, so the decomposed pass costs about as much as the plain one.

torch and open_clip are imported inside the functions: napari imports this package and must start fast.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Iterator, Sequence

import numpy as np

from napari_mine.errors import MineInputError

TOKEN_CHUNK_BYTES = 8 * 2**20
TOKEN_DTYPES = ("float32", "float16")  # the token cache's storage types: exact, or half the size
VECTOR_CHUNK_BYTES = 2**20
DEFAULT_TENSOR_BATCH = 32
NORM_FLOOR = 1e-12


@dataclass(frozen=True)
class Decomposition:
    """Exact parts of a batch of image embeddings: `tokens.sum(1) + rest == embedding`.

    Attributes
    ----------
    tokens : float32 (B, T, D)
        Direct contribution of each source token, summed over the heads of `layers`.
    rest : float32 (B, D)
        Everything else: r0, MLP terms, biases, β P and the attention of layers outside `layers`.
    embedding : float32 (B, D)
        The image embedding, as `model.encode_image(images)` returns it.
    layers : tuple of int
        The layers whose attention terms `tokens` holds.
    """

    tokens: np.ndarray
    rest: np.ndarray
    embedding: np.ndarray
    layers: tuple[int, ...]

    def normalized(self) -> "Decomposition":
        """A copy divided by each image's embedding norm: the parts of the L2-normalised encoder features."""
        norm = _embedding_norm(self.embedding)
        return replace(
            self, tokens=self.tokens / norm[:, None], rest=self.rest / norm, embedding=self.embedding / norm
        )


@dataclass(frozen=True)
class HeadDecomposition:
    """Per-head, per-token terms of one image: `heads.sum((0, 1, 2)) + rest == embedding`.

    Attributes
    ----------
    heads : float32 (L, H, T, D)
        Direct contribution of each (layer in `layers`, head, source token).
    rest : float32 (D,)
        Every term that is not in `heads` (as in `Decomposition.rest`).
    embedding : float32 (D,)
        The image embedding.
    layers : tuple of int
        The layers of the first axis of `heads`.
    """

    heads: np.ndarray
    rest: np.ndarray
    embedding: np.ndarray
    layers: tuple[int, ...]

    def normalized(self) -> "HeadDecomposition":
        """A copy divided by the embedding norm, in the units of the encoder features."""
        norm = _embedding_norm(self.embedding[None])[0]
        return replace(self, heads=self.heads / norm, rest=self.rest / norm, embedding=self.embedding / norm)


def _embedding_norm(embedding: np.ndarray) -> np.ndarray:
    return np.maximum(np.linalg.norm(embedding, axis=-1, keepdims=True), NORM_FLOOR).astype(np.float32)


# ---- public API ------------------------------------------------------------------------------------------


def decompose_images(model, images, layers: Sequence[int] | None = None) -> Decomposition:
    """Decompose the embeddings of a batch of images into per-source-token and non-spatial parts.

    One forward pass of the image tower (on the model's device) gives the embedding and all terms.

    Parameters
    ----------
    model
        An open_clip CLIP model, its `.visual` VisionTransformer, or a backbone with a `.model`.
    images : tensor (B, 3, S, S)
        Preprocessed images, as the model's preprocess makes them.
    layers : sequence of int, optional
        Layers whose attention terms go to `tokens` (default: all); the others are counted in `rest`.

    Returns
    -------
    Decomposition
        float32 numpy arrays with `tokens.sum(1) + rest == embedding == model.encode_image(images)`.
    """
    import torch

    visual = vision_tower(model)
    pixels = _checked_images(visual, images)
    selected = _checked_layers(visual, layers)
    batch, n_tokens, width = pixels.shape[0], token_count(visual), visual.transformer.width
    token_sum = torch.zeros(batch, n_tokens, width, device=pixels.device, dtype=torch.float32)

    def add_layer_tokens(block, value_terms):
        token_sum.add_(_token_terms(block, value_terms))

    with torch.no_grad():
        embedding, final_class, rest = _decomposed_forward(visual, pixels, selected, add_layer_tokens)
        sigma = _post_sigma(visual, final_class)[:, None]
        tokens = _post_linear(visual, token_sum) / sigma[:, None]
        rest = _post_linear(visual, rest) / sigma + _post_constant(visual)
    return Decomposition(_numpy(tokens), _numpy(rest), _numpy(embedding), selected)


def decompose_heads(model, image, layers: Sequence[int] | None = None) -> HeadDecomposition:
    """Decompose one image's embedding into per-(layer, head, source token) terms, for on-demand detail.

    Parameters
    ----------
    model
        An open_clip CLIP model, its `.visual` VisionTransformer, or a backbone with a `.model`.
    image : tensor (1, 3, S, S)
        One preprocessed image.
    layers : sequence of int, optional
        Layers to resolve per head (default: all); the others are counted in `rest`.

    Returns
    -------
    HeadDecomposition
        `heads` (L, H, T, D) and `rest` (D,) with `heads.sum((0, 1, 2)) + rest == embedding`.
    """
    import torch

    visual = vision_tower(model)
    pixels = _checked_images(visual, image)
    if pixels.shape[0] != 1:
        raise MineInputError(
            f"decompose_heads takes one image of shape (1, 3, S, S), got a batch of {pixels.shape[0]}; "
            "pass the images one at a time or use decompose_images."
        )
    selected = _checked_layers(visual, layers)
    per_layer = []

    def add_layer_heads(block, value_terms):
        per_layer.append(_post_linear(visual, _head_terms(block, value_terms)))

    with torch.no_grad():
        embedding, final_class, rest = _decomposed_forward(visual, pixels, selected, add_layer_heads)
        sigma = _post_sigma(visual, final_class)
        heads = torch.stack(per_layer) / sigma.view(1, -1, 1, 1, 1)
        rest = _post_linear(visual, rest) / sigma[:, None] + _post_constant(visual)
    return HeadDecomposition(_numpy(heads[:, 0]), _numpy(rest[0]), _numpy(embedding[0]), selected)


def decompose_to_store(
    model,
    images,
    group,
    *,
    n_images: int | None = None,
    batch_size: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    token_dtype: str = "float32",
) -> int:
    """Fill the token contribution cache: normalised `tokens`, `rest` and `features` arrays in a zarr group.

    Arrays are created at full size (float32, chunked by images, compressed, NaN where not yet written) and
    filled as batches arrive, so a long run needs memory for one batch only. The group's `complete`
    attribute is False until every image is written; `n_done` counts the rows written.

    Parameters
    ----------
    model
        An open_clip CLIP model, its `.visual` VisionTransformer, or a backbone with a `.model`.
    images
        Preprocessed float images: a tensor (N, 3, S, S), or an iterable (a generator, a DataLoader) of batch
        tensors (B, 3, S, S) or of tuples whose first item is such a tensor.
    group
        An open, writable zarr group.
    n_images : int, optional
        How many images the iterable yields; not needed for a tensor or a DataLoader over a sized dataset.
    batch_size : int, optional
        Most images per forward pass (larger incoming batches are split); default: batches as they come
        (32 for a tensor).
    on_progress : callable(done, total), optional
        Called after each batch.
    should_stop : callable() -> bool, optional
        Checked before each batch; when it returns True the run ends, leaving `complete` False.
    token_dtype : "float32" or "float16"
        How `tokens` is stored (see `create_cache_arrays`); `rest` and `features` stay float32.

    Returns
    -------
    int
        The number of images written.
    """
    visual = vision_tower(model)
    total = _count_images(images, n_images)
    arrays = create_cache_arrays(group, total, token_count(visual), output_dim(visual), token_dtype)
    group.attrs.update({"complete": False, "n_done": 0})
    done = 0
    batches = _batches(images, batch_size)
    while True:
        if should_stop is not None and should_stop():
            return done
        batch = next(batches, None)
        if batch is None:
            break
        if done + len(batch) > total:
            raise MineInputError(
                f"the image batches hold more than n_images={total} images; pass the number of images they yield."
            )
        parts = decompose_images(visual, batch).normalized()
        rows = slice(done, done + len(batch))
        arrays["tokens"][rows] = parts.tokens
        arrays["rest"][rows] = parts.rest
        arrays["features"][rows] = parts.embedding
        done += len(batch)
        group.attrs["n_done"] = done
        if on_progress is not None:
            on_progress(done, total)
    if done != total:
        raise MineInputError(
            f"the image batches held {done} images but n_images is {total}; pass the number of images they yield."
        )
    group.attrs["complete"] = True
    return done


# ---- which models are supported ----------------------------------------------------------------------------


def vision_tower(model):
    """The open_clip VisionTransformer of `model`, refused with a reason when it cannot be decomposed exactly.

    Parameters
    ----------
    model
        An open_clip CLIP model, its `.visual`, or a backbone with a `.model`.

    Returns
    -------
    open_clip.transformer.VisionTransformer
    """
    from open_clip.transformer import VisionTransformer

    visual = getattr(model, "model", model)
    visual = getattr(visual, "visual", visual)
    if not isinstance(visual, VisionTransformer):
        raise MineInputError(
            f"the model's image tower is a {type(visual).__name__}, not an open_clip VisionTransformer; MINE "
            "decomposes ViT towers only, so choose a ViT model (e.g. ViT-B-16)."
        )
    _refuse_unsupported_pooling(visual)
    _refuse_unsupported_blocks(visual)
    _refuse_random_forward(visual)
    return visual


def _refuse_unsupported_pooling(visual) -> None:
    """Class-token pooling only: ln_post before or after taking token 0 is the same per-token LayerNorm."""
    import torch.nn as nn

    if visual.attn_pool is not None:
        raise MineInputError(
            "the model pools its tokens with an attentional pooler (attn_pool, as in CoCa), which MINE's exact "
            "decomposition does not cover; choose a model with class-token pooling."
        )
    if visual.pool_type != "tok":
        raise MineInputError(
            f"the model pools its tokens with pool_type={visual.pool_type!r} (global average or none), which "
            "MINE's exact decomposition does not cover; choose a model with class-token pooling (pool_type 'tok')."
        )
    if not isinstance(visual.ln_post, nn.LayerNorm):
        raise MineInputError(
            f"the model's final norm ln_post is a {type(visual.ln_post).__name__}, not a LayerNorm, so it cannot "
            "be held linear per image; choose a model with a LayerNorm ln_post."
        )


def _refuse_unsupported_blocks(visual) -> None:
    """Standard blocks only: x + ls_1(MHA(ln_1(x))), then x + ls_2(mlp(ln_2(x))), with linear LayerScale."""
    import torch.nn as nn
    from open_clip.transformer import LayerScale, ResidualAttentionBlock

    for index, block in enumerate(visual.transformer.resblocks):
        if type(block) is not ResidualAttentionBlock or hasattr(block, "ln_1_kv"):
            raise MineInputError(
                f"block {index} of the model is a {type(block).__name__} (qk-norm, scaled cosine attention, head "
                "scaling or cross-attention), which MINE's exact decomposition does not cover; choose a model "
                "with standard ResidualAttentionBlocks."
            )
        attn = block.attn
        if attn.in_proj_weight is None or attn.bias_k is not None or attn.add_zero_attn:
            raise MineInputError(
                f"the attention of block {index} uses separate q/k/v projections or extra key/value biases, which "
                "MINE's exact decomposition does not cover; choose a standard open_clip ViT."
            )
        for scale in (block.ls_1, block.ls_2):
            if not isinstance(scale, (nn.Identity, LayerScale)):
                raise MineInputError(
                    f"block {index} scales its residual branch with a {type(scale).__name__}, which MINE's exact "
                    "decomposition does not cover; choose a model with LayerScale or none."
                )


def _refuse_random_forward(visual) -> None:
    """Training mode matters only where it makes the forward random: patch or attention dropout."""
    from open_clip.transformer import PatchDropout

    if not visual.training:
        return
    attention_dropout = any(block.attn.dropout > 0 for block in visual.transformer.resblocks)
    if isinstance(visual.patch_dropout, PatchDropout) or attention_dropout:
        raise MineInputError(
            "the model is in training mode with patch or attention dropout, so its forward pass is random; call "
            "model.eval() before decomposing."
        )


# ---- the decomposed forward pass ---------------------------------------------------------------------------


def _decomposed_forward(visual, pixels, selected: tuple[int, ...], collect):
    """Run the tower once; hand each selected layer's per-head class-token value terms to `collect`.

    Returns the embedding (B, D), the final class-token residual r (B, W) and, in residual space, the sum of
    every class-token term that `collect` does not receive (B, W, float32).
    """
    x = _embed(visual, pixels)
    rest = x[:, 0].float().clone()
    for index, block in enumerate(visual.transformer.resblocks):
        wanted = index in selected
        x, attention_out, mlp_out, value_terms = _block_forward(block, x, wanted)
        if wanted:
            collect(block, value_terms)
            rest += _attention_bias(block)
        else:
            rest += attention_out.float()
        rest += mlp_out.float()
    final_class = x[:, 0]
    embedding = visual.ln_post(final_class)
    if visual.proj is not None:
        embedding = embedding @ visual.proj
    return embedding, final_class, rest


def _embed(visual, pixels):
    """Patch embedding, class token, positions and ln_pre: the stream that enters block 0 (r0 at token 0)."""
    import torch

    x = visual.conv1(pixels)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    class_token = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([class_token, x], dim=1) + visual.positional_embedding.to(x.dtype)
    return visual.ln_pre(x)


def _block_forward(block, x, want_terms: bool):
    """One ResidualAttentionBlock on batch-first x (B, T, W), computing q, k, v once for both uses.

    Returns the block output, the class token's attention and MLP outputs (B, W) after LayerScale, and,
    when `want_terms`, the per-head class-token value terms A[h, 0, j] · (v_j − b_V) as (B, H, T, W/H).
    """
    import torch.nn.functional as F

    attn = block.attn
    batch, n_tokens, width = x.shape
    heads = attn.num_heads
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.view(batch, n_tokens, 3, heads, width // heads).permute(2, 0, 3, 1, 4).unbind(0)
    mixed = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, n_tokens, width)
    attention_out = block.ls_1(F.linear(mixed, attn.out_proj.weight, attn.out_proj.bias))
    x = x + attention_out
    mlp_out = block.ls_2(block.mlp(block.ln_2(x)))
    value_terms = _class_value_terms(attn, q, k, v) if want_terms else None
    return x + mlp_out, attention_out[:, 0], mlp_out[:, 0], value_terms


def _class_value_terms(attn, q, k, v):
    """A[h, 0, j] · (v_j − b_V) in float32: the class token's attention row applied to each source's value."""
    heads, head_width = q.shape[1], q.shape[-1]
    scores = (q[:, :, :1].float() @ k.float().transpose(-1, -2)) * head_width**-0.5
    row = scores.softmax(dim=-1).transpose(-1, -2)
    values = v.float()
    if attn.in_proj_bias is not None:
        values = values - attn.in_proj_bias[2 * heads * head_width :].float().view(1, heads, 1, head_width)
    return row * values


def _attention_bias(block):
    """ls_1(b_V W_O + b_O): the part of a layer's class-token attention output that no source token carries."""
    import torch.nn.functional as F

    attn = block.attn
    out_weight = attn.out_proj.weight.float()
    value_bias = (
        attn.in_proj_bias[2 * attn.embed_dim :].float()
        if attn.in_proj_bias is not None
        else out_weight.new_zeros(attn.embed_dim)
    )
    out_bias = attn.out_proj.bias.float() if attn.out_proj.bias is not None else None
    return block.ls_1(F.linear(value_bias, out_weight, out_bias))


def _token_terms(block, value_terms):
    """Per-source-token attention output of one layer, summed over heads: (B, T, W) in residual space."""
    import torch.nn.functional as F

    batch, heads, n_tokens, head_width = value_terms.shape
    concatenated = value_terms.transpose(1, 2).reshape(batch, n_tokens, heads * head_width)
    return block.ls_1(F.linear(concatenated, block.attn.out_proj.weight.float()))


def _head_terms(block, value_terms):
    """Per-head, per-source-token attention output of one layer: (B, H, T, W) in residual space."""
    import torch

    heads, head_width = value_terms.shape[1], value_terms.shape[-1]
    out_weight = block.attn.out_proj.weight.float().view(-1, heads, head_width)
    return block.ls_1(torch.einsum("bhtd,whd->bhtw", value_terms, out_weight))


# ---- ln_post and proj, held linear per image ---------------------------------------------------------------


def _post_linear(visual, terms):
    """((c − mean(c)) ⊙ γ) P for each term c along the last axis: ln_post·proj without the image's 1/σ."""
    centred = terms - terms.mean(dim=-1, keepdim=True)
    if visual.ln_post.weight is not None:
        centred = centred * visual.ln_post.weight.float()
    return centred @ visual.proj.float() if visual.proj is not None else centred


def _post_sigma(visual, final_class):
    """σ of ln_post on the image's own final class-token residual (B,): the factor that is frozen."""
    import torch

    residual = final_class.float()
    return torch.sqrt(residual.var(dim=-1, unbiased=False) + visual.ln_post.eps)


def _post_constant(visual):
    """β P: the part of the embedding that ln_post adds whatever the input."""
    import torch

    bias = visual.ln_post.bias
    if bias is None:
        return torch.zeros(output_dim(visual), device=visual.conv1.weight.device)
    return bias.float() @ visual.proj.float() if visual.proj is not None else bias.float()


# ---- input checks and small helpers ------------------------------------------------------------------------


def _checked_images(visual, images):
    """The images as a float tensor (B, 3, S, S) on the model's device and in its dtype."""
    import torch

    pixels = torch.as_tensor(images)
    expected = tuple(visual.image_size)
    if pixels.ndim != 4 or pixels.shape[1] != 3 or tuple(pixels.shape[2:]) != expected:
        raise MineInputError(
            f"images must be a tensor of shape (B, 3, {expected[0]}, {expected[1]}) as the model's preprocess "
            f"makes them, got {tuple(pixels.shape)}; preprocess the images with the backbone first."
        )
    if not pixels.is_floating_point():
        raise MineInputError(
            f"images must be preprocessed float tensors, got {pixels.dtype}; preprocess the images with the "
            "backbone first."
        )
    weight = visual.conv1.weight
    return pixels.to(device=weight.device, dtype=weight.dtype)


def _checked_layers(visual, layers) -> tuple[int, ...]:
    """Sorted, distinct layer indices (negative ones count from the end); default all layers."""
    n_layers = len(visual.transformer.resblocks)
    if layers is None:
        return tuple(range(n_layers))
    chosen = [int(layer) for layer in layers]
    if not chosen or any(not -n_layers <= layer < n_layers for layer in chosen):
        raise MineInputError(
            f"layers must be a non-empty list of layer indices between 0 and {n_layers - 1}, got {list(layers)}; "
            "pick layers of this model or leave layers out for all."
        )
    return tuple(sorted({layer % n_layers for layer in chosen}))


def token_count(visual) -> int:
    return visual.grid_size[0] * visual.grid_size[1] + 1


def output_dim(visual) -> int:
    return visual.proj.shape[1] if visual.proj is not None else visual.transformer.width


def _numpy(tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.float().cpu().numpy())


# ---- the token contribution cache --------------------------------------------------------------------------


def _count_images(images, n_images: int | None) -> int:
    """How many images will arrive: given, or the length of a tensor or of a DataLoader's dataset."""
    import torch

    if n_images is None:
        if isinstance(images, torch.Tensor):
            n_images = len(images)
        else:
            try:
                n_images = len(images.dataset)
            except (AttributeError, TypeError):
                raise MineInputError(
                    "cannot tell how many images the iterable yields; pass n_images= with their number."
                ) from None
    if int(n_images) < 1:
        raise MineInputError(f"there are no images to decompose (n_images={n_images}); pass at least one image.")
    return int(n_images)


def _batches(images, batch_size: int | None) -> Iterator:
    """Batch tensors from a tensor or an iterable of batches (or of tuples led by one), split to batch_size."""
    import torch

    if batch_size is not None and int(batch_size) < 1:
        raise MineInputError(f"batch_size must be a positive number of images, got {batch_size}.")
    if isinstance(images, torch.Tensor):
        images, batch_size = (images,), batch_size or DEFAULT_TENSOR_BATCH
    for item in images:
        batch = item[0] if isinstance(item, (tuple, list)) else item
        step = int(batch_size or len(batch))
        for start in range(0, len(batch), step):
            yield batch[start : start + step]


def check_token_dtype(token_dtype: str) -> str:
    """The token cache's storage type, refused unless it is one of `TOKEN_DTYPES`."""
    if token_dtype not in TOKEN_DTYPES:
        raise MineInputError(
            f"token_dtype {token_dtype!r} is not a token cache type; use 'float32' (exact, the default) or "
            "'float16' (half the disk)."
        )
    return token_dtype


def create_cache_arrays(group, n_images: int, n_tokens: int, dim: int, token_dtype: str = "float32") -> dict:
    """Full-size arrays chunked by images (a chunk of a few MiB), NaN until written.

    `tokens` (T times larger than the others) is stored as `token_dtype`: float16 halves the disk at a
    rounding of each stored term to 11 significant bits (writes cast to it; `Results.tokens` reads float32).
    It is stored uncompressed: token contributions are float noise to zstd (it saved 6 % on the demo's), and
    an 8 MB chunk then reads in 3.5 ms instead of 13.5 ms, which every slider jump and profile block pays (a
    last, partial chunk is stored whole: at most one chunk more on disk).
    `rest` and `features` stay float32, so the encoder's features and its prediction are unchanged.
    """
    itemsize = np.dtype(check_token_dtype(token_dtype)).itemsize
    token_rows = _rows_per_chunk(n_tokens * dim * itemsize, TOKEN_CHUNK_BYTES, n_images)
    vector_rows = _rows_per_chunk(dim * 4, VECTOR_CHUNK_BYTES, n_images)
    shapes = {
        "tokens": ((n_images, n_tokens, dim), (token_rows, n_tokens, dim), token_dtype),
        "rest": ((n_images, dim), (vector_rows, dim), "float32"),
        "features": ((n_images, dim), (vector_rows, dim), "float32"),
    }
    return {
        name: group.create_array(
            name, shape=shape, chunks=chunks, dtype=dtype, fill_value=np.nan, overwrite=True,
            **({"compressors": None} if name == "tokens" else {}),
        )
        for name, (shape, chunks, dtype) in shapes.items()
    }


def _rows_per_chunk(row_bytes: int, chunk_bytes: int, n_rows: int) -> int:
    return max(1, min(n_rows, chunk_bytes // row_bytes))
