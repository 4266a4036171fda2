"""Per-attribute accuracy of per-image descriptions against a synthetic world's truth.

A description of the synthetic vocabulary is a caption-style phrase ("large red face on the left"); each of
its words should name the object that truly drives the voxel on that image (the arg-max of the true brain's
per-object drives, as ``synthetic.scoring`` defines it). On the validation's pairs (``validate.sample_pairs``:
well-predicted category voxels × their top images, seeded) the script reports, per attribute, how often the
description's word is the driving object's (a word left out counts as wrong) — the words sufficiency's
generated images are drawn from.

Run on a demo store: `.venv/bin/napari-mine demo --out /tmp/demo_colour`, then
`.venv/bin/python benchmarks/bench_description_attributes.py /tmp/demo_colour [--voxels 128] [--images 2]
[--seed 0]`.
"""

from __future__ import annotations

import argparse
import re

import numpy as np

from napari_mine.describe import describe_image
from napari_mine.models.backbone import load_backbone
from napari_mine.results import Results
from napari_mine.synthetic import scenes as S
from napari_mine.synthetic.scoring import driving_objects
from napari_mine.synthetic.write_nsd import load_truth
from napari_mine.validate import sample_pairs, truth_voxels
from napari_mine.vocabulary import concept_space, synthetic_vocabulary

ATTRIBUTES = ("category", "color", "size", "position")


def true_words(obj: S.SceneObject) -> dict[str, str]:
    """The caption's word for each attribute of one object."""
    return {"category": obj.category, "color": obj.color, "size": S.size_word(obj.size),
            "position": S.position_phrase(obj.x)}


def said_words(text: str, vocabulary) -> dict[str, str]:
    """The vocabulary concept of each attribute group that a description's text names ("" if none)."""
    said = {}
    for group in ATTRIBUTES:
        members = [c for c, g in zip(vocabulary.concepts, vocabulary.groups) if g == group]
        said[group] = next((c for c in members if re.search(rf"\b{re.escape(c)}\b", text)), "")
    return said


def attribute_accuracy(results, truth, space, pairs) -> tuple[dict[str, float], list[tuple[str, str]]]:
    """Fraction of pairs whose description names the driving object's attribute, and (said, true) texts."""
    weights = results.weights()[0]
    image_ids = results.image_ids
    scenes = [truth.scenes[image_ids[row]] for row in pairs["row"]]
    drivers = driving_objects(truth.brain, scenes, truth_voxels(results, truth)[pairs["voxel"]])
    hits = {group: [] for group in ATTRIBUTES}
    texts = []
    for row, voxel, scene, driver in zip(pairs["row"], pairs["voxel"], scenes, drivers):
        text = describe_image(results.tokens([int(row)])[0], weights[:, voxel], space).text
        said, true = said_words(text, space.vocabulary), true_words(scene.objects[driver])
        for group in ATTRIBUTES:
            hits[group].append(said[group] == true[group])
        texts.append((text, S.object_phrase(scene.objects[driver])))
    return {group: float(np.mean(values)) for group, values in hits.items()}, texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", help="a demo results folder (with world/ inside)")
    parser.add_argument("--voxels", type=int, default=128)
    parser.add_argument("--images", type=int, default=2, help="top images per voxel")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show", type=int, default=0, help="print this many (description, truth) pairs")
    args = parser.parse_args()

    results = Results.open(args.store)
    truth = load_truth(results.root / "world")
    space = concept_space(synthetic_vocabulary(), load_backbone("mine-small"))
    pairs = sample_pairs(results, n_voxels=args.voxels, images_per_voxel=args.images, seed=args.seed)
    accuracy, texts = attribute_accuracy(results, truth, space, pairs)
    print(f"{len(pairs['row'])} pairs ({args.voxels} voxels × {args.images} top images, seed {args.seed})")
    for group in ATTRIBUTES:
        print(f"  {group:9s} {accuracy[group]:.3f}")
    for said, true in texts[:args.show]:
        print(f"  said {said!r:45s} truth {true!r}")


if __name__ == "__main__":
    main()
