"""Attribution at ViT-B/16 sizes on the CPU, and how faithful the exact maps are next to the baselines.

1. Cached queries over a results store on disk (197 tokens × 512, float32, chunked by images as
   `decompose_to_store` writes them): a whole-brain map of one image over 20,000 voxels, and one voxel's
   maps over 10,000 images (target ≤ 100 ms each). The voxel query must read every cached token once, so
   its floor is the size of the cache over the read bandwidth; the script prints both.
2. The cost of an exact map against gradient × input for the same (image, voxel) on a random-weight
   ViT-B-16: on demand per head (`exact_map`), on demand from the token pass (`decompose_images`), and from
   the cache (one matrix-vector product).
3. Deletion/insertion AUC of every method on mine-small (the shipped weights when present, else random
   weights) for well-predicted voxels of an encoder fitted to the synthetic brain.

Run: `.venv/bin/python benchmarks/bench_attribution.py [--n-images 10000] [--n-voxels 20000]
[--skip-models]`. Needs about 4 GB of free disk (a temporary store, deleted at the end).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np

from napari_mine import attribution as A

TOKENS, DIM = 197, 512


def seconds(run, repeats: int) -> list[float]:
    """Wall times of `repeats` calls of `run()`."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def write_store(root, n_images: int, n_voxels: int, seed: int = 0):
    """A results store with random tokens (chunked like `decompose_to_store`) and effective weights."""
    from napari_mine.decompose import TOKEN_CHUNK_BYTES
    from napari_mine.store import ResultsStore, write_arrays

    rng = np.random.default_rng(seed)
    store = ResultsStore.create(root, model={"id": "bench"}, dataset={})
    chunk_rows = max(1, TOKEN_CHUNK_BYTES // (TOKENS * DIM * 4))
    with store.write_step("features") as group:
        tokens = group.create_array("tokens", shape=(n_images, TOKENS, DIM), chunks=(chunk_rows, TOKENS, DIM),
                                    dtype="float32")
        for start in range(0, n_images, chunk_rows):
            rows = min(chunk_rows, n_images - start)
            tokens[start:start + rows] = rng.normal(0, 0.01, size=(rows, TOKENS, DIM)).astype(np.float32)
        write_arrays(group, {"features": rng.normal(size=(n_images, DIM)).astype(np.float32)})
    with store.write_step("encoder") as group:
        write_arrays(group, {"effective_weights": rng.normal(size=(DIM, n_voxels)).astype(np.float32),
                             "effective_bias": rng.normal(size=n_voxels).astype(np.float32)})
    return store, chunk_rows


def bench_cached_queries(n_images: int, n_voxels: int) -> None:
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        store, chunk_rows = write_store(root, n_images, n_voxels)
        cache_gb = n_images * TOKENS * DIM * 4 / 1e9
        print(f"store: {n_images} images × {TOKENS} tokens × {DIM} (float32, {cache_gb:.2f} GB, chunks of "
              f"{chunk_rows} images), {n_voxels} voxels; written in {time.perf_counter() - start:.1f} s")

        results = store.results()
        cold = seconds(lambda: results.whole_brain_map(0), 1)[0]
        rows = iter(np.random.default_rng(1).integers(0, n_images, size=10))
        warm = seconds(lambda: results.whole_brain_map(int(next(rows))), 10)
        print(f"whole-brain map, 1 image × {n_voxels} voxels: first call {cold * 1e3:.0f} ms (reads W̃), then "
              f"median {statistics.median(warm) * 1e3:.0f} ms (min {min(warm) * 1e3:.0f}) — target ≤ 100 ms")

        voxel = seconds(lambda: results.target_maps(123), 2)
        print(f"voxel maps, 1 voxel × {n_images} images: {voxel[0]:.2f} s first, {voxel[1]:.2f} s again "
              f"({cache_gb / voxel[1]:.2f} GB/s of tokens) — target ≤ 100 ms")
        floor_rows = min(n_images, 2000)
        in_memory = np.asarray(results.group("features")["tokens"][:floor_rows])
        weights = results.weights()[0][:, 123]
        product = min(seconds(lambda: in_memory @ weights, 3))
        read = min(seconds(lambda: results.group("features")["tokens"][:floor_rows], 2))
        scale = n_images / floor_rows
        print(f"  for comparison, from {floor_rows} images scaled ×{scale:.0f}: one large zarr read of the tokens "
              f"{read * scale:.2f} s; the product alone, on tokens already in memory, {product * scale:.2f} s")


def bench_cost_ratio(repeats: int = 3) -> None:
    import open_clip
    import torch

    from napari_mine.decompose import decompose_images

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None).eval()
    image = torch.randn(1, 3, 224, 224)
    weights = np.random.default_rng(0).normal(size=DIM).astype(np.float32)
    tokens = decompose_images(model, image).normalized().tokens[0]

    def plain_forward():
        with torch.no_grad():
            model.encode_image(image)

    runs = {
        "plain forward (encode_image)": plain_forward,
        "gradient × input": lambda: A.gradient_x_input(model, image, weights),
        "exact, per head on demand (exact_map)": lambda: A.exact_map(model, image, weights),
        "exact, token pass on demand (decompose_images)": lambda: A.to_patch_grid(
            A.patch_attribution(decompose_images(model, image).normalized().tokens[0], weights)),
        "exact, from the cache (tokens @ w̃)": lambda: A.to_patch_grid(A.patch_attribution(tokens, weights)),
    }
    timings = {name: [] for name in runs}
    for _ in range(repeats):  # round-robin, so a busy moment of the machine hits every method alike
        for name, run in runs.items():
            timings[name] += seconds(run, 1)
    reference = statistics.median(timings["gradient × input"])
    print("ViT-B-16 (random weights), one 224 px image, one voxel, CPU (median of "
          f"{repeats} round-robin runs):")
    for name, times in timings.items():
        median = statistics.median(times)
        print(f"  {name:48s} {median * 1e3:9.2f} ms   {median / reference:8.4f} × gradient × input")


