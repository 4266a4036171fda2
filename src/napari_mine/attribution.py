"""Where in an image a voxel's predicted response comes from (DESIGN.md §1 step 2 and §2).

Exact maps: the decomposition writes the encoder features of an image as a sum of per-source-token terms
plus a non-spatial rest, so a voxel's prediction is ``tokens.sum(0) @ w̃ + rest @ w̃ + b̃`` and the score of
a token is its own term projected on w̃. Token 0 is the class token; tokens 1: are the g × g patches in
row-major order, as open_clip flattens its patch grid. Every query over a results folder
(:class:`~napari_mine.results.Results`) is one matrix product over its token contribution cache.

Baselines that are not exact (gradient × input, integrated gradients, occlusion) run the model itself, and
`faithfulness` scores any map by deleting or inserting patches in the map's order and watching the voxel's
predicted response (``normalize(encode_image(x)) @ w̃ + b̃``).

torch is imported inside the functions that need it: napari imports this package and must start fast.
"""

from __future__ import annotations

import numpy as np

from napari_mine.errors import MineInputError

METHODS = ("exact", "exact_contrast", "gradient_x_input", "integrated_gradients", "occlusion")
FILLS = ("grey", "blur")


# ---- exact maps from token contributions -----------------------------------------------------------------


def patch_attribution(tokens, weights, *, paired: bool = False) -> np.ndarray:
    """Score each token by its contribution to the voxel's predicted response.

    Parameters
    ----------
    tokens : array (..., T, D)
        Per-source-token contributions in the encoder's feature space (class token first, if given: every
        token given is scored).
    weights : array (D,) or (D, V)
        Effective weights w̃ of one voxel, or of V voxels as columns.
    paired : bool
        With tokens (V, T, D) of V images and weights (D, V): score image v on voxel v only.

    Returns
    -------
    float32 array (..., T) for one voxel, (..., T, V) for V voxels, (V, T) paired
        ``tokens @ weights``; with the rest term and the bias they sum to the prediction.
    """
    tokens = np.asarray(tokens)
    weights = np.asarray(weights)
    if paired and (tokens.ndim != 3 or weights.shape != (tokens.shape[2], tokens.shape[0])):
        raise MineInputError(
            f"paired tokens of shape {tokens.shape} cannot be projected on weights of shape {weights.shape}; "
            "pass the tokens (V, T, D) of V images and the weights (D, V) of the V voxels, from the same model."
        )
    if tokens.ndim < 2 or weights.ndim not in (1, 2) or tokens.shape[-1] != weights.shape[0]:
        raise MineInputError(
            f"tokens of shape {tokens.shape} cannot be projected on weights of shape {weights.shape}; pass "
            "tokens (..., T, D) and weights (D,) or (D, V) from the same model."
        )
    tokens, weights = tokens.astype(np.float32, copy=False), weights.astype(np.float32, copy=False)
    if paired:
        return (tokens @ weights.T[..., None])[..., 0]
    return tokens @ weights


def to_patch_grid(scores, axis: int = -1) -> np.ndarray:
    """Drop the class token and fold the patch scores into the image's g × g grid.

    Parameters
    ----------
    scores : array
        Token scores with the T = 1 + g² tokens along `axis`.
    axis : int
        The token axis (-1 for `patch_attribution` of one voxel, -2 or 0 for several voxels).

    Returns
    -------
    array
        `scores` with the token axis replaced by the grid axes (rows, columns).
    """
    scores = np.asarray(scores)
    axis = axis % scores.ndim
    moved = np.moveaxis(scores, axis, -1)
    side = grid_side(moved.shape[-1])
    grid = moved[..., 1:].reshape(moved.shape[:-1] + (side, side))
    return np.moveaxis(grid, (-2, -1), (axis, axis + 1))


def grid_side(n_tokens: int, n_prefix_tokens: int = 1) -> int:
    """Side g of the patch grid of ``n_tokens`` = ``n_prefix_tokens`` + g² tokens (patches row-major)."""
    n_patches = n_tokens - n_prefix_tokens
    side = int(round(np.sqrt(n_patches))) if n_patches > 0 else 0
    if side < 1 or side * side != n_patches:
        raise MineInputError(
            f"{n_tokens} tokens are not {n_prefix_tokens} prefix token(s) plus a square patch grid; pass 1 + g² "
            "tokens (class token first), or give n_prefix_tokens so that the rest form a g × g square grid."
        )
    return side


