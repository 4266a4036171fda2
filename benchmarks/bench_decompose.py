"""Cost of the exact decomposition against the plain forward pass (target: decomposed ≤ 1.5× plain).

Same model, same batch, same device; the two are run alternately after a warm-up and the median of the
paired ratios is printed. Random weights: the cost does not
depend on them. Run: `.venv/bin/python benchmarks/bench_decompose.py [--device cuda] [--repeats 5]`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def paired_seconds(first, second, repeats: int) -> tuple[list[float], list[float]]:
    """Wall times of `first()` and `second()` called alternately (after one warm-up each).

    Alternating keeps the comparison fair when other processes load the machine unevenly over time.
    """
    import torch

    def timed(run) -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter() - start

    first(), second()
    pairs = [(timed(first), timed(second)) for _ in range(repeats)]
    return [a for a, _ in pairs], [b for _, b in pairs]


def tiny_model():
    """A small ViT tower (4 layers, width 128, 64×64 input, patch 8): the per-call overheads dominate."""
    from open_clip.transformer import VisionTransformer

    return VisionTransformer(
        image_size=64, patch_size=8, width=128, layers=4, heads=4, mlp_ratio=4.0, output_dim=64
    )


def vit_b16_model():
    import open_clip

    return open_clip.create_model("ViT-B-16", pretrained=None)


def compare(name: str, model, batch: int, device: str, repeats: int) -> None:
    """Print plain vs decomposed forward times on one batch, and the decomposition's relative error."""
    import torch

    from napari_mine.decompose import decompose_images, vision_tower

    visual = vision_tower(model).to(device).eval()
    size = visual.image_size[0]
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)

    def plain():
        with torch.no_grad():
            return visual(images).float().cpu().numpy()

    def decomposed():
        return decompose_images(visual, images)

    plain_times, decomposed_times = paired_seconds(plain, decomposed, repeats)
    plain_s, decomposed_s = statistics.median(plain_times), statistics.median(decomposed_times)
    parts, reference = decomposed(), plain()
    summed = parts.tokens.sum(1) + parts.rest
    error = np.linalg.norm(summed - reference, axis=1) / np.linalg.norm(reference, axis=1)
    ratio = statistics.median(d / p for p, d in zip(plain_times, decomposed_times))
    print(
        f"{name:10s} batch {batch:3d} on {device}: plain {plain_s * 1e3:8.1f} ms, decomposed "
        f"{decomposed_s * 1e3:8.1f} ms (medians), median paired ratio {ratio:.2f}x, max rel error {error.max():.1e}"
    )


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    compare("tiny", tiny_model(), args.batch, args.device, args.repeats)
    compare("ViT-B-16", vit_b16_model(), args.batch, args.device, args.repeats)


if __name__ == "__main__":
    main()