def bench_faithfulness(n_fit: int = 300, n_test: int = 100, n_images: int = 4, n_voxels: int = 4,
                       n_steps: int = 12, fill: str = "grey") -> None:
    import open_clip
    import torch

    from napari_mine.decompose import decompose_images
    from napari_mine.encoding import fit_encoder, pearson_r
    from napari_mine.models.backbone import SHIPPED_WEIGHTS, load_backbone, preprocess_images, \
        register_shipped_config
    from napari_mine.synthetic import brain as B
    from napari_mine.synthetic import scenes as S

    if SHIPPED_WEIGHTS.exists():
        model, label = load_backbone("mine-small").model, "mine-small (shipped weights)"
    else:
        register_shipped_config()
        torch.manual_seed(0)
        model, label = open_clip.create_model("mine-small", pretrained=None).eval(), "mine-small (random weights)"
    rng = np.random.default_rng(0)
    scenes = [S.sample_scene(rng) for _ in range(n_fit + n_test)]
    pixels = preprocess_images(S.render_scenes(scenes), model.visual.image_size[0], model.visual.preprocess_cfg)
    features = decompose_images(model, pixels).normalized().embedding
    responses = B.true_response(B.make_brain(seed=0, n_calibration=100), scenes)
    encoder = fit_encoder(features[:n_fit], responses[:n_fit], backend="numpy")
    accuracy = pearson_r(responses[n_fit:], encoder.predict(features[n_fit:]))
    best = np.argsort(-np.nan_to_num(accuracy, nan=-1))[:n_voxels]
    weights, bias = encoder.effective_weights()
    images = pixels[n_fit:n_fit + n_images]
    start = time.perf_counter()
    maps = A.attribution_maps(model, images, weights[:, best], n_steps=16, fill=fill)
    maps["random order"] = np.random.default_rng(1).normal(size=maps["exact"].shape)
    scores = A.faithfulness(model, images, weights[:, best], bias[best], maps, fill=fill, n_steps=n_steps)
    print(f"faithfulness on {label}: {n_images} held-out scenes × {n_voxels} voxels (held-out r "
          f"{', '.join(f'{accuracy[v]:.2f}' for v in best)}), {fill} fill, {n_steps} steps, "
          f"{time.perf_counter() - start:.0f} s")
    for name, score in scores.items():
        print(f"  {name:22s} deletion AUC {score['deletion_auc']:.3f} (lower is better)   "
              f"insertion AUC {score['insertion_auc']:.3f} (higher is better)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=10_000)
    parser.add_argument("--n-voxels", type=int, default=20_000)
    parser.add_argument("--skip-models", action="store_true", help="only the cached queries")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at start")
    bench_cached_queries(args.n_images, args.n_voxels)
    if not args.skip_models:
        bench_cost_ratio()
        for fill in A.FILLS:
            bench_faithfulness(fill=fill)


if __name__ == "__main__":
    main()