def upsample(grid_map, size, method: str = "bilinear") -> np.ndarray:
    """Resize a patch map (..., g, g) to image pixels (..., H, W) to lay it over the image.

    "bilinear" interpolates between patch centres (pixel centres aligned, edges held constant, as
    ``torch.nn.functional.interpolate(align_corners=False)``); "nearest" paints each patch as a block.

    Parameters
    ----------
    grid_map : array (..., g, g)
    size : int or (H, W)
    method : {"bilinear", "nearest"}

    Returns
    -------
    float32 array (..., H, W)
    """
    grid_map = np.asarray(grid_map, dtype=np.float32)
    height, width = (size, size) if np.isscalar(size) else tuple(size)
    if grid_map.ndim < 2 or min(height, width) < 1:
        raise MineInputError(f"cannot upsample a map of shape {grid_map.shape} to {size}; pass (..., g, g) and a "
                             "positive size.")
    rows = _interpolation_matrix(grid_map.shape[-2], int(height), method)
    cols = _interpolation_matrix(grid_map.shape[-1], int(width), method)
    return np.einsum("hi,...ij,wj->...hw", rows, grid_map, cols).astype(np.float32)


def _interpolation_matrix(n_in: int, n_out: int, method: str) -> np.ndarray:
    """(n_out, n_in) weights that resample a 1-D signal at the output pixel centres."""
    centres = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    matrix = np.zeros((n_out, n_in), dtype=np.float32)
    if method == "nearest":
        matrix[np.arange(n_out), np.clip(np.floor(centres + 0.5), 0, n_in - 1).astype(int)] = 1.0
    elif method == "bilinear":
        centres = np.clip(centres, 0, n_in - 1)
        low = np.floor(centres).astype(int)
        high = np.minimum(low + 1, n_in - 1)
        np.add.at(matrix, (np.arange(n_out), low), 1.0 - (centres - low))
        np.add.at(matrix, (np.arange(n_out), high), centres - low)
    else:
        raise MineInputError(f"unknown upsampling method {method!r}; use 'bilinear' or 'nearest'.")
    return matrix


def spatial_fraction(tokens, rest, weights, bias) -> np.ndarray:
    """Share of a prediction's terms carried by the patches: how spatial a voxel's response is.

    The prediction is a sum of terms: one per patch, the class token's, the rest's (``rest @ w̃``) and the
    bias. The fraction is ``Σ_patches |term| / Σ_all |term|``: 1 when only patches drive the prediction,
    0 when none do. Absolute values keep it in [0, 1] and meaningful when terms cancel or ŷ is near 0,
    where a ratio to ŷ itself would explode or change sign.

    Parameters
    ----------
    tokens : array (..., T, D)
    rest : array (..., D)
    weights : array (D,) or (D, V)
    bias : float or array (V,)

    Returns
    -------
    array (...) for one voxel, (..., V) for V voxels
    """
    several_voxels = np.ndim(weights) == 2
    scores = np.abs(patch_attribution(tokens, weights))
    scores = np.moveaxis(scores, -2, -1) if several_voxels else scores
    rest_term = np.abs(patch_attribution(np.asarray(rest)[..., None, :], weights))
    rest_term = rest_term[..., 0, :] if several_voxels else rest_term[..., 0]
    patches = scores[..., 1:].sum(axis=-1)
    total = scores.sum(axis=-1) + rest_term + np.abs(np.asarray(bias, dtype=np.float32))
    return patches / np.maximum(total, np.finfo(np.float32).tiny)


def exact_map(model_or_backbone, image, weights, layers=None, heads=None, grid: bool = True) -> np.ndarray:
    """The exact attribution of one image from the heads of the chosen layers, computed on demand.

    Sums the per-(layer, head, source token) terms of `napari_mine.decompose.decompose_heads` over the
    chosen layers and heads; with all of them (the default) it equals the cached-token map.

    Parameters
    ----------
    model_or_backbone
        An open_clip CLIP model, its `.visual`, or a `Backbone`.
    image : tensor (1, 3, S, S)
        One preprocessed image.
    weights : array (D,) or (D, V)
        Effective weights of one or V voxels.
    layers : sequence of int, optional
        Layers to include (default: all).
    heads : sequence of int, optional
        Heads to include in each chosen layer (default: all).
    grid : bool
        Return the patch grid (class token dropped) instead of the per-token scores.

    Returns
    -------
    float32 array (g, g) or (g, g, V) with `grid`, else (T,) or (T, V)
    """
    from napari_mine.decompose import decompose_heads

    per_head = decompose_heads(model_or_backbone, image, layers=layers).normalized().heads
    if heads is not None:
        per_head = per_head[:, _checked_heads(heads, per_head.shape[1])]
    scores = patch_attribution(per_head.sum(axis=(0, 1)), weights)
    return to_patch_grid(scores, axis=0) if grid else scores


