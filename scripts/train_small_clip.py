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
SMALL_TWIN_RANGE, LARGE_TWIN_RANGE = (S.SIZE_RANGE[0], 0.3), (0.4, S.SIZE_RANGE[1])  # clear of the size boundary
log = logging.getLogger("train_small_clip")


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


def training_batch(rng: np.random.Generator, batch_size: int, preprocess_cfg: dict, tokenizer):
    """Fresh scenes → (preprocessed images (B,3,S,S), tokens (B,L), caption group ids (B,)).

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
    for _ in range(batch_size - 2 * n_pairs):
        scene = sample_training_scene(rng)
        scenes.append(scene)
        texts.append(training_caption(scene, rng))
    images = preprocess_images(S.render_scenes(scenes), preprocess_cfg["size"], preprocess_cfg)
    _, groups = np.unique(texts, return_inverse=True)
    return images, tokenizer(texts), torch.from_numpy(groups)


# ----------------------------------------------------------------------------------------------- training


def contrastive_loss(image_features, text_features, logit_scale, groups) -> torch.Tensor:
    """Symmetric InfoNCE; pairs with the same caption are all positives (uniform soft targets)."""
    logits = logit_scale.exp() * F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).T
    same = (groups[:, None] == groups[None, :]).to(logits.dtype)
    targets = same / same.sum(1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


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


def train(model, tokenizer, settings: TrainSettings, eval_sets: dict) -> dict:
    """Run the training loop (evaluations go to the log); returns the wall time in minutes."""
    rng = np.random.default_rng([settings.seed, 0])
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
        images, tokens, groups = training_batch(rng, settings.batch_size, preprocess_cfg, tokenizer)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # ~1.4x faster on CPUs with bf16 units
            image_features, text_features = model.encode_image(images), model.encode_text(tokens)
        loss = contrastive_loss(image_features.float(), text_features.float(), model.logit_scale, groups)
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


def save_weights_fp16(model, path: Path) -> None:
    """Write the state dict as fp16 safetensors, atomically."""
    from safetensors.torch import save_file

    state = {name: tensor.detach().to(torch.float16).contiguous() for name, tensor in model.state_dict().items()}
    temporary = _temporary_path(path)
    save_file(state, str(temporary), metadata={"format": "pt", "model": SHIPPED_NAME})
    _publish(temporary, path)


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


def model_card(settings: TrainSettings, result: dict, final_scores: dict, n_params: int, weights: Path) -> str:
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
  {settings.steps * settings.batch_size:,} image–text pairs in all, none repeated. {TWIN_FRACTION:.0%} of each batch
  comes as twin pairs that differ only in hemifield (all objects mirrored) or size (each object's size word
  flipped), captioned with the same phrasing, which always names the changed attribute: hard negatives.
- Text: the scene's caption ({CAPTION_KIND_PROBS[0]:.0%}), a partial description ({CAPTION_KIND_PROBS[1]:.0%}:
  a random subset of objects, each attribute kept with probability {ATTRIBUTE_KEEP_PROB}) or one attribute of
  one object alone ({CAPTION_KIND_PROBS[2]:.0%}: "something red", "something large", "something on the left");
  "a photo of" is prefixed half the time.
- Text tower locked (frozen at its random initialisation) for the first {settings.locked_text_steps} steps, then
  trained with the rest.
- Why: in five earlier runs (captions alone; twins; learnable or sin-cos position embeddings; attribute
  captions) concept and colour were learned but left/right stayed at chance, zero-shot and linearly probed.
  The text tower collapses "on the left" and "on the right" to one embedding (cosine 1.0000) within ~25
  steps, before the image tower carries any position signal that could pull them apart, and never recovers.
  Against fixed random text embeddings the image tower learns left/right (0.83 zero-shot after 100 steps of
  a position-only test); unlocked afterwards, the text tower follows it. Twins whose captions could drop the
  changed attribute made the twins positives of each other and taught invariance, hence "always".
- Forward passes in bfloat16 autocast, loss and weights in float32.
- Objective: symmetric InfoNCE with a learnable temperature (final {result['temperature']:.1f}); identical
  captions within a batch count as positives of each other.
- Optimiser: AdamW (lr {settings.lr}, weight decay {settings.weight_decay} on matrices only, betas 0.9/0.98),
  gradient norm clipped at {GRAD_CLIP_NORM}, {settings.warmup_steps} warm-up steps then cosine decay;
  {settings.steps} steps of batch {settings.batch_size}; seed {settings.seed}.
- Compute: CPU, {settings.threads} threads on a machine shared with other jobs, {result['train_minutes']:.1f}
  minutes of wall time (torch {torch.__version__}).
- Reproduce: `python scripts/train_small_clip.py --steps {settings.steps} --batch-size {settings.batch_size}
  --seed {settings.seed}`.

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
    parser.add_argument("--out-dir", type=Path, default=SHIPPED_WEIGHTS.parent,
                        help="folder for mine-small.safetensors and MODEL_CARD.md (default: the package assets)")
    parser.add_argument("--log", type=Path, default=Path("train_small_clip.log"))
    args = parser.parse_args(argv)
    settings = TrainSettings(args.steps, args.batch_size, args.lr, args.weight_decay, args.warmup_steps,
                             args.locked_text_steps, args.seed,
                             args.eval_every, args.n_eval, args.threads)
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
    log.info("settings %s", settings)
    eval_sets = evaluation_sets(settings.seed, settings.n_eval)
    result = {"train_minutes": train(model, tokenizer, settings, eval_sets),
              "temperature": model.logit_scale.exp().item()}
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / SHIPPED_WEIGHTS.name
    save_weights_fp16(model, weights)
    shipped = load_backbone(SHIPPED_NAME, checkpoint=weights)
    preprocess_cfg = shipped.preprocess_cfg | {"size": shipped.image_size}
    final_scores = readout_scores(shipped.model, shipped.tokenizer, eval_sets, preprocess_cfg)
    log.info("shipped fp16 weights: %s", json.dumps(final_scores))
    n_params = sum(p.numel() for p in model.parameters())
    write_text_atomically(out_dir / "MODEL_CARD.md", model_card(settings, result, final_scores, n_params, weights))
    log.info("wrote %s (%s) and the model card", weights, file_checksum(weights))


if __name__ == "__main__":
    main()
