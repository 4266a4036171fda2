"""What every experiment reads, gathered once: the :class:`Workbench` over one results folder.

A validation run asks the same things again and again — the encoder's W̃ and b̃, the stored features, the
token contributions of a pair's image, the originals as the generator sees them, the true brain's response —
so they are read and checked once per run (:func:`open_workbench`), through the one read path
(:class:`~napari_mine.results.Results`), and handed to each experiment. The generator is driven through its
interface alone: originals and edits are :class:`~napari_mine.generate.base.Edit` subjects, and the true
brain answers for ``edit.scene``, so nothing here asks which backend it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_mine.errors import MineInputError

WORLD_CHECK_ROWS = 16  # rows whose scenes must agree between the generator and the truth


@dataclass
class Workbench:
    """The results' encoder and features, the backbone, the generator, the images and the truth.

    Built by :func:`open_workbench`; originals are the images as the generator sees them (a synthetic scene
    rendered at the generator's size, or a dataset image resized to it), so edits and their originals are
    encoded the same way.
    """

    results: object  # napari_mine.results.Results
    backbone: object
    generator: object
    truth: object | None
    images: object | None  # row → image, for pixel generators
    weights: np.ndarray  # W̃ (D, V)
    bias: np.ndarray  # b̃ (V,)
    features: np.ndarray  # (N, D)
    image_ids: np.ndarray  # (N,) stimulus ids of the rows
    truth_voxels: np.ndarray | None = None  # (V,) index of each results voxel among the truth's voxels
    true_levels: np.ndarray | None = None  # each truth voxel's mean true response (experiments.voxel_levels)

    def predicted(self, rows, voxels) -> np.ndarray:
        """The encoder's prediction from the stored features, one value per (row, voxel) pair."""
        return np.einsum("nd,dn->n", self.features[rows], self.weights[:, voxels]) + self.bias[voxels]

    def predict(self, images: np.ndarray, voxels) -> np.ndarray:
        """The encoder's prediction for new images, ``normalise(encode_image(x)) @ w̃ + b̃`` per pair."""
        embeddings = self.backbone.encode_image(images).float().cpu().numpy()
        return np.einsum("nd,dn->n", embeddings, self.weights[:, voxels]) + self.bias[voxels]

    def true(self, edits, voxels) -> np.ndarray | None:
        """The true brain's response to each edit's scene for its pair's voxel (None without a truth)."""
        if self.truth is None:
            return None
        scenes = [edit.scene for edit in edits]
        if any(scene is None for scene in scenes):
            raise MineInputError("The true brain responds to scenes, and these edits have none; validate with "
                                 "the synthetic world's generator (validate.world_validation) to use its truth.")
        return self.truth.true_response(scenes)[np.arange(len(voxels)), self.truth_voxels[voxels]]

    def true_scenes(self, rows) -> list:
        """The world's scenes of rows, straight from the truth (no rendering; needs a truth)."""
        return [self.truth.scenes[int(self.image_ids[row])] for row in rows]

    def tokens(self, rows) -> np.ndarray:
        """Token contributions (P, T, D) of rows."""
        return self.results.tokens(rows)

    def originals(self, rows) -> list:
        """The images of rows as the generator edits them (:meth:`Generator.originals`), one Edit per row."""
        rows = [int(row) for row in rows]
        images = None if self.images is None else (self.images[row] for row in rows)  # read only if asked
        return self.generator.originals(self.image_ids[rows], images)


def open_workbench(results, generator, truth=None, images=None, backbone=None) -> Workbench:
    """Check the inputs fit together and read what the experiments share.

    Parameters
    ----------
    results : napari_mine.results.Results
        With the "features" and "encoder" steps.
    generator : generate.Generator
        The results' synthetic world's :class:`~napari_mine.generate.ProceduralGenerator`
        (:func:`world_validation`), or a pixel generator (then ``images`` is needed).
    truth : WorldTruth, optional
        The synthetic world's ground truth; needs a generator whose subjects carry their scene.
    images : indexable, optional
        Row → image (e.g. ``results.images``), for pixel generators.
    backbone : models.backbone.Backbone, optional
        The image model the results were computed with; by default ``results.backbone()``.

    Returns
    -------
    Workbench
    """
    from napari_mine.generate.base import checked_generator

    if not results.has("encoder"):
        raise MineInputError(f"{results.root} has no fitted encoder; run `napari-mine fit` before validating.")
    results.require("features", "run `napari-mine features` first.")
    generator = checked_generator(generator)
    backbone = results.backbone() if backbone is None else backbone
    results.check_model(backbone.record["id"])
    weights, bias = results.weights()
    bench = Workbench(results, backbone, generator, truth, images, weights, bias, results.features(), results.image_ids)
    last = int(np.argmax(bench.image_ids))
    probe = bench.originals([last])[0]  # the generator can make originals of every row (ids, or images given)
    if truth is not None:
        if probe.scene is None:
            raise MineInputError("True responses need the synthetic world's scenes; validate with the world's "
                                 "generator and truth, validate.world_validation(results), when passing a truth.")
        bench.truth_voxels = truth_voxels(results, truth)
        rows = np.unique(np.r_[np.arange(min(WORLD_CHECK_ROWS, len(bench.image_ids))), last])
        if bench.image_ids[last] >= len(truth.scenes) or \
                [edit.scene for edit in bench.originals(rows)] != bench.true_scenes(rows):
            raise MineInputError("The generator and the truth come from different worlds; load both from the "
                                 "same write_world folder.")
    return bench


def truth_voxels(results, truth) -> np.ndarray:
    """Index of each results voxel among the truth's voxels (both in ``np.flatnonzero(mask)`` order).

    The results' mask is the dataset's (nsdgeneral, possibly with voxels dropped); the truth's is the world's
    nsdgeneral. They must share the grid, and every results voxel must be a voxel of the world.
    """
    mask = results.space.mask
    world = np.asarray(truth.brain.mask, bool)
    if mask.shape != world.shape:
        raise MineInputError(f"The results' brain grid {mask.shape} is not the world's {world.shape}; validate "
                             "with the truth of the world the results were computed from.")
    lookup = np.full(world.size, -1)
    lookup[np.flatnonzero(world)] = np.arange(int(world.sum()))
    index = lookup[np.flatnonzero(mask)]
    if (index < 0).any():
        raise MineInputError(f"{int((index < 0).sum())} of the results' voxels lie outside the world's nsdgeneral "
                             "mask; validate with the truth of the world the results were computed from.")
    return index


def world_validation(results, size: int | None = None):
    """The synthetic world's generator and truth for results computed from it: validation with a known brain.

    Parameters
    ----------
    results : napari_mine.results.Results
    size : int, optional
        Side of the rendered images; by default the world's stimulus size.

    Returns
    -------
    (ProceduralGenerator, WorldTruth)
    """
    from napari_mine.generate import ProceduralGenerator
    from napari_mine.synthetic.truth import load_truth

    root = results.manifest.world_root
    if root is None:
        raise MineInputError(f"{results.root} was not computed from the synthetic world, so the procedural "
                             "generator has no scenes to edit and there is no true brain; use a diffusers model "
                             "(--generator diffusers --model MODEL, or the editor's diffusers generator).")
    subject = int(results.manifest.source.get("subject", 1))  # a study world holds one truth per subject
    truth = load_truth(root, subject).for_space(results.space)  # on the surface: each vertex the voxel it copies
    return ProceduralGenerator.from_world(root, size, truth=truth), truth