def _checked_heads(heads, n_heads: int) -> np.ndarray:
    heads = np.atleast_1d(np.asarray(heads))
    if heads.size == 0 or not np.issubdtype(heads.dtype, np.integer) or heads.min() < 0 or heads.max() >= n_heads:
        raise MineInputError(f"heads {heads.tolist()} are not valid head indices; choose heads from 0 to "
                             f"{n_heads - 1}.")
    return heads


# ---- baselines that run the model (not exact) -------------------------------------------------------------


def gradient_x_input(model_or_backbone, image, weights) -> np.ndarray:
    """Gradient × input on the patch embeddings, summed over channels: a first-order (g, g) map.

    The bias b̃ adds a constant to the response, so it changes no gradient and is not needed here.

    Parameters
    ----------
    model_or_backbone
        An open_clip CLIP model, its `.visual`, or a `Backbone`.
    image : tensor (1, 3, S, S)
        One preprocessed image.
    weights : array (D,)
        Effective weights of one voxel.

    Returns
    -------
    float32 array (g, g)
    """
    visual, pixels, voxel = _model_inputs(model_or_backbone, image, weights)
    embedding, gradients = _patch_embedding_gradients(visual, pixels, voxel, np.ones(1))
    return _channel_sum(embedding * gradients[0])


def integrated_gradients(model_or_backbone, image, weights, n_steps: int = 32, batch_size: int = 16) -> np.ndarray:
    """Integrated gradients on the patch embeddings from a zero baseline, summed over channels.

    The patch embedding is linear in the pixels without bias, so the zero baseline is the all-zero
    preprocessed image (the normalisation's mean colour). Midpoint Riemann sum over `n_steps`; the map
    sums to about ``response(image) − response(zeros)`` (completeness).

    Parameters
    ----------
    model_or_backbone
        An open_clip CLIP model, its `.visual`, or a `Backbone`.
    image : tensor (1, 3, S, S)
    weights : array (D,)
    n_steps : int
        Points on the path from the baseline to the image.
    batch_size : int
        Path points per forward pass (bounds memory).

    Returns
    -------
    float32 array (g, g)
    """
    if int(n_steps) < 1:
        raise MineInputError(f"n_steps={n_steps} leaves no path to integrate; use at least 1 step.")
    visual, pixels, voxel = _model_inputs(model_or_backbone, image, weights)
    scales = (np.arange(int(n_steps)) + 0.5) / int(n_steps)
    batch_size = max(1, int(batch_size))
    total = None
    for start in range(0, len(scales), batch_size):
        embedding, gradients = _patch_embedding_gradients(visual, pixels, voxel, scales[start:start + batch_size])
        part = gradients.sum(0)
        total = part if total is None else total + part
    return _channel_sum(embedding * total / len(scales))


def occlusion(model_or_backbone, image, weights, fill: str = "grey", batch_size: int = 64) -> np.ndarray:
    """Drop in the voxel's response when each patch is replaced by `fill`: ``ŷ(x) − ŷ(x without patch)``.

    Parameters
    ----------
    model_or_backbone
        An open_clip CLIP model, its `.visual`, or a `Backbone`.
    image : tensor (1, 3, S, S)
    weights : array (D,)
    fill : {"grey", "blur"}
        Mid-grey pixels, or the image blurred over about a patch (keeps colour and layout, removes detail).
    batch_size : int
        Occluded images per forward pass.

    Returns
    -------
    float32 array (g, g)
    """
    visual, pixels, voxel = _model_inputs(model_or_backbone, image, weights)
    rows, cols = visual.grid_size
    cells = np.eye(rows * cols, dtype=bool).reshape(-1, rows, cols)
    occluded = _replace_cells(visual, pixels, _fill_image(visual, pixels, fill), cells)
    responses = _voxel_responses(visual, occluded, voxel, batch_size)
    original = _voxel_responses(visual, pixels, voxel, batch_size)[0]
    return (original - responses).reshape(rows, cols).astype(np.float32)


