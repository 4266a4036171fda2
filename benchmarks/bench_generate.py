"""Generator throughput: procedural edits on the CPU, diffusers pipelines on CUDA (or a tiny one on the CPU).

1. Procedural backend (the synthetic world, 128 px): scenes edited per second — removal under an object's
   mask, insertion into a region, generation from a caption — with and without rendering the images.
2. A Stable-Diffusion-1.5-shaped pipeline (UNet block_out_channels (320, 640, 1280, 1280), cross-attention
   768, CLIP-L-sized text encoder, 512 px) with random weights in float16: images per second for
   text-to-image and inpainting removal at 4 and 20 steps. Runs only when CUDA is present.
3. On the CPU, the tiny random pipeline the tests use (16 px), so the script always prints a figure: it
   measures the per-call overhead of the generator around diffusers, not a model's speed.

Run: `.venv/bin/python benchmarks/bench_generate.py [--n-scenes 300] [--batch-size 4] [--skip-diffusers]`.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from napari_mine.generate import DiffusionGenerator, ProceduralGenerator, as_edits, feather, random_pipeline
from napari_mine.synthetic import scenes as S


def rate(run, n_items: int, repeats: int = 3) -> float:
    """Items per second of the fastest of ``repeats`` calls of ``run()``."""
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return n_items / best


def bench_procedural(n_scenes: int) -> None:
    rng = np.random.default_rng(0)
    scenes = [S.sample_scene(rng) for _ in range(n_scenes)]
    generator = ProceduralGenerator(scenes)
    size = generator.image_size[0]
    masks = np.stack([feather(S.object_masks(scene, size)[0], 3) for scene in scenes])
    region = np.zeros((size, size), np.float32)
    region[size // 4 : size // 2, size // 2 : 3 * size // 4] = 1
    indices = list(range(n_scenes))
    subjects = generator.originals(indices)
    captions = [S.caption(scene) for scene in scenes]
    print(f"procedural, {n_scenes} scenes at {size} px (CPU):")
    for name, edit, render in (
        ("remove", lambda: generator.scenes_without(indices, masks), lambda: generator.remove(subjects, masks)),
        ("insert", lambda: generator.scenes_with(indices, region, "face"),
         lambda: generator.insert(subjects, region, "face")),
        ("generate", lambda: generator.scenes_from_descriptions(captions), lambda: generator.generate(captions)),
    ):
        print(f"  {name:8s}: {rate(edit, n_scenes):7.0f} scene edits/s, {rate(render, n_scenes):6.0f} edited "
              "images/s (with rendering)")


def bench_diffusers_cuda(batch_size: int) -> None:
    import torch

    if not torch.cuda.is_available():
        print("SD-1.5-shaped pipeline (fp16, 512 px): skipped: no CUDA")
        return
    start = time.perf_counter()
    pipe = random_pipeline("sd15").to("cuda", torch.float16)
    print(f"SD-1.5-shaped pipeline, random weights, fp16, 512 px on {torch.cuda.get_device_name()} "
          f"(built in {time.perf_counter() - start:.0f} s), batch {batch_size}:")
    image = np.random.default_rng(0).integers(0, 256, (batch_size, 512, 512, 3), dtype=np.uint8)
    box = np.zeros((512, 512), bool)
    box[128:320, 160:352] = True
    mask = feather(box, 16)
    prompts = ["a photo of a red face on the left"] * batch_size
    for steps in (4, 20):
        generator = DiffusionGenerator(pipe, steps=steps, batch_size=batch_size)
        with np.errstate(invalid="ignore"):  # random fp16 weights may decode to NaN; only the time counts
            generator.generate(prompts[:1])  # warm-up
            torch.cuda.reset_peak_memory_stats()
            text = rate(lambda: generator.generate(prompts), batch_size, repeats=2)
            removal = rate(lambda: generator.remove(as_edits(image), mask), batch_size, repeats=2)
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"  {steps:2d} steps: text-to-image {text:.2f} images/s, inpainting removal {removal:.2f} images/s "
              f"(peak {peak:.1f} GiB)")


def bench_tiny_cpu(batch_size: int) -> None:
    import torch

    generator = DiffusionGenerator(random_pipeline("tiny"), steps=4, batch_size=batch_size)
    image = np.random.default_rng(0).integers(0, 256, (batch_size, 16, 16, 3), dtype=np.uint8)
    box = np.zeros((16, 16), bool)
    box[4:10, 4:10] = True
    prompts = ["a red face"] * batch_size
    for threads in sorted({1, torch.get_num_threads()}):
        torch.set_num_threads(threads)
        generator.generate(prompts[:1])  # warm-up
        text = rate(lambda: generator.generate(prompts), batch_size)
        removal = rate(lambda: generator.remove(as_edits(image), feather(box, 2)), batch_size)
        print(f"tiny pipeline (16 px, 4 steps, CPU, {threads} thread{'s' * (threads > 1)}): text-to-image "
              f"{text:.1f} images/s, inpainting removal {removal:.1f} images/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-scenes", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--skip-diffusers", action="store_true")
    args = parser.parse_args()
    bench_procedural(args.n_scenes)
    if not args.skip_diffusers:
        bench_diffusers_cuda(args.batch_size)
        bench_tiny_cpu(args.batch_size)


if __name__ == "__main__":
    main()
