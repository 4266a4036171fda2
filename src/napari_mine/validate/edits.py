"""Counterfactual edits of many pairs: where to edit, the edits themselves, and what they did to the voxel.

An edit goes where the voxel's exact attribution map is highest, cut to one connected part (one edit should
change one feature). Each pair is edited on its own with its own seed, so a pair's edit does not depend on
the batch, and the viewer's editor reproduces validation's edit of a pair exactly. A pair the generator
refuses (a mask over no object) is skipped and counted, not fatal; an edit of another size than its
subject is a broken generator and is.
"""

from __future__ import annotations

import numpy as np

from napari_mine.errors import MineInputError
from napari_mine.validate.stats import edit_summary


def attribution_masks(bench, maps, fraction, dilate_px, feather_px) -> np.ndarray:
    """Edit masks from attribution maps, each cut to the connected part that holds the map's peak.

    The top pixels of a map often fall on two objects; one edit should change one feature (and an
    insertion fitted to two blobs would be as large as both together).
    """
    from scipy.ndimage import label

    from napari_mine.attribution import upsample
    from napari_mine.generate import attribution_mask

    masks = []
    for grid in maps:
        mask = attribution_mask(grid, bench.generator.image_size, top_fraction=fraction, dilate_px=dilate_px,
                                feather_px=feather_px)
        parts, _ = label(mask > 0)
        peak = np.unravel_index(np.argmax(np.where(mask > 0, upsample(grid, mask.shape), -np.inf)), mask.shape)
        masks.append(np.where(parts == parts[peak], mask, 0.0).astype(np.float32))
    return np.stack(masks)


def edit_each(bench, action: str, subjects, masks, concepts, seed: int) -> dict:
    """Edit each subject (an Edit) on its own, seeded by position; a pair the generator refuses is skipped.

    Returns
    -------
    dict with "edits" (the Edits made), "images" (their images), "scenes" (their scenes, None when the
    generator's edits have none), "kept" (the pairs edited) and "reasons" (why the others were not).
    """
    from napari_mine.generate.base import image_seeds

    seeds = image_seeds(seed, len(subjects))
    edits, kept, reasons = [], [], []
    for i, subject in enumerate(subjects):
        concept = None if concepts is None else concepts[i]
        if concept == "":
            reasons.append("the description is empty (no patch has positive attribution).")
            continue
        try:
            if action == "remove":
                edit = bench.generator.remove([subject], masks[i][None], seed=seeds[i])[0]
            else:
                edit = bench.generator.insert([subject], masks[i][None], [concept], seed=seeds[i])[0]
        except MineInputError as error:
            reasons.append(str(error))
            continue
        if np.shape(edit.image) != np.shape(subject.image):
            raise MineInputError(f"{type(bench.generator).__name__} returned an edit of shape {np.shape(edit.image)} "
                                 f"for an image of shape {np.shape(subject.image)}; a generator's edits must keep "
                                 "the size.")
        edits.append(edit)
        kept.append(i)
    scenes = [edit.scene for edit in edits]
    return {"edits": edits, "images": np.asarray([edit.image for edit in edits], np.uint8),
            "scenes": scenes if all(scene is not None for scene in scenes) else None,
            "kept": np.asarray(kept, int), "reasons": reasons}


def edit_result(bench, kind: str, record: dict, pairs: dict, masks, edits: dict) -> dict:
    """Responses and deltas of an edit experiment, on the pairs edited (summarised by :func:`edit_summaries`)."""
    kept = edits["kept"]
    result = {key: (value[kept] if isinstance(value, np.ndarray) and len(value) == len(pairs["row"])
                    else [value[i] for i in kept] if isinstance(value, list) else value)
              for key, value in record.items()}
    result.update(kind=kind, masks=np.asarray(masks)[kept], n_skipped=int(len(pairs["row"]) - len(kept)),
                  skip_reason=edits["reasons"][0] if edits["reasons"] else None)
    voxels = result["voxel"]
    edited = {"images": edits["images"], "scenes": edits["scenes"], "predicted": None, "true": None}
    if len(kept):
        edited["predicted"] = bench.predict(edits["images"], voxels) - result["predicted_original"]
        if bench.truth is not None:
            edited["true"] = bench.true(edits["edits"], voxels) - result["true_original"]
    result["conditions"] = {"edited": edited}
    return result


def edit_summaries(result: dict, n_boot: int, seed: int) -> dict:
    """Sign accuracy and mean Δ of an edit result, for the encoder and (with a truth) the true brain: removal
    counts Δ < 0, insertion Δ > 0."""
    sign = -1 if result["kind"] == "removal" else 1
    kinds = ("predicted", "true") if result["true_original"] is not None else ("predicted",)
    edited = result["conditions"]["edited"]
    return {name: edit_summary(edited[name], result["voxel"], sign, n_boot, seed) for name in kinds}


def removed_category(before, after) -> str:
    """The category of the object a scene edit took out ("" when none went)."""
    gone = [obj for obj in before.objects if obj not in after.objects]
    return gone[0].category if gone else ""


def driving_object_hit(bench, originals, edited, voxels) -> float:
    """Fraction of removals that took out the object whose own drive of the voxel is the largest (truth)."""
    from napari_mine.synthetic.brain import object_drives

    drives = object_drives(bench.truth.brain, originals)[np.arange(len(voxels)), :, bench.truth_voxels[voxels]]
    hits = [before.objects[int(np.argmax(drive[:len(before.objects)]))] not in after.objects
            for before, after, drive in zip(originals, edited, drives)]
    return float(np.mean(hits))
