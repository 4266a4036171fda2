"""Descriptions, profiles and the text-embedding cache on the CPU.

1. One per-image description (one image, one voxel) against 5,000 concepts at ViT-B/16 sizes (197 tokens ×
   512); target ≤ 50 ms. Median of repeated calls after a warm-up.
2. Profiles of many voxels from their top-k images, at the demo world's sizes (mine-small: 65 tokens × 128,
   the shipped general vocabulary) and at ViT-B/16 sizes; target: thousands of voxels in seconds to a minute.
3. Embedding the general vocabulary with mine-small's architecture (random weights: the cost does not depend
   on them): the first load computes and caches, the second reads the cache.
4. With `--world N`: profiles against the truth on a synthetic world of N images (shipped mine-small, the
   synthetic vocabulary): how often a well-predicted category voxel's top category is its true preferred
   category, for MINE profiles and the direct-projection baseline; each category ROI's aggregate profile;
   and how well clustering recovers the true sub-populations (adjusted Rand index).

On a loaded machine OpenBLAS's worker threads wait for each other and small matrix products slow down
many times over; `--blas-threads 1` shows the single-thread figures (the script prints the setting used).

Run: `.venv/bin/python benchmarks/bench_describe.py [--voxels 2000] [--blas-threads 1] [--skip-cache]
[--world 2500]`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_mine import describe as D
from napari_mine.vocabulary import ConceptSpace, general_vocabulary, vocabulary_from_concepts


def random_space(n_concepts: int, dim: int, seed: int = 0) -> ConceptSpace:
    vocabulary = vocabulary_from_concepts([f"concept {i}" for i in range(n_concepts)], "bench")
    return ConceptSpace.from_embeddings(vocabulary, np.random.default_rng(seed).normal(size=(n_concepts, dim)))


def describe_milliseconds(n_tokens: int, dim: int, n_concepts: int, repeats: int) -> float:
    """Median wall time (ms) of `describe_image` for one (image, voxel)."""
    rng = np.random.default_rng(1)
    space = random_space(n_concepts, dim)
    tokens = rng.normal(size=(n_tokens, dim)).astype(np.float32)
    weight = rng.normal(size=dim).astype(np.float32)
    D.describe_image(tokens, weight, space)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        D.describe_image(tokens, weight, space)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def profile_seconds(n_images: int, n_tokens: int, dim: int, space: ConceptSpace, n_voxels: int, top_k: int) -> float:
    """Wall time (s) of `voxel_profiles` for `n_voxels` voxels over random tokens and weights."""
    rng = np.random.default_rng(2)
    tokens = rng.normal(size=(n_images, n_tokens, dim)).astype(np.float32)
    weights = rng.normal(size=(dim, n_voxels)).astype(np.float32)
    start = time.perf_counter()
    top = D.top_images(tokens.sum(axis=1) @ weights, top_k)
    D.voxel_profiles(tokens, weights, top, space)
    return time.perf_counter() - start


def cache_seconds() -> tuple[float, float, int]:
    """(first, second) wall time of embedding the general vocabulary, and its size."""
    import open_clip
    import torch

    from napari_mine.models.backbone import Backbone, register_shipped_config
    from napari_mine.vocabulary import embed_vocabulary

    register_shipped_config()
    torch.manual_seed(0)
    model = open_clip.create_model("mine-small", pretrained=None).eval()
    backbone = Backbone(model=model, name="mine-small", pretrained=None, checksum="sha256:bench", embed_dim=128,
                        image_size=64, preprocess_cfg=dict(model.visual.preprocess_cfg),
                        tokenizer=open_clip.get_tokenizer("mine-small"), device="cpu")
    vocabulary = general_vocabulary()
    with tempfile.TemporaryDirectory() as cache:
        times = []
        for _ in range(2):
            start = time.perf_counter()
            embed_vocabulary(vocabulary, backbone, cache_dir=cache)
            times.append(time.perf_counter() - start)
    return times[0], times[1], len(vocabulary)


def fitted_world(folder: Path, n_images: int, seed: int):
    """Write a synthetic world, decompose its images with mine-small and fit the encoder; (store, backbone,
    true voxel tuning)."""
    from napari_mine.data import load_nsd
    from napari_mine.models.backbone import load_backbone
    from napari_mine.pipeline import compute_features, fit_encoder_step
    from napari_mine.store import ResultsStore
    from napari_mine.synthetic.truth import load_truth
    from napari_mine.synthetic.write_nsd import write_world

    write_world(folder / "world", seed=seed, n_images=n_images)
    dataset = load_nsd(folder / "world", subject=1)
    backbone = load_backbone("mine-small")
    store = ResultsStore.create(folder / "results", model=backbone.record, dataset=dataset.source)
    compute_features(dataset, backbone, store)
    fit_encoder_step(dataset, store)
    return store, backbone, load_truth(folder / "world").brain.tuning


def world_figures(n_images: int, seed: int, top_k: int, min_r: float = 0.3) -> None:
    """Print how well profiles recover the synthetic world's true category tuning and sub-populations."""
    from napari_mine.vocabulary import concept_space, synthetic_vocabulary

    with tempfile.TemporaryDirectory() as folder:
        store, backbone, tuning = fitted_world(Path(folder), n_images, seed)
        space = concept_space(synthetic_vocabulary(), backbone, cache_dir=folder)
        results = store.results()
        r = results.accuracy["r"]
        voxels = np.flatnonzero((tuning.category >= 0) & (r > min_r))
        start = time.perf_counter()
        profiles = results.profiles(space, voxels, top_k=top_k)
        seconds = time.perf_counter() - start
        weights = results.weights()[0][:, voxels].T
    categories = np.flatnonzero(np.asarray(space.vocabulary.groups) == "category")  # CATEGORIES order
    truth = tuning.category[voxels]
    mine = np.mean(profiles.scores[:, categories].argmax(axis=1) == truth)
    baseline = np.mean(profiles.baseline[:, categories].argmax(axis=1) == truth)
    print(f"world of {n_images} images: {len(voxels)} category voxels with test r > {min_r}, profiles in "
          f"{seconds:.1f} s; top category = true category for {100 * mine:.1f}% (MINE) vs "
          f"{100 * baseline:.1f}% (baseline w̃·text)")
    rois = tuning.roi[voxels]
    for roi in sorted(set(rois) - {""}):
        rows = np.flatnonzero(rois == roi)
        mean = D.roi_profiles(profiles.scores[rows], np.ones(len(rows), int), {1: roi})[roi]
        print(f"  {roi:>12} ({len(rows):3d} voxels, true {tuning_category(tuning, voxels[rows])}): "
              + ", ".join(f"{c} {s:.2f}" for c, s in D.top_concepts(mean, profiles.concepts, 4)))
    subpopulation_figures(profiles, weights, rois, tuning.subpopulation[voxels])