def attribution_maps(model_or_backbone, images, weights, methods=METHODS, n_steps: int = 32,
                     fill: str = "grey") -> dict[str, np.ndarray]:
    """Maps of every chosen method for every (image, voxel) pair, ready for `faithfulness`.

    "exact" takes one token pass over the batch (`decompose_images`), the same map as `exact_map` with all
    layers and heads. "exact_contrast" subtracts the exact map of the image's `fill` (mid-grey, or the image
    blurred): each token's score then counts only what the image's content changes (not the token's
    position embedding, which no deletion removes), and the scores still sum exactly, to
    ``ŷ(image) − ŷ(fill)`` with the class and rest terms.
    The baselines run once per (image, voxel).

    Parameters
    ----------
    model_or_backbone
        An open_clip CLIP model, its `.visual`, or a `Backbone`.
    images : tensor (B, 3, S, S)
    weights : array (D,) or (D, V)
    methods : sequence of str
        Any of "exact", "exact_contrast", "gradient_x_input", "integrated_gradients", "occlusion".
    n_steps : int
        Integrated-gradients steps.
    fill : {"grey", "blur"}
        What occlusion puts in a patch, and the reference of "exact_contrast".

    Returns
    -------
    dict method -> float32 array (B, g, g) for one voxel, (B, V, g, g) for V voxels
    """
    unknown = [method for method in methods if method not in METHODS]
    if unknown:
        raise MineInputError(f"unknown attribution methods {unknown}; choose from {', '.join(METHODS)}.")
    weights = np.asarray(weights, dtype=np.float32)
    columns = weights.reshape(weights.shape[0], -1)
    baselines = {
        "gradient_x_input": lambda image, w: gradient_x_input(model_or_backbone, image, w),
        "integrated_gradients": lambda image, w: integrated_gradients(model_or_backbone, image, w, n_steps),
        "occlusion": lambda image, w: occlusion(model_or_backbone, image, w, fill),
    }
    maps = {}
    for method in methods:
        if method in ("exact", "exact_contrast"):
            values = _exact_maps(model_or_backbone, images, columns, fill if method == "exact_contrast" else None)
        else:
            values = np.stack([np.stack([baselines[method](images[index:index + 1], w) for w in columns.T])
                               for index in range(len(images))])
        maps[method] = values[:, 0] if weights.ndim == 1 else values
    return maps


def _exact_maps(model_or_backbone, images, columns, contrast_fill: str | None) -> np.ndarray:
    """Exact maps (B, V, g, g) of a batch from one token pass, optionally minus those of each image's fill."""
    import torch

    from napari_mine.decompose import decompose_images, vision_tower

    tokens = decompose_images(model_or_backbone, images).normalized().tokens
    if contrast_fill is not None:
        visual = vision_tower(model_or_backbone)
        fills = torch.cat([_fill_image(visual, images[index:index + 1], contrast_fill)
                           for index in range(len(images))])
        tokens = tokens - decompose_images(model_or_backbone, fills).normalized().tokens
    return np.moveaxis(to_patch_grid(patch_attribution(tokens, columns), axis=-2), -1, 1)


def _model_inputs(model_or_backbone, image, weights):
    """The vision tower, the image on its device and the voxel's weights as a tensor (D, 1)."""
    import torch

    from napari_mine.decompose import vision_tower

    visual = vision_tower(model_or_backbone)
    parameter = next(visual.parameters())
    size = tuple(visual.image_size) if isinstance(visual.image_size, (tuple, list)) else (visual.image_size,) * 2
    if not isinstance(image, torch.Tensor) or tuple(image.shape) != (1, 3) + size:
        shape = tuple(image.shape) if hasattr(image, "shape") else type(image).__name__
        raise MineInputError(f"expected one preprocessed image tensor of shape (1, 3, {size[0]}, {size[1]}), got "
                             f"{shape}; preprocess it with the backbone and keep the batch axis (image[None]).")
    weights = np.asarray(weights, dtype=np.float32)
    if weights.shape != (visual.output_dim,):
        raise MineInputError(f"weights of shape {weights.shape} are not one voxel's effective weights; pass a "
                             f"vector of the model's {visual.output_dim} embedding dimensions.")
    pixels = image.to(device=parameter.device, dtype=parameter.dtype)
    return visual, pixels, torch.tensor(weights, device=parameter.device, dtype=parameter.dtype)[:, None]


def _voxel_response(visual, pixels, voxel):
    """ŷ − b̃ for a batch: the L2-normalised embedding projected on the voxel's weights (B, columns)."""
    embedding = visual(pixels)
    embedding = embedding[0] if isinstance(embedding, tuple) else embedding
    return (embedding / embedding.norm(dim=-1, keepdim=True)) @ voxel


