"""One counterfactual edit of one image for one voxel (DESIGN.md §1 step 5b): what the viewer's editor runs.

Validation scores edits over many (voxel, image) pairs; a researcher looking at one voxel on one image asks
the same question once — remove what drives the voxel here, put a concept there, or regenerate the image
from MINE's description of it — and wants to see the edit and how the voxel's predicted response, and every
other voxel's, changes. The pieces are validation's (the workbench, the attribution mask cut to the map's peak,
the per-pair seed), so a removal seen in the viewer is the removal validation scores for that pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_mine.errors import MineInputError

ACTIONS = ("remove", "insert", "regenerate")
MASK_FRACTION = {"remove": 0.1, "insert": 0.15}  # the defaults of validate.removal and validate.insertion
N_PROFILE_CONCEPTS = 8


@dataclass
class Counterfactual:
    """An edited image and the change of every voxel's predicted response it causes."""

    voxel: int
    row: int
    action: str
    text: str  # the concept inserted, or the description regenerated from ("" for a removal)
    original: np.ndarray  # uint8 (H, W, 3): the image as the generator sees it
    edited: np.ndarray  # uint8 (H, W, 3)
    mask: np.ndarray | None  # float32 (H, W): the edited region (None when regenerated)
    responses: np.ndarray  # float32 (2, V): every voxel's predicted response to the original, then the edit
    true_delta: float | None = None  # the true brain's change for the voxel (synthetic world with its truth)

    @property
    def brain_delta(self) -> np.ndarray:
        """Every voxel's change of predicted response, edit minus original (V,)."""
        return self.responses[1] - self.responses[0]

    @property
    def delta(self) -> float:
        """The voxel's change of predicted response."""
        return float(self.brain_delta[self.voxel])


def edit_for_voxel(bench, voxel: int, row: int, action: str, *, concept: str | None = None, space=None,
                   mask_fraction: float | None = None, seed: int = 0, on_progress=None,
                   should_stop=None) -> Counterfactual:
    """Edit image ``row`` for ``voxel`` and predict every voxel's response to the original and the edit.

    ``"remove"`` takes out what lies under the high-attribution region (the top ``mask_fraction`` of the
    voxel's exact map on the image, cut to its connected part around the peak); ``"insert"`` puts ``concept``
    there; ``"regenerate"`` makes a new image from MINE's description of the region alone. Responses are
    ``normalise(encode_image(x)) @ W̃ + b̃`` of the original (as the generator sees it) and of the edit.

    Parameters
    ----------
    bench : validate.Workbench
        From :func:`napari_mine.validate.open_workbench` (a truth there adds the true brain's Δ).
    voxel, row : int
        Encoder column and feature row.
    action : {"remove", "insert", "regenerate"}
    concept : str, optional
        What an insertion puts in (e.g. from :func:`profile_concepts`).
    space : vocabulary.ConceptSpace, optional
        Vocabulary of the description (regenerate); default :func:`napari_mine.validate.default_space`.
    mask_fraction : float in (0, 1), optional
        Share of the image in the edit region; default :data:`MASK_FRACTION` of the action.
    seed : int
        The batch seed; the image gets validation's seed of pair 0.
    on_progress, should_stop : callable, optional
        Passed to the generator (``should_stop`` is also checked before encoding; raises
        :class:`~napari_mine.generate.GenerationCancelled`).

    Returns
    -------
    Counterfactual
    """
    from napari_mine.attribution import patch_attribution, to_patch_grid
    from napari_mine.describe import describe_image
    from napari_mine.generate.base import image_seeds, stop_if_asked
    from napari_mine.validate import attribution_masks, checked_space

    if action not in ACTIONS:
        raise MineInputError(f"Unknown edit {action!r}; use one of {', '.join(ACTIONS)}.")
    n_rows, n_voxels = len(bench.features), bench.weights.shape[1]
    if not (0 <= voxel < n_voxels and 0 <= row < n_rows):
        raise MineInputError(f"Voxel {voxel} or image {row} is not in these results; choose a voxel in "
                             f"0..{n_voxels - 1} and an image in 0..{n_rows - 1}.")
    text = (concept or "").strip() if action == "insert" else ""
    if action == "insert" and not text:
        raise MineInputError("An insertion needs a concept; type one or pick one from the voxel's profile.")
    generator, weight = bench.generator, bench.weights[:, voxel]
    tokens = bench.tokens([row])[0]
    original = bench.originals([row])[0]  # an Edit: the image as the generator sees it (and its scene)
    progress = {"on_progress": on_progress, "should_stop": should_stop}
    mask = None
    if action == "regenerate":
        text = describe_image(tokens, weight, checked_space(bench, space)).text
        if not text:
            raise MineInputError(f"No patch of image {row} raises voxel {voxel}'s response, so there is no "
                                 "description to regenerate from; choose one of the voxel's top images.")
        edited = generator.generate([text], seed, **progress)[0]
    else:
        fraction = MASK_FRACTION[action] if mask_fraction is None else mask_fraction
        grid = to_patch_grid(patch_attribution(tokens, weight))
        mask = attribution_masks(bench, grid[None], fraction, 0, 0)[0]
        image_seed = image_seeds(seed, 1)[0]
        if action == "remove":
            edited = generator.remove([original], mask[None], seed=image_seed, **progress)[0]
        else:
            edited = generator.insert([original], mask[None], [text], seed=image_seed, **progress)[0]
    stop_if_asked(should_stop)
    embeddings = bench.backbone.encode_image(np.stack([original.image, edited.image])).float().cpu().numpy()
    responses = (embeddings @ bench.weights + bench.bias).astype(np.float32)
    true_delta = None
    if bench.truth is not None:
        true = bench.true([original, edited], np.array([voxel, voxel]))
        true_delta = float(true[1] - true[0])
    return Counterfactual(int(voxel), int(row), action, text, original.image, np.asarray(edited.image, np.uint8),
                          mask, responses, true_delta)


def profile_concepts(scores, vocabulary, n: int = N_PROFILE_CONCEPTS) -> list[str]:
    """What an insertion can put in, from a voxel's profile scores (K,), best first.

    First the profile's phrase (what validation's profile insertion inserts), then the profile's best
    concepts; of a grouped vocabulary only the categories, since an attribute alone ("red") is nothing a
    generator can draw.
    """
    from napari_mine.describe import HEAD_GROUP, top_concepts
    from napari_mine.validate import feature_phrase

    scores = np.asarray(scores, dtype=np.float32)
    phrase = feature_phrase(scores, scores, vocabulary)
    grouped = HEAD_GROUP in vocabulary.groups
    drawable = [i for i, group in enumerate(vocabulary.groups) if not grouped or group == HEAD_GROUP]
    ranked = [concept for concept, _ in top_concepts(scores[drawable], [vocabulary.concepts[i] for i in drawable], n)]
    return [phrase] + [concept for concept in ranked if concept != phrase][:n - 1]