def tuning_category(tuning, voxels) -> str:
    """The true preferred category most of ``voxels`` share."""
    from napari_mine.synthetic import scenes

    return scenes.CATEGORIES[int(np.bincount(tuning.category[voxels]).argmax())]


def subpopulation_figures(profiles, weights, rois, subpopulations) -> None:
    """ARI of clusters (on profiles, and on w̃) with the true sub-populations of each ROI that has them."""
    from sklearn.metrics import adjusted_rand_score

    for roi in sorted(set(rois) - {""}):
        rows = np.flatnonzero(rois == roi)
        labels = subpopulations[rows]
        if len(set(labels)) < 2 or len(rows) < 8:
            continue
        on_profiles = D.cluster_voxels(profiles.scores[rows], seed=0)
        on_weights = D.cluster_voxels(weights[rows], seed=0)
        counts = {str(name): int(n) for name, n in zip(*np.unique(labels, return_counts=True))}
        print(f"  {roi:>12} sub-populations {counts}: ARI "
              f"{adjusted_rand_score(labels, on_profiles.labels):.2f} on profiles (k={on_profiles.k}), "
              f"{adjusted_rand_score(labels, on_weights.labels):.2f} on w̃ (k={on_weights.k})")


def run(args) -> None:
    """Print every figure."""
    ms = describe_milliseconds(197, 512, 5000, args.repeats)
    print(f"describe one (image, voxel), 197×512 tokens, 5,000 concepts: {ms:.1f} ms median "
          f"(target ≤ 50 ms: {'met' if ms <= 50 else 'MISSED'})")

    n_general = len(general_vocabulary())
    demo = profile_seconds(2500, 65, 128, random_space(n_general, 128), args.voxels, args.top_k)
    print(f"profiles, demo sizes (2,500 images, 65×128 tokens, {n_general} concepts, top-{args.top_k}): "
          f"{args.voxels} voxels in {demo:.1f} s ({1000 * demo / args.voxels:.2f} ms/voxel)")
    vit_voxels = max(1, args.voxels // 4)
    vit = profile_seconds(500, 197, 512, random_space(5000, 512), vit_voxels, args.top_k)
    print(f"profiles, ViT-B/16 sizes (500 images, 197×512 tokens, 5,000 concepts, top-{args.top_k}): "
          f"{vit_voxels} voxels in {vit:.1f} s ({1000 * vit / vit_voxels:.2f} ms/voxel)")

    if not args.skip_cache:
        first, second, size = cache_seconds()
        print(f"text embeddings of the general vocabulary ({size} concepts, mine-small architecture): "
              f"first load {first:.2f} s, cached load {1000 * second:.1f} ms")
    if args.world:
        world_figures(args.world, args.seed, args.top_k)



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voxels", type=int, default=2000, help="voxels for the demo-size profile run")
    parser.add_argument("--top-k", type=int, default=D.DEFAULT_TOP_K)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--skip-cache", action="store_true", help="skip the text-embedding cache run")
    parser.add_argument("--blas-threads", type=int, default=None, help="limit BLAS threads (default: as is)")
    parser.add_argument("--world", type=int, default=0, help="images of a synthetic world to score profiles on")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic world")
    args = parser.parse_args()
    from threadpoolctl import threadpool_info, threadpool_limits

    with threadpool_limits(limits=args.blas_threads, user_api="blas"):
        threads = sorted({pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"})
        print(f"BLAS threads: {threads}")
        run(args)


if __name__ == "__main__":
    main()
