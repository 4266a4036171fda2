"""Train ``mine-small``, the project's own CLIP, on the synthetic world and ship its weights.

The model must align images and text well enough that zero-shot readouts of concepts, colours, sizes and
hemifields work, because MINE reads per-token contributions out against text embeddings, and a linear voxel
encoder on its embedding must predict colour-, size- and hemifield-tuned voxels. It sees fresh scenes at
every step (rendering costs ~1.5 ms an image, so no pool is needed and nothing repeats) with captions drawn
from several phrasings of the same scene: the full caption, partial descriptions (a subset of objects and
attributes), one attribute alone, and the "a photo of ..." form the zero-shot prompts use. Identical texts in
a batch count as positives of each other, so short captions such as "a photo of a face" are not false
negatives. Half of each batch comes as mirrored or resized twins (hard negatives), and the text tower stays
frozen for the first steps: without both, left/right is never learned (see ``set_trainable``).

Training can continue from earlier weights (``--init-from``, a new ``--stage`` number so that the scenes are
fresh): the history of every stage is kept in the weights file's metadata and written into the model card.
``--concept-weight`` adds a concept term: each image against the 8 zero-shot concept prompts, with every object
of the scene a target (weighted by the square root of its visible area), so that the embedding carries every
object's category, not only the most salient one's (a linear voxel encoder sums over a scene's objects).
``--sized-concept-weight`` adds the same term against the 16 sized prompts ("a photo of a small face"): alone,
the concept term pulled images towards size-free prompts and zero-shot size fell (0.70 → 0.61 in 500 steps).
``--size-weight`` scores each image against "small" and "large" (each the mean of its sized prompts over the
categories, as the zero-shot size readout ensembles them), the scene's size words its targets.
``--body-weight`` (1 = off) weights each image's concept terms by 1 + (w − 1) × the body's share of its targets:
bodies, the category the voxel encoder fitted least well, count more. ``--body-face-fraction`` (0 = off)
replaces that fraction of a batch's independent scenes by scenes of a body next to a face, captioned in full
(both named): hard negatives for the two categories the voxel profiles confused most.

Run from the repository root (progress goes to the log file, not the terminal):

    .venv/bin/python scripts/train_small_clip.py --steps 2000 --batch-size 128 --log /tmp/train_small_clip.log
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: idle threads yield on a shared CPU

import argparse
import dataclasses
import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from napari_mine.models.backbone import (SHIPPED_CONFIG, SHIPPED_NAME, SHIPPED_WEIGHTS, file_checksum,
                                         load_backbone, preprocess_images, register_shipped_config)
from napari_mine.synthetic import scenes as S

OBJECT_COUNT_PROBS = (0.35, 0.25, 0.2, 0.2)  # 1, 2, 3, 4 objects: many single objects for clean concepts
CAPTION_KINDS = ("full", "partial", "attribute")
CAPTION_KIND_PROBS = (0.35, 0.45, 0.2)
ATTRIBUTES = ("size", "color", "position")
ATTRIBUTE_KEEP_PROB = 0.5
TWIN_FRACTION = 0.5  # share of a batch's images that come as twin pairs
PHOTO_PREFIX_PROB = 0.5
MAX_LOGIT_SCALE = math.log(100.0)
GRAD_CLIP_NORM = 1.0
CONCEPT_MASK_SIZE = 32  # resolution of the visible-area estimate behind the concept term's targets
SMALL_TWIN_RANGE, LARGE_TWIN_RANGE = (S.SIZE_RANGE[0], 0.3), (0.4, S.SIZE_RANGE[1])  # clear of the size boundary
log = logging.getLogger("train_small_clip")
# How the weights shipped at commit 61d8dbd were trained (they predate the history kept in the file's metadata).
KNOWN_HISTORIES = {
    "sha256:4fa883c92b5e71b7618b5b64eba678842fbb28dde3c5788a6d8102f08fba04eb": [
        {"steps": 1200, "batch_size": 128, "lr": 0.001, "weight_decay": 0.1, "warmup_steps": 100,
         "locked_text_steps": 300, "seed": 0, "stage": 0, "concept_weight": 0.0, "init_from": None,
         "train_minutes": 18.9, "temperature": 19.6, "torch": "2.14.1+cu130"}],
}


@dataclass
class TrainSettings:
    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_steps: int
    locked_text_steps: int
    seed: int
    eval_every: int
    n_eval: int
    threads: int
    init_from: str | None = None
    stage: int = 0
    concept_weight: float = 0.0
    sized_concept_weight: float = 0.0
    size_weight: float = 0.0
    body_weight: float = 1.0
    body_face_fraction: float = 0.0


# ----------------------------------------------------------------------------------------------- data


def sample_training_scene(rng: np.random.Generator) -> S.Scene:
    """A scene of 1–4 objects, weighted towards single objects."""
    n_objects = int(rng.choice(len(OBJECT_COUNT_PROBS), p=OBJECT_COUNT_PROBS)) + 1
    return S.sample_scene(rng, n_objects=n_objects)


def partial_object_phrase(obj: S.SceneObject, rng: np.random.Generator, always: str = "") -> str:
    """The object's caption phrase with each attribute (size, colour, position) kept at random, except the
    attribute named by ``always``, which is always kept."""
    keep = {attribute: attribute == always or rng.random() < ATTRIBUTE_KEEP_PROB
            for attribute in ("size", "color", "position")}
    words = ["a", S.size_word(obj.size) if keep["size"] else "", obj.color if keep["color"] else "", obj.category,
             S.position_phrase(obj.x) if keep["position"] else ""]
    return " ".join(word for word in words if word)


def attribute_caption(scene: S.Scene, rng: np.random.Generator, attribute: str = "") -> str:
    """"something red" / "something large" / "something on the left", true of one random object.

    Many images of a batch share such a caption, so its row of the loss sorts the whole batch by one
    attribute: a strong, consistent signal that single-pair differences cannot give. Without it the text
    tower learned to ignore "left" and "right" (cosine 0.9999 between the two prompts).
    """
    obj = scene.objects[int(rng.integers(len(scene.objects)))]
    attribute = attribute or ATTRIBUTES[int(rng.integers(len(ATTRIBUTES)))]
    words = {"size": S.size_word(obj.size), "color": obj.color, "position": S.position_phrase(obj.x)}
    return f"something {words[attribute]}"


def training_caption(scene: S.Scene, rng: np.random.Generator, always: str = "") -> str:
    """One of several true descriptions of the scene: full, some objects with some attributes, or one
    attribute alone (``always`` names an attribute that partial and attribute captions must keep)."""
    kind = CAPTION_KINDS[int(rng.choice(len(CAPTION_KINDS), p=CAPTION_KIND_PROBS))]
    if kind == "full":
        text = S.caption(scene)
    elif kind == "attribute":
        text = attribute_caption(scene, rng, always)
    else:
        n_named = int(rng.integers(1, len(scene.objects) + 1))
        named = rng.permutation(len(scene.objects))[:n_named]
        phrases = [partial_object_phrase(scene.objects[int(k)], rng, always) for k in named]
        text = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"a photo of {text}" if rng.random() < PHOTO_PREFIX_PROB else text


def mirrored(scene: S.Scene) -> S.Scene:
    """The scene with every object moved to the mirror position (left ↔ right)."""
    return dataclasses.replace(scene, objects=tuple(dataclasses.replace(obj, x=1.0 - obj.x) for obj in scene.objects))


def resized(scene: S.Scene, rng: np.random.Generator) -> S.Scene:
    """The scene with every object's size word flipped (small ↔ large), positions kept."""
    def flipped(obj):
        large = S.size_word(obj.size) == "large"
        return dataclasses.replace(obj, size=float(rng.uniform(*(SMALL_TWIN_RANGE if large else LARGE_TWIN_RANGE))))
    return dataclasses.replace(scene, objects=tuple(flipped(obj) for obj in scene.objects))