def _voxel_responses(visual, pixels, voxel, batch_size: int) -> np.ndarray:
    import torch

    with torch.no_grad():
        parts = [_voxel_response(visual, pixels[start:start + batch_size], voxel)
                 for start in range(0, len(pixels), max(1, int(batch_size)))]
    return torch.cat(parts).double().cpu().numpy()[:, 0]


def _patch_embedding_gradients(visual, pixels, voxel, scales):
    """The image's patch embedding (W, g, g) and the response's gradient at each scaled copy (n, W, g, g)."""
    import torch

    with torch.no_grad():
        embedding = visual.conv1(pixels)
    factors = torch.as_tensor(np.asarray(scales), dtype=embedding.dtype, device=embedding.device)
    scaled = (factors.view(-1, 1, 1, 1) * embedding).requires_grad_(True)
    handle = visual.conv1.register_forward_hook(lambda module, inputs, output: scaled)
    try:
        response = _voxel_response(visual, pixels.expand(len(factors), -1, -1, -1), voxel)
        (gradients,) = torch.autograd.grad(response.sum(), scaled)
    finally:
        handle.remove()
    return embedding[0], gradients


def _channel_sum(values) -> np.ndarray:
    return values.sum(0).detach().double().cpu().numpy().astype(np.float32)


def _fill_image(visual, pixels, fill: str):
    """What a removed patch shows: mid-grey in the model's input space, or the image blurred over a patch."""
    import torch

    if fill == "grey":
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        config = getattr(visual, "preprocess_cfg", {})
        mean = torch.tensor(config.get("mean", OPENAI_DATASET_MEAN), dtype=pixels.dtype, device=pixels.device)
        std = torch.tensor(config.get("std", OPENAI_DATASET_STD), dtype=pixels.dtype, device=pixels.device)
        return ((0.5 - mean) / std).view(1, 3, 1, 1).expand_as(pixels)
    if fill == "blur":
        from scipy.ndimage import gaussian_filter

        sigma = visual.patch_size[0] / 2
        blurred = gaussian_filter(pixels[0].detach().cpu().double().numpy(), sigma=(0, sigma, sigma), mode="reflect")
        return torch.from_numpy(blurred[None]).to(device=pixels.device, dtype=pixels.dtype)
    raise MineInputError(f"unknown fill {fill!r}; use one of {', '.join(FILLS)}.")


def _replace_cells(visual, pixels, fill, cells: np.ndarray):
    """Copies of the image (K, 3, S, S) with the grid cells marked in `cells` (K, g, g) taken from `fill`."""
    import torch
    import torch.nn.functional as F

    patch_rows, patch_cols = visual.patch_size
    mask = torch.from_numpy(cells).to(pixels.device)
    mask = mask.repeat_interleave(patch_rows, 1).repeat_interleave(patch_cols, 2)
    mask = F.pad(mask, (0, pixels.shape[-1] - mask.shape[-1], 0, pixels.shape[-2] - mask.shape[-2]))
    return torch.where(mask[:, None], fill, pixels)


# ---- faithfulness ----------------------------------------------------------------------------------------


def deletion_insertion_curves(model_or_backbone, image, weights, bias, grid_map, fill: str = "grey",
                              n_steps: int = 16, batch_size: int = 64):
    """The voxel's predicted response as patches are removed, or inserted, in the map's order.

    Deletion starts from the image and replaces the highest-scored patches first with `fill`; insertion
    starts from the fill and puts the highest-scored patches back first. A faithful map makes the deletion
    curve fall fast and the insertion curve rise fast.

    Parameters
    ----------
    model_or_backbone
        An open_clip CLIP model, its `.visual`, or a `Backbone`.
    image : tensor (1, 3, S, S)
    weights : array (D,)
    bias : float
        The voxel's effective bias b̃ (curves are predicted responses).
    grid_map : array (g, g)
        Any attribution map of this image and voxel.
    fill : {"grey", "blur"}
    n_steps : int
        Points after the start (patches move in groups of about g² / n_steps).
    batch_size : int
        Images per forward pass.

    Returns
    -------
    fractions : array (n,)
        Fraction of patches removed (deletion) or inserted (insertion), 0 to 1.
    deletion, insertion : float arrays (n,)
        Predicted responses.
    """
    import torch

    visual, pixels, voxel = _model_inputs(model_or_backbone, image, weights)
    rows, cols = visual.grid_size
    grid_map = np.asarray(grid_map, dtype=np.float64)
    if grid_map.shape != (rows, cols):
        raise MineInputError(f"the map has shape {grid_map.shape} but the model's patch grid is {(rows, cols)}; "
                             "pass a map of this model.")
    if int(n_steps) < 1:
        raise MineInputError(f"n_steps={n_steps} gives no curve; use at least 1 step.")
    counts = np.unique(np.round(np.linspace(0, rows * cols, int(n_steps) + 1)).astype(int))
    rank = np.empty(rows * cols, dtype=int)
    rank[np.argsort(-grid_map.ravel(), kind="stable")] = np.arange(rows * cols)
    cells = (rank[None, :] < counts[:, None]).reshape(-1, rows, cols)
    fill_image = _fill_image(visual, pixels, fill)
    deleted = _replace_cells(visual, pixels, fill_image, cells)
    inserted = _replace_cells(visual, fill_image.expand_as(pixels), pixels, cells)
    responses = _voxel_responses(visual, torch.cat([deleted, inserted]), voxel, batch_size) + float(bias)
    return counts / (rows * cols), responses[: len(counts)], responses[len(counts):]