SIZE_WORDS = ("small", "large")


def concept_prompts() -> tuple[list[str], list[str]]:
    """The concept term's prompts: the 8 zero-shot concept prompts, and the 16 sized ones
    ("a photo of a small face", ..., category-major) that the zero-shot size readout ensembles."""
    plain = [S.CONCEPT_PROMPTS[c] for c in S.CATEGORIES]
    sized = [f"a photo of a {s} {c}" for c in S.CATEGORIES for s in SIZE_WORDS]
    return plain, sized


def concept_targets(scenes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Target distributions of the concept term over the plain (B, 8) and sized (B, 16) prompts and of the
    size term over the two size words (B, 2): every object of a scene, weighted by the square root of its
    visible area (so small or occluded objects still count, the largest counts most)."""
    plain = np.zeros((len(scenes), len(S.CATEGORIES)), np.float32)
    sized = np.zeros((len(scenes), len(S.CATEGORIES) * len(SIZE_WORDS)), np.float32)
    size = np.zeros((len(scenes), len(SIZE_WORDS)), np.float32)
    for i, scene in enumerate(scenes):
        areas = S.object_masks(scene, CONCEPT_MASK_SIZE).sum(axis=(1, 2)).astype(np.float32)
        weights = np.sqrt(np.maximum(areas, 1.0))
        for obj, weight in zip(scene.objects, weights):
            category = S.CATEGORIES.index(obj.category)
            plain[i, category] += weight
            sized[i, category * len(SIZE_WORDS) + SIZE_WORDS.index(S.size_word(obj.size))] += weight
            size[i, SIZE_WORDS.index(S.size_word(obj.size))] += weight
    return tuple(torch.from_numpy(t / t.sum(1, keepdims=True)) for t in (plain, sized, size))


def training_batch(rng: np.random.Generator, batch_size: int, preprocess_cfg: dict, tokenizer,
                   with_concepts: bool = False, body_face_fraction: float = 0.0):
    """Fresh scenes → (preprocessed images (B,3,S,S), tokens (B,L), caption group ids (B,), concept targets
    (plain, sized; see ``concept_targets``) or None).

    Part of the batch comes in twin pairs that differ only in hemifield (mirrored) or size, captioned with
    the same random phrasing that always keeps the changed attribute: hard negatives that only position or
    size words tell apart. Without twins the contrastive loss is met by category and colour alone; with twins
    whose captions may drop the changed attribute, identical captions make the pair positives and teach the
    model to ignore position and size. The rest are independent scenes, for variety of content.
    """
    scenes, texts = [], []
    n_pairs = int(batch_size * TWIN_FRACTION) // 2
    for pair in range(n_pairs):
        scene = sample_training_scene(rng)
        twin, changed = (mirrored(scene), "position") if pair % 2 == 0 else (resized(scene, rng), "size")
        phrasing_seed = int(rng.integers(2**32))
        scenes += [scene, twin]
        texts += [training_caption(member, np.random.default_rng(phrasing_seed), always=changed)
                  for member in (scene, twin)]
    n_single = batch_size - 2 * n_pairs
    n_body_face = int(round(n_single * body_face_fraction))
    for _ in range(n_single - n_body_face):
        scene = sample_training_scene(rng)
        scenes.append(scene)
        texts.append(training_caption(scene, rng))
    for _ in range(n_body_face):  # a body next to a face, both named: hard negatives for the two
        scene = S.sample_scene(rng, n_objects=2, categories=("body", "face"))
        scenes.append(scene)
        texts.append(f"a photo of {S.caption(scene)}" if rng.random() < PHOTO_PREFIX_PROB else S.caption(scene))
    images = preprocess_images(S.render_scenes(scenes), preprocess_cfg["size"], preprocess_cfg)
    _, groups = np.unique(texts, return_inverse=True)
    return images, tokenizer(texts), torch.from_numpy(groups), concept_targets(scenes) if with_concepts else None


# ----------------------------------------------------------------------------------------------- training


def contrastive_loss(image_features, text_features, logit_scale, groups) -> torch.Tensor:
    """Symmetric InfoNCE; pairs with the same caption are all positives (uniform soft targets)."""
    logits = logit_scale.exp() * F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).T
    same = (groups[:, None] == groups[None, :]).to(logits.dtype)
    targets = same / same.sum(1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def concept_loss(image_features, concept_features, logit_scale, targets, sample_weights=None) -> torch.Tensor:
    """Cross-entropy of each image against the concept prompts, with a scene's objects as soft targets: the
    zero-shot concept readout as a training signal, for every object of the scene. ``sample_weights`` (B,), if
    given, weight the images (a weighted mean)."""
    logits = logit_scale.exp() * F.normalize(image_features, dim=-1) @ F.normalize(concept_features, dim=-1).T
    if sample_weights is None:
        return F.cross_entropy(logits, targets)
    per_image = F.cross_entropy(logits, targets, reduction="none")
    return (sample_weights * per_image).sum() / sample_weights.sum()


def body_sample_weights(plain_targets: torch.Tensor, body_weight: float) -> torch.Tensor | None:
    """Per-image weights of the concept terms: 1 + (body_weight − 1) × the body's share of the image's concept
    targets (None when body_weight is 1, the plain mean)."""
    if body_weight == 1.0:
        return None
    return 1.0 + (body_weight - 1.0) * plain_targets[:, S.CATEGORIES.index("body")]


def size_loss(image_features, sized_features, logit_scale, targets) -> torch.Tensor:
    """Cross-entropy of each image against "small" and "large", each the normalised mean of its sized prompts
    over the categories (the zero-shot size readout's prompt ensemble), with the scene's size words as soft
    targets."""
    per_word = F.normalize(sized_features, dim=-1).reshape(len(S.CATEGORIES), len(SIZE_WORDS), -1).mean(0)
    logits = logit_scale.exp() * F.normalize(image_features, dim=-1) @ F.normalize(per_word, dim=-1).T
    return F.cross_entropy(logits, targets)


def parameter_groups(model, weight_decay: float) -> list[dict]:
    """Decay matrices only; gains, biases, embeddings and the temperature are left undecayed (as open_clip)."""
    def exclude(name, param):
        return param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name \
            or "embedding" in name or "class_embedding" in name
    named = list(model.named_parameters())
    return [{"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
            {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": weight_decay}]


def set_trainable(parameters: list, trainable: bool) -> None:
    """Lock or unlock parameters (AdamW skips parameters without gradients, decay included).

    The text tower starts locked: trained together from scratch it collapses "on the left" and "on the
    right" to one embedding within ~25 steps (the image tower has no position signal yet to pull them
    apart) and never recovers. Against fixed random text embeddings the image tower learns left/right
    (zero-shot 0.83 after 100 steps in a position-only test); unlocked afterwards, the text follows it.
    """
    for parameter in parameters:
        parameter.requires_grad_(trainable)


def learning_rate(step: int, settings: TrainSettings) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return 0.5 * settings.lr * (1 + math.cos(math.pi * progress))


def training_stream(settings: TrainSettings) -> np.random.Generator:
    """The scenes of a training stage: stage 0 draws from [seed, 0], a later stage from [seed, 0, stage], so a
    continued run sees fresh scenes (the evaluation sets draw from [seed, 1])."""
    return np.random.default_rng([settings.seed, 0] if settings.stage == 0 else [settings.seed, 0, settings.stage])


def train(model, tokenizer, settings: TrainSettings, eval_sets: dict) -> dict:
    """Run the training loop (evaluations go to the log); returns the wall time in minutes."""
    rng = training_stream(settings)
    plain_prompts, sized_prompts = concept_prompts()
    concept_tokens = tokenizer(plain_prompts + sized_prompts)
    optimizer = torch.optim.AdamW(parameter_groups(model, settings.weight_decay), lr=settings.lr,
                                  betas=(0.9, 0.98), eps=1e-6)
    preprocess_cfg = model.visual.preprocess_cfg | {"size": model.visual.image_size[0]}
    started = time.time()
    text_parameters = [p for n, p in model.named_parameters() if not n.startswith("visual.") and n != "logit_scale"]
    set_trainable(text_parameters, settings.locked_text_steps == 0)
    for step in range(settings.steps):
        model.train()
        if step == settings.locked_text_steps and step > 0:
            set_trainable(text_parameters, True)
            log.info("step %d: text tower unlocked", step)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, settings)
        with_concepts = settings.concept_weight > 0 or settings.sized_concept_weight > 0 or settings.size_weight > 0
        images, tokens, groups, targets = training_batch(rng, settings.batch_size, preprocess_cfg, tokenizer,
                                                         with_concepts, settings.body_face_fraction)
        if with_concepts:  # the concept prompts go through the text tower with the captions
            tokens = torch.cat([tokens, concept_tokens])
        with torch.autocast("cpu", dtype=torch.bfloat16):  # ~1.4x faster on CPUs with bf16 units
            image_features, text_features = model.encode_image(images), model.encode_text(tokens)
        image_features, text_features = image_features.float(), text_features.float()
        n_captions = len(groups)
        loss = contrastive_loss(image_features, text_features[:n_captions], model.logit_scale, groups)
        if with_concepts:
            n_plain = len(plain_prompts)
            plain_features, sized_features = text_features[n_captions:n_captions + n_plain], \
                text_features[n_captions + n_plain:]
            sample_weights = body_sample_weights(targets[0], settings.body_weight)
            loss = loss + settings.concept_weight * concept_loss(image_features, plain_features,
                                                                 model.logit_scale, targets[0], sample_weights) \
                + settings.sized_concept_weight * concept_loss(image_features, sized_features,
                                                               model.logit_scale, targets[1], sample_weights) \
                + settings.size_weight * size_loss(image_features, sized_features, model.logit_scale, targets[2])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP_NORM)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        if step % 20 == 0 or step == settings.steps - 1:
            log.info("step %d/%d loss %.4f temperature %.1f lr %.2e elapsed %.1f min", step, settings.steps,
                     loss.item(), model.logit_scale.exp().item(), learning_rate(step, settings),
                     (time.time() - started) / 60)
        if (step + 1) % settings.eval_every == 0 or step == settings.steps - 1:
            scores = readout_scores(model, tokenizer, eval_sets, preprocess_cfg)
            log.info("eval step %d: %s", step + 1, json.dumps(scores))
    return (time.time() - started) / 60


# ----------------------------------------------------------------------------------------------- evaluation


def evaluation_sets(seed: int, n_eval: int) -> dict:
    """Held-out renders (their own random stream): single-object scenes and multi-object scenes."""
    rng = np.random.default_rng([seed, 1])
    singles = [S.sample_scene(rng, n_objects=1) for _ in range(n_eval)]
    multis = [S.sample_scene(rng, n_objects=int(rng.integers(2, 5))) for _ in range(n_eval)]
    return {"single": (singles, S.render_scenes(singles)), "multi": (multis, S.render_scenes(multis))}


def largest_visible_object(scene: S.Scene) -> S.SceneObject:
    """The object with the most visible pixels after occlusion."""
    return scene.objects[int(np.argmax(S.object_masks(scene).sum(axis=(1, 2))))]


def prompt_ensemble(model, tokenizer, prompts_per_class: list[list[str]]) -> torch.Tensor:
    """One normalised text embedding per class: the mean of its prompts' normalised embeddings."""
    embeddings = []
    for prompts in prompts_per_class:
        features = F.normalize(model.encode_text(tokenizer(prompts)), dim=-1).mean(0)
        embeddings.append(F.normalize(features, dim=0))
    return torch.stack(embeddings)


def zero_shot_accuracy(image_features, class_embeddings, labels) -> float:
    """Fraction of images whose most similar class embedding is the true label."""
    predicted = (image_features @ class_embeddings.T).argmax(1).numpy()
    return float(np.mean(predicted == np.asarray(labels)))


def linear_probe_accuracy(features: torch.Tensor, labels) -> float:
    """5-fold cross-validated accuracy of a logistic regression on the embeddings: is the attribute linearly
    decodable, as a linear voxel encoder needs it to be?"""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return float(cross_val_score(probe, features.numpy(), np.asarray(labels), cv=5).mean())


@torch.no_grad()
def readout_scores(model, tokenizer, eval_sets: dict, preprocess_cfg: dict) -> dict:
    """Zero-shot accuracies (concept of single objects and of the largest object of multi-object scenes,
    colour, left/right of single objects off the centre band, size) and linear-probe accuracies of colour,
    left/right and size."""
    model.eval()
    size = preprocess_cfg["size"]
    features = {key: F.normalize(model.encode_image(preprocess_images(images, size, preprocess_cfg)), dim=-1)
                for key, (_, images) in eval_sets.items()}
    singles = [scene.objects[0] for scene in eval_sets["single"][0]]
    largest = [largest_visible_object(scene) for scene in eval_sets["multi"][0]]
    colours, sides, sizes = list(S.COLORS), ("on the left", "on the right"), ("small", "large")
    concept = prompt_ensemble(model, tokenizer, [[S.CONCEPT_PROMPTS[c]] for c in S.CATEGORIES])
    colour = prompt_ensemble(model, tokenizer, [[f"a photo of a {k} {c}" for c in S.CATEGORIES] for k in colours])
    side = prompt_ensemble(model, tokenizer, [[f"a photo of a {c} {s}" for c in S.CATEGORIES] for s in sides])
    scale = prompt_ensemble(model, tokenizer, [[f"a photo of a {s} {c}" for c in S.CATEGORIES] for s in sizes])
    lateral = [i for i, obj in enumerate(singles) if S.position_phrase(obj.x) in sides]
    colour_labels = [colours.index(o.color) for o in singles]
    side_labels = [sides.index(S.position_phrase(singles[i].x)) for i in lateral]
    size_labels = [sizes.index(S.size_word(o.size)) for o in singles]
    return {
        "concept_single": zero_shot_accuracy(features["single"], concept,
                                             [S.CATEGORIES.index(o.category) for o in singles]),
        "concept_largest_in_multi": zero_shot_accuracy(features["multi"], concept,
                                                       [S.CATEGORIES.index(o.category) for o in largest]),
        "colour_single": zero_shot_accuracy(features["single"], colour, colour_labels),
        "left_right_single": zero_shot_accuracy(features["single"][lateral], side, side_labels),
        "size_single": zero_shot_accuracy(features["single"], scale, size_labels),
        "probe_colour_single": linear_probe_accuracy(features["single"], colour_labels),
        "probe_left_right_single": linear_probe_accuracy(features["single"][lateral], side_labels),
        "probe_size_single": linear_probe_accuracy(features["single"], size_labels),
    }


# ----------------------------------------------------------------------------------------------- outputs


def save_weights_fp16(model, path: Path, history: list[dict]) -> None:
    """Write the state dict as fp16 safetensors, atomically, with the training history in its metadata."""
    from safetensors.torch import save_file

    state = {name: tensor.detach().to(torch.float16).contiguous() for name, tensor in model.state_dict().items()}
    temporary = _temporary_path(path)
    save_file(state, str(temporary), metadata={"format": "pt", "model": SHIPPED_NAME,
                                               "training": json.dumps(history)})
    _publish(temporary, path)


def load_initial_weights(model, path: Path) -> list[dict]:
    """Load weights to continue from (fp16 files become float32); returns their training history (from the
    file's metadata, or the record of known shipped weights)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    state = {name: tensor.float() for name, tensor in load_file(str(path)).items()}
    model.load_state_dict(state)
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if "training" in metadata:
        return json.loads(metadata["training"])
    history = KNOWN_HISTORIES.get(file_checksum(path))
    if history is None:
        raise SystemExit(f"{path} carries no training history; the model card could not say how it was trained.")
    return history


def write_text_atomically(path: Path, text: str) -> None:
    """Write a text file through a temporary file in the same folder."""
    temporary = _temporary_path(path)
    temporary.write_text(text, encoding="utf-8")
    _publish(temporary, path)


def _temporary_path(path: Path) -> Path:
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    return Path(name)


def _publish(temporary: Path, path: Path) -> None:
    """Make a finished temporary file readable by everyone (mkstemp's default is private) and move it into place."""
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)


def stage_record(settings: TrainSettings, result: dict) -> dict:
    """One training stage as kept in the weights' metadata and described in the model card."""
    return {"steps": settings.steps, "batch_size": settings.batch_size, "lr": settings.lr,
            "weight_decay": settings.weight_decay, "warmup_steps": settings.warmup_steps,
            "locked_text_steps": settings.locked_text_steps, "seed": settings.seed, "stage": settings.stage,
            "concept_weight": settings.concept_weight, "sized_concept_weight": settings.sized_concept_weight,
            "size_weight": settings.size_weight, "body_weight": settings.body_weight,
            "body_face_fraction": settings.body_face_fraction,
            "init_from": settings.init_from,
            "train_minutes": round(result["train_minutes"], 1), "temperature": round(result["temperature"], 1),
            "torch": torch.__version__}


def stage_lines(history: list[dict]) -> str:
    """Model-card bullets: each stage's schedule and its command."""
    lines = []
    for k, run in enumerate(history):
        start = ("from random initialisation, text tower locked (frozen at its random initialisation) for the "
                 f"first {run['locked_text_steps']} steps" if k == 0 else
                 f"continued from stage {k - 1}'s weights" + (", text tower trained throughout"
                                                               if run["locked_text_steps"] == 0 else ""))
        concept = (f"; concept term weight {run['concept_weight']} (plain prompts), "
                   f"{run.get('sized_concept_weight', 0.0)} (sized prompts), size term weight "
                   f"{run.get('size_weight', 0.0)}"
                   + (f", bodies weighted {run['body_weight']}x in the concept terms"
                      if run.get("body_weight", 1.0) != 1.0 else "")
                   + (f", {run['body_face_fraction']} of the independent scenes a body next to a face"
                      if run.get("body_face_fraction", 0.0) else "")
                   if run["concept_weight"] or run.get("sized_concept_weight") or run.get("size_weight")
                   else "; no concept term")
        command = (f"python scripts/train_small_clip.py --steps {run['steps']} --batch-size {run['batch_size']} "
                   f"--lr {run['lr']} --warmup-steps {run['warmup_steps']} --locked-text-steps "
                   f"{run['locked_text_steps']} --seed {run['seed']}")
        if k > 0:
            command += (f" --stage {run['stage']} --concept-weight {run['concept_weight']} --sized-concept-weight "
                        f"{run.get('sized_concept_weight', 0.0)} --size-weight {run.get('size_weight', 0.0)} "
                        f"--init-from STAGE{k - 1}")
            if run.get("body_weight", 1.0) != 1.0:
                command += f" --body-weight {run['body_weight']}"
            if run.get("body_face_fraction", 0.0):
                command += f" --body-face-fraction {run['body_face_fraction']}"
        lines.append(
            f"- Stage {k}: {start}; {run['steps']} steps of batch {run['batch_size']} "
            f"({run['steps'] * run['batch_size']:,} image–text pairs), AdamW lr {run['lr']}, {run['warmup_steps']} "
            f"warm-up steps then cosine decay to zero{concept}; seed {run['seed']}, scene stream of stage "
            f"{run['stage']}; final temperature {run['temperature']}; {run['train_minutes']} minutes on 2 shared CPU "
            f"threads (torch {run['torch']}). `{command}`")
    return "\n".join(lines)


def model_card(settings: TrainSettings, history: list[dict], final_scores: dict, n_params: int,
               weights: Path) -> str:
    """MODEL_CARD.md: what the model is, how it was trained, how well it reads out the world's attributes."""
    config = json.loads(SHIPPED_CONFIG.read_text())
    vision, text = config["vision_cfg"], config["text_cfg"]
    grid = vision["image_size"] // vision["patch_size"]
    rows = "\n".join(f"| {name.replace('_', ' ')} | {value:.3f} |" for name, value in final_scores.items())
    return f"""# mine-small

A small CLIP (open_clip `CLIP`, config `mine-small.json`) trained from scratch on the napari-mine synthetic
world. It is the default backbone of the embedded demo and of the tests: no model hub is reachable there.
It knows only this world (8 categories, 6 colours, sizes, positions); it is not a general image model.

## Architecture

- Vision: open_clip `VisionTransformer`, {vision['image_size']} px input, patch {vision['patch_size']}
  ({grid}×{grid} grid + class token), width {vision['width']}, {vision['layers']} layers,
  {vision['width'] // vision['head_width']} heads, class-token pooling (no attentional or average pooling), fixed
  2-D sin-cos position embedding (see "Why" below).
- Text: open_clip text transformer, context {text['context_length']}, width {text['width']},
  {text['layers']} layers, {text['heads']} heads, open_clip's BPE tokenizer (vocabulary {text['vocab_size']}).
- Joint embedding: {config['embed_dim']} dimensions. Parameters: {n_params:,}.
- Preprocessing: 128 px stimuli resized (bicubic, antialiased) to {vision['image_size']} px, OpenAI CLIP mean/std.
- Weights: `mine-small.safetensors`, fp16, {weights.stat().st_size / 1e6:.1f} MB, {file_checksum(weights)}.

## Training

- Data: fresh scenes from `napari_mine.synthetic.scenes` at every step (1–4 objects with probabilities
  {', '.join(f'{p:.2f}' for p in OBJECT_COUNT_PROBS)}; backgrounds and clutter as the renderer draws them),
  {sum(run['steps'] * run['batch_size'] for run in history):,} image–text pairs in all, none repeated (each stage
  draws from its own stream). {TWIN_FRACTION:.0%} of each batch comes as twin pairs that differ only in hemifield
  (all objects mirrored) or size (each object's size word flipped), captioned with the same phrasing, which
  always names the changed attribute: hard negatives.
- Text: the scene's caption ({CAPTION_KIND_PROBS[0]:.0%}), a partial description ({CAPTION_KIND_PROBS[1]:.0%}:
  a random subset of objects, each attribute kept with probability {ATTRIBUTE_KEEP_PROB}) or one attribute of
  one object alone ({CAPTION_KIND_PROBS[2]:.0%}: "something red", "something large", "something on the left");
  "a photo of" is prefixed half the time.
- Why the text tower starts locked: in five earlier runs (captions alone; twins; learnable or sin-cos position
  embeddings; attribute captions) concept and colour were learned but left/right stayed at chance, zero-shot
  and linearly probed. The text tower collapses "on the left" and "on the right" to one embedding (cosine
  1.0000) within ~25 steps, before the image tower carries any position signal that could pull them apart, and
  never recovers. Against fixed random text embeddings the image tower learns left/right (0.83 zero-shot after
  100 steps of a position-only test); unlocked afterwards, the text tower follows it. Twins whose captions could
  drop the changed attribute made the twins positives of each other and taught invariance, hence "always".
- Forward passes in bfloat16 autocast, loss and weights in float32.
- Objective: symmetric InfoNCE with a learnable temperature; identical captions within a batch count as
  positives of each other. Where a stage has a concept term, each image is also scored against the
  {len(S.CATEGORIES)} zero-shot concept prompts ("a photo of a face", ...) with the same temperature, and a
  cross-entropy pulls it towards every object of its scene (targets weighted by the square root of each
  object's visible area): a linear voxel encoder sums over a scene's objects, so every object's category must
  be in the embedding, not only the most salient one's. A second such term scores the image against the
  {len(S.CATEGORIES) * len(SIZE_WORDS)} sized prompts ("a photo of a small face", ...), each object's size
  word its target: with the plain prompts alone, zero-shot size fell from 0.70 to 0.61 in 500 steps. A size
  term, where a stage has one, scores the image against "small" and "large", each the normalised mean of its
  sized prompts over the categories (the zero-shot size readout's own ensemble), with the scene's size words
  (weighted as above) as targets.
- Optimiser: AdamW (weight decay on matrices only, betas 0.9/0.98), gradient norm clipped at {GRAD_CLIP_NORM}.
{stage_lines(history)}

## Readout accuracy of the shipped fp16 weights (held-out renders)

{settings.n_eval} single-object scenes and {settings.n_eval} scenes of 2–4 objects, never seen in training.
Concept prompts are `"a photo of a {{category}}"` over all {len(S.CATEGORIES)} categories; colour, left/right and
size use prompt ensembles over categories (e.g. "a photo of a red {{category}}"); left/right is scored on
single objects outside the centre band. `probe` rows are 5-fold cross-validated logistic regressions on the
image embeddings of the single-object scenes (is the attribute linearly decodable, as a linear voxel encoder
needs?). Chance: concept {1 / len(S.CATEGORIES):.3f}, colour {1 / len(S.COLORS):.3f}, left/right 0.5, size 0.5.

| readout | accuracy |
|---|---|
{rows}
"""


# ----------------------------------------------------------------------------------------------- main


def parse_args(argv=None) -> tuple[TrainSettings, Path, Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--locked-text-steps", type=int, default=300,
                        help="first steps with the text tower frozen at its random initialisation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--n-eval", type=int, default=400)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--init-from", type=Path, default=None,
                        help="continue from these weights (e.g. the shipped mine-small.safetensors) instead of a "
                             "random initialisation")
    parser.add_argument("--stage", type=int, default=0,
                        help="stage number: picks a fresh scene stream for a continued run (use 1, 2, ...)")
    parser.add_argument("--concept-weight", type=float, default=0.0,
                        help="weight of the concept term (every object of a scene against the concept prompts)")
    parser.add_argument("--sized-concept-weight", type=float, default=0.0,
                        help="weight of the same term against the sized concept prompts (\"a photo of a small "
                             "face\", ...): keeps the size words aligned while the concept term trains")
    parser.add_argument("--size-weight", type=float, default=0.0,
                        help="weight of the size term (each image against \"small\" and \"large\", each the "
                             "mean of its sized prompts over the categories)")
    parser.add_argument("--body-weight", type=float, default=1.0,
                        help="weight each image's concept terms by 1 + (w - 1) x the body's share of its targets "
                             "(1 = off)")
    parser.add_argument("--body-face-fraction", type=float, default=0.0,
                        help="fraction of a batch's independent scenes replaced by a body next to a face, "
                             "captioned in full (0 = off)")
    parser.add_argument("--out-dir", type=Path, default=SHIPPED_WEIGHTS.parent,
                        help="folder for mine-small.safetensors and MODEL_CARD.md (default: the package assets)")
    parser.add_argument("--log", type=Path, default=Path("train_small_clip.log"))
    args = parser.parse_args(argv)
    settings = TrainSettings(args.steps, args.batch_size, args.lr, args.weight_decay, args.warmup_steps,
                             args.locked_text_steps, args.seed,
                             args.eval_every, args.n_eval, args.threads,
                             str(args.init_from) if args.init_from else None, args.stage, args.concept_weight,
                             args.sized_concept_weight, args.size_weight, args.body_weight,
                             args.body_face_fraction)
    if (args.init_from is None) != (args.stage == 0):
        parser.error("a continued run (--init-from) needs its own --stage ≥ 1, and --stage ≥ 1 needs --init-from")
    return settings, args.out_dir, args.log


def main(argv=None) -> None:
    import open_clip

    settings, out_dir, log_path = parse_args(argv)
    logging.basicConfig(filename=log_path, level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    register_shipped_config()
    model = open_clip.create_model(SHIPPED_NAME)
    tokenizer = open_clip.get_tokenizer(SHIPPED_NAME)
    history = load_initial_weights(model, Path(settings.init_from)) if settings.init_from else []
    log.info("settings %s", settings)
    eval_sets = evaluation_sets(settings.seed, settings.n_eval)
    if settings.init_from:
        preprocess_cfg = model.visual.preprocess_cfg | {"size": model.visual.image_size[0]}
        log.info("eval step 0 (initial weights): %s",
                 json.dumps(readout_scores(model, tokenizer, eval_sets, preprocess_cfg)))
    result = {"train_minutes": train(model, tokenizer, settings, eval_sets),
              "temperature": model.logit_scale.exp().item()}
    history = history + [stage_record(settings, result)]
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / SHIPPED_WEIGHTS.name
    save_weights_fp16(model, weights, history)
    shipped = load_backbone(SHIPPED_NAME, checkpoint=weights)
    preprocess_cfg = shipped.preprocess_cfg | {"size": shipped.image_size}
    final_scores = readout_scores(shipped.model, shipped.tokenizer, eval_sets, preprocess_cfg)
    log.info("shipped fp16 weights: %s", json.dumps(final_scores))
    n_params = sum(p.numel() for p in model.parameters())
    write_text_atomically(out_dir / "MODEL_CARD.md", model_card(settings, history, final_scores, n_params, weights))
    log.info("wrote %s (%s) and the model card", weights, file_checksum(weights))


if __name__ == "__main__":
    main()