def faithfulness(model_or_backbone, images, weights, bias, maps: dict, fill: str = "grey",
                 n_steps: int = 16) -> dict[str, dict]:
    """Deletion and insertion AUC of each method's maps over the same images and voxels.

    For each (image, voxel) the curves of all methods are scaled together to [0, 1] (by their common
    minimum and maximum), so the methods are compared on one scale; the AUC is the area under the scaled
    curve over the fraction of patches (0 to 1). Deletion AUC: lower is better; insertion AUC: higher is
    better. Pairs whose response never changes score 0 for every method.

    Parameters
    ----------
    model_or_backbone
        An open_clip CLIP model, its `.visual`, or a `Backbone`.
    images : tensor (B, 3, S, S)
    weights : array (D,) or (D, V)
    bias : float or array (V,)
    maps : dict method -> array (B, g, g) for one voxel, (B, V, g, g) for V voxels
        E.g. from `attribution_maps`.
    fill : {"grey", "blur"}
    n_steps : int

    Returns
    -------
    dict method -> {"deletion_auc", "insertion_auc": mean over pairs;
                    "deletion_curve", "insertion_curve": mean scaled curves; "fractions"}
    """
    weights = np.asarray(weights, dtype=np.float32)
    columns = weights.reshape(weights.shape[0], -1)
    biases = np.broadcast_to(np.asarray(bias, dtype=np.float64).reshape(-1), (columns.shape[1],))
    per_pair = {name: _pair_maps(values, len(images), weights.ndim == 2, columns.shape[1], name)
                for name, values in maps.items()}
    scaled = {name: [] for name in maps}
    for index in range(len(images)):
        for voxel in range(columns.shape[1]):
            curves = {name: deletion_insertion_curves(model_or_backbone, images[index:index + 1], columns[:, voxel],
                                                      biases[voxel], values[index, voxel], fill, n_steps)
                      for name, values in per_pair.items()}
            low = min(min(c[1].min(), c[2].min()) for c in curves.values())
            high = max(max(c[1].max(), c[2].max()) for c in curves.values())
            span = max(high - low, np.finfo(np.float64).tiny)
            for name, (fractions, deletion, insertion) in curves.items():
                scaled[name].append((fractions, (deletion - low) / span, (insertion - low) / span))
    return {name: _auc_summary(pairs) for name, pairs in scaled.items()}


def _pair_maps(values, n_images: int, several_voxels: bool, n_voxels: int, name: str) -> np.ndarray:
    """A method's maps as (B, V, g, g), checked against the images and voxels."""
    values = np.asarray(values, dtype=np.float64)
    if not several_voxels and values.ndim == 3:
        values = values[:, None]
    if values.ndim != 4 or values.shape[:2] != (n_images, n_voxels):
        raise MineInputError(f"the {name!r} maps have shape {np.shape(values)}; pass one (g, g) map per image "
                             f"and voxel: ({n_images}, g, g) for one voxel or ({n_images}, {n_voxels}, g, g).")
    return values


def _auc_summary(pairs) -> dict:
    fractions = pairs[0][0]
    deletion = np.mean([pair[1] for pair in pairs], axis=0)
    insertion = np.mean([pair[2] for pair in pairs], axis=0)
    return {
        "deletion_auc": float(np.trapezoid(deletion, fractions)),
        "insertion_auc": float(np.trapezoid(insertion, fractions)),
        "deletion_curve": deletion,
        "insertion_curve": insertion,
        "fractions": fractions,
    }
