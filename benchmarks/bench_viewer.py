"""Viewer latency on the demo world or a ViT-B/16-sized store: click on a voxel → updated inspector, stimulus
slider → new overlay.

Timed through the widget's own path, thread worker included (a function timing alone would hide the
worker's cost): from the mouse callback (press + release) to the inspector's ``updated`` signal, after the
panel, thumbnails, profile chart and overlay were updated on the main thread; and from
``viewer.dims.set_current_step`` to the ``updated`` signal of the new overlay and description. The direct
``Results`` calls are timed beside them, so the worker's share shows, and the scrub is repeated with the
inspector detached (napari's own re-slice and redraw: the floor on the machine). Aims (issue 12): a click
50 ms, a scrub step 33 ms (30 frames/s); a slider jump 100 ms.

    xvfb-run -a .venv/bin/python benchmarks/bench_viewer.py                # the demo world (built once)
    xvfb-run -a .venv/bin/python benchmarks/bench_viewer.py --store RESULTS --clicks 30 --moves 50
    xvfb-run -a .venv/bin/python benchmarks/bench_viewer.py --vit-b16 /tmp/vit --json benchmarks/results/X.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

AIM_CLICK_MS = 50
AIM_SLIDER_MS = 100
AIM_SCRUB_MS = 33  # one frame at 30 frames/s


def wait_for(app, signal, start_action, timeout_s: float = 60.0) -> tuple[float, str]:
    """Seconds from ``start_action()`` to ``signal`` and the Qt events it leads to (the redraw) processed, and
    the signal's argument."""
    got = []
    signal.connect(got.append)
    try:
        start = time.perf_counter()
        start_action()
        while not got:
            app.processEvents()
            if time.perf_counter() - start > timeout_s:
                raise TimeoutError("no answer from the widget")
            time.sleep(0.0005)
        app.processEvents()
        return time.perf_counter() - start, got[0]
    finally:
        signal.disconnect(got.append)


def click_action(viewer, inspector, position):
    [callback] = [cb for cb in viewer.mouse_drag_callbacks if getattr(cb, "__self__", None) is inspector]

    def act():
        event = SimpleNamespace(type="mouse_press", position=tuple(position), button=1, modifiers=[],
                                view_direction=None, dims_displayed=list(viewer.dims.displayed))
        gesture = callback(viewer, event)
        next(gesture)
        event.type = "mouse_release"
        next(gesture, None)

    return act


def summary(label: str, stats: dict, aim_ms: float) -> str:
    verdict = "meets" if stats["median_ms"] <= aim_ms else "misses"
    return (f"{label:<44} median {stats['median_ms']:6.1f} ms   p90 {stats['p90_ms']:6.1f} ms   "
            f"max {stats['max_ms']:6.1f} ms   (n={stats['n']}; {verdict} the {aim_ms:.0f} ms aim)")


def measure_latency(results_root, *, clicks: int = 20, moves: int = 40, seed: int = 0, log=print) -> dict:
    """Latencies of the Voxel inspector on a results folder, through the real widgets (run under Xvfb).

    Opens the folder with ``view_results`` and clicks as soon as the window has drawn (the first click
    races the background preload, as an eager user would), then ``clicks`` clicks on well-predicted voxels and ``moves`` moves of
    the ``image`` slider to random images, then ``moves`` steps of one image onwards (scrubbing); each is timed until the widget says it shows the new state and the Qt events that
    follow (the canvas redraw included) are processed. Returns milliseconds: ``first_click_ms`` and, for
    ``click``, ``slider`` (jumps), ``scrub`` and the engine's share (``report``, ``image_map``), median, p90 and max,
    with the load average the machine ran under.
    """
    from qtpy.QtWidgets import QApplication

    from napari_mine._widgets._common import brain_layer
    from napari_mine.models.backbone import import_torch
    from napari_mine.results import open_results
    from napari_mine.viewer import view_results

    import_torch()  # before the canvas exists (see models.backbone.import_torch); not part of any timing
    root = str(results_root)
    viewer = view_results(root, widgets=("Voxel inspector",), block=False)
    try:
        app = QApplication.instance()
        inspector = viewer.window.dock_widgets["Voxel inspector (napari-mine)"]
        brain = brain_layer(viewer)
        view = open_results(root)
        rng = np.random.default_rng(seed)
        accuracy = view.accuracy.get("r", np.zeros(view.space.n_targets))
        predicted = np.flatnonzero(np.nan_to_num(accuracy) > 0.2)
        voxels = rng.choice(predicted if predicted.size else np.arange(len(accuracy)), clicks + 1, replace=False)

        def position_of(voxel):
            position = np.array(viewer.dims.point, dtype=float)
            position[-3:] = brain.data_to_world(view.space.ijk_of(int(voxel)))
            viewer.dims.set_point(range(viewer.dims.ndim - 3, viewer.dims.ndim), position[-3:])
            return position

        first_position = position_of(voxels[0])
        app.processEvents()  # the window drawn: a user clicks on what is on the screen
        first, _ = wait_for(app, inspector.updated, click_action(viewer, inspector, first_position), 600)
        log(f"first click (while the folder's preload runs): {1000 * first:.0f} ms")
        space = view.concept_space(inspector_vocabulary(brain), None)
        click_s, report_s = [], []
        for voxel in voxels[1:]:
            position = position_of(voxel)
            app.processEvents()
            seconds, outcome = wait_for(app, inspector.updated, click_action(viewer, inspector, position))
            assert outcome == "report", outcome
            click_s.append(seconds)
            tic = time.perf_counter()
            view.report(int(voxel), int(viewer.dims.current_step[0]), 8, space)
            report_s.append(time.perf_counter() - tic)
        again_s = []
        for voxel in voxels[1:]:  # back to voxels inspected before (their thumbnails are drawn)
            position = position_of(voxel)
            app.processEvents()
            seconds, outcome = wait_for(app, inspector.updated, click_action(viewer, inspector, position))
            assert outcome == "report", outcome
            again_s.append(seconds)
        n_images = viewer.layers["stimuli"].data.shape[0]
        move_s, map_s = [], []
        for row in rng.choice(n_images, moves, replace=False):
            seconds, outcome = wait_for(app, inspector.updated,
                                        lambda row=row: viewer.dims.set_current_step(0, int(row)))
            assert outcome == "overlay", outcome
            move_s.append(seconds)
            tic = time.perf_counter()
            view.image_map(int(voxels[-1]), int(row), space)
            map_s.append(time.perf_counter() - tic)
        scrub_s = []
        for row in range(int(row) + 1, min(int(row) + 1 + moves, n_images)):  # one image a frame, onwards
            seconds, outcome = wait_for(app, inspector.updated, lambda row=row: viewer.dims.set_current_step(0, row))
            assert outcome == "overlay", outcome
            scrub_s.append(seconds)
        floor_s = napari_alone(app, viewer, inspector, range(row + 1, min(row + 1 + moves, n_images)))
        return {"load_average": round(os.getloadavg()[0], 1), "cpu_cores": os.cpu_count(),"store": root, "n_targets": int(len(accuracy)), "n_images": int(n_images),
                "tokens_per_image": int(view.tokens([0]).shape[1]), "first_click_ms": round(1000 * first, 1),
                **{name: _stats(values) for name, values in
                   (("click", click_s), ("click_again", again_s), ("report", report_s), ("slider", move_s), ("image_map", map_s),
                    ("scrub", scrub_s), ("scrub_napari_alone", floor_s))}}
    finally:
        viewer.close()


def napari_alone(app, viewer, inspector, rows) -> list[float]:
    """Seconds of each slider step to ``rows`` with the inspector detached from the slider: napari re-slicing
    the stimulus and redrawing the window, the floor under the inspector's scrub figure on this machine."""
    viewer.dims.events.current_step.disconnect(inspector._on_dims_step)
    try:
        steps = []
        for row in rows:
            start = time.perf_counter()
            viewer.dims.set_current_step(0, int(row))
            app.processEvents()
            steps.append(time.perf_counter() - start)
        return steps
    finally:
        viewer.dims.events.current_step.connect(inspector._on_dims_step)


def _stats(seconds) -> dict:
    ms = 1000 * np.asarray(seconds)
    return {"median_ms": round(float(np.median(ms)), 1), "p90_ms": round(float(np.percentile(ms, 90)), 1),
            "max_ms": round(float(ms.max()), 1), "n": int(len(ms))}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", help="a results folder (default: the demo world, built once into the cache)")
    parser.add_argument("--vit-b16", metavar="DIR", help="build (once) and measure the ViT-B/16-sized store in DIR")
    parser.add_argument("--images", type=int, default=2000, help="images of the --vit-b16 store")
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--moves", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--publish", nargs=2, metavar=("BEFORE", "AFTER"),
                        help="only write the before/after table of two such JSON files into docs/benchmarks.md")
    args = parser.parse_args(argv)
    if args.publish:
        publish(*args.publish)
        return

    from napari_mine._sample_data import demo_store

    if args.vit_b16:
        os.environ.setdefault("NAPARI_MINE_CACHE", str(Path(args.vit_b16) / "cache"))
        root = build_vit_b16_store(args.vit_b16, n_images=args.images, seed=args.seed)
    else:
        root = args.store or demo_store(log=print)
    figures = measure_latency(root, clicks=args.clicks, moves=args.moves, seed=args.seed)
    print(f"store: {root}: {figures['n_targets']} targets, {figures['n_images']} images, "
          f"{figures['tokens_per_image']} tokens per image")
    print(summary("click → inspector updated (worker + Qt)", figures["click"], AIM_CLICK_MS))
    print(summary("  of which Results.report (no Qt)", figures["report"], AIM_CLICK_MS))
    print(summary("click again on an inspected voxel", figures["click_again"], AIM_CLICK_MS))
    print(summary("slider → new overlay (worker + Qt)", figures["slider"], AIM_SLIDER_MS))
    print(summary("  of which Results.image_map", figures["image_map"], AIM_SLIDER_MS))
    print(summary("slider scrubbed one image onwards", figures["scrub"], AIM_SCRUB_MS))
    print(summary("  napari alone (inspector detached)", figures["scrub_napari_alone"], AIM_SCRUB_MS))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


ROWS = (("first click, once the window has drawn", "first_click_ms", None),
        ("click on a new voxel → inspector updated", "click", AIM_CLICK_MS),
        ("of which `Results.report`", "report", None),
        ("click again on an inspected voxel", "click_again", AIM_CLICK_MS),
        ("slider jump to a random image", "slider", AIM_SLIDER_MS),
        ("of which `Results.image_map`", "image_map", None),
        ("slider scrubbed one image onwards", "scrub", AIM_SCRUB_MS),
        ("the same steps, napari alone (the inspector detached)", "scrub_napari_alone", None))
MARKS = ("<!-- viewer-latency:begin (generated by benchmarks/bench_viewer.py --publish) -->",
         "<!-- viewer-latency:end -->")


def latency_table(before: dict, after: dict) -> str:
    """Markdown: median / p90 ms of each measure before and after, and the ratio of the medians."""
    def cell(figures, key):
        value = figures.get(key)
        if value is None:
            return "—"
        return f"{value:,.0f}" if not isinstance(value, dict) else f"{value['median_ms']:,.0f} / {value['p90_ms']:,.0f}"

    def median(figures, key):
        value = figures.get(key)
        return value if not isinstance(value, dict) else value["median_ms"]

    lines = [f"| ms (median / p90) | before (load {before['load_average']}) | after (load {after['load_average']}) "
             "| after / before |", "|---|---|---|---|"]
    for label, key, _ in ROWS:
        ratio = (f"{median(after, key) / median(before, key):.2f}" if median(before, key) and median(after, key)
                 else "—")
        lines.append(f"| {label} | {cell(before, key)} | {cell(after, key)} | {ratio} |")
    return "\n".join(lines)


def publish(before_path, after_path) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from docs_section import write_between

    table = latency_table(json.loads(Path(before_path).read_text()), json.loads(Path(after_path).read_text()))
    write_between(*MARKS, table, "## Viewer latency on a ViT-B/16-sized store")


def inspector_vocabulary(brain):
    from napari_mine._reader import META

    return brain.metadata.get(META, {}).get("vocabulary")


# ---- a ViT-B/16-sized store, written directly (no feature extraction) ------------------------------------
VIT_NAME = "ViT-B-16"
VIT_TOKENS, VIT_DIM = 197, 512  # ViT-B/16 at 224 px: class token + 14 × 14 patches, joint space 512
NSD_GRID = (81, 104, 83)  # NSD subj01's func1pt8mm grid
NSD_VOXEL_MM = 1.8
CATEGORY_LABELS = {"floc-faces": ("OFA", "FFA-1", "FFA-2"), "floc-places": ("OPA", "PPA", "RSC"),
                   "floc-bodies": ("EBA", "FBA-1"), "floc-words": ("OWFA", "VWFA-1")}


def build_vit_b16_store(root, *, n_images: int = 2000, n_targets: int = 15000, seed: int = 0, log=print):
    """A generic-layout study and its results folder shaped like a ViT-B/16 study on NSD's grid; reused when
    already built. Returns the results folder.

    The study is real files read by the real loader (``n_images`` JPEG photographs of 425 px, responses,
    mask, ROI volumes); the backbone is open_clip's ViT-B-16 with random weights saved as a local checkpoint;
    the token cache (197 × 512 per image, laid out as ``decompose.create_cache_arrays`` lays it), the encoder
    and its accuracy are random arrays written through ``ResultsStore`` so no hour goes to features. The
    general vocabulary's text embeddings are put in the user cache, as a previous session would have left
    them (the text tower embeds its 4,122 prompts in minutes on a laptop CPU).
    """
    from napari_mine.store import ResultsStore

    root = Path(root)
    results = root / "results"
    if (results / "manifest.json").is_file() and ResultsStore.open(results).has("profiles"):
        return results
    rng = np.random.default_rng(seed)
    checkpoint = _random_vit_checkpoint(root / f"{VIT_NAME}-random.safetensors", seed)
    log(f"writing a {n_images}-image study on the {NSD_GRID} grid under {root}")
    dataset = _write_generic_study(root / "study", rng, n_images, n_targets)
    from napari_mine.models.backbone import load_backbone

    backbone = load_backbone(VIT_NAME, checkpoint=checkpoint)
    store = ResultsStore.create(results, model=backbone.record, dataset=dataset.source, checkpoint=checkpoint)
    _write_results(store, dataset, rng, n_targets)
    general = _cache_general_embeddings(backbone.record["id"], rng)
    _write_profiles(store, general, rng, n_targets, n_images)
    return results


def _random_vit_checkpoint(path, seed: int):
    """open_clip's ViT-B-16 with random (seeded) weights, saved as a local safetensors file."""
    if path.is_file():
        return path
    import open_clip
    import torch
    from safetensors.torch import save_file

    from napari_mine.models.backbone import import_torch

    import_torch()
    torch.manual_seed(seed)
    model = open_clip.create_model(VIT_NAME)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({name: value.contiguous() for name, value in model.state_dict().items()}, str(path))
    return path


def _write_generic_study(folder, rng, n_images: int, n_targets: int):
    """Photographs, one response row per image, a mask of ``n_targets`` voxels and category ROIs."""
    import nibabel as nib
    from PIL import Image

    from napari_mine.data import load_generic

    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "rois").mkdir(exist_ok=True)
    affine = np.diag([NSD_VOXEL_MM] * 3 + [1.0])
    affine[:3, 3] = -np.asarray(NSD_GRID) * NSD_VOXEL_MM / 2
    centre = np.array([40, 20, 38])  # the occipital pole's side of the grid: a contiguous block of cortex
    grid = np.indices(NSD_GRID).reshape(3, -1).T
    order = np.argsort(np.linalg.norm((grid - centre) * [1.0, 1.6, 1.0], axis=1), kind="stable")
    mask = np.zeros(int(np.prod(NSD_GRID)), bool)
    mask[order[:n_targets]] = True
    mask = mask.reshape(NSD_GRID)
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), folder / "mask.nii.gz")
    voxels = np.flatnonzero(mask)
    for roi, labels in CATEGORY_LABELS.items():
        volume = np.zeros(mask.size, np.int16)
        chosen = rng.choice(voxels, 300 * len(labels), replace=False).reshape(len(labels), -1)
        for value, members in enumerate(chosen, start=1):
            volume[members] = value
        nib.save(nib.Nifti1Image(volume.reshape(NSD_GRID), affine), folder / "rois" / f"{roi}.nii.gz")
        (folder / "rois" / f"{roi}.ctab").write_text("".join(f"{k} {n}\n" for k, n in enumerate(labels, 1)))
    names = [f"photo_{index:05d}.jpg" for index in range(n_images)]
    for name in names:
        if not (folder / "images" / name).is_file():
            Image.fromarray(_photograph(rng)).save(folder / "images" / name, quality=90)
    split = np.where(rng.random(n_images) < 0.1, "test", "train")
    (folder / "trials.csv").write_text("image,split\n" + "".join(f"{n},{s}\n" for n, s in zip(names, split)))
    np.save(folder / "responses.npy", rng.standard_normal((n_images, n_targets), dtype=np.float32))
    return load_generic(folder)


def _photograph(rng, size: int = 425) -> np.ndarray:
    """A smooth random RGB image (JPEG compresses it as it would a photograph)."""
    from PIL import Image

    coarse = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC))


def _write_results(store, dataset, rng, n_targets: int) -> None:
    """The brain, a token cache of ViT-B/16 shape and an encoder, through the store (atomically)."""
    from napari_mine.decompose import create_cache_arrays
    from napari_mine.pipeline import save_brain
    from napari_mine.store import write_arrays

    save_brain(dataset, store)
    n_images = len(dataset.images)
    with store.write_step("features", {"batch_size": 64, "n_images": n_images}) as group:
        arrays = create_cache_arrays(group, n_images, VIT_TOKENS, VIT_DIM)
        step = arrays["tokens"].chunks[0]
        for start in range(0, n_images, step):
            stop = min(start + step, n_images)
            tokens = rng.standard_normal((stop - start, VIT_TOKENS, VIT_DIM), dtype=np.float32) * 0.02
            rest = rng.standard_normal((stop - start, VIT_DIM), dtype=np.float32) * 0.2
            embedding = tokens.sum(axis=1) + rest
            norm = np.linalg.norm(embedding, axis=1, keepdims=True)
            arrays["tokens"][start:stop] = tokens / norm[:, :, None]
            arrays["rest"][start:stop] = rest / norm
            arrays["features"][start:stop] = embedding / norm
        group.attrs["complete"] = True
        write_arrays(group, {"image_ids": np.asarray(dataset.images.ids)})
    test = np.flatnonzero(np.isin(np.arange(n_images), dataset.test_images))
    r = np.clip(rng.normal(0.25, 0.15, n_targets), -0.2, 0.9).astype(np.float32)
    ceiling = rng.uniform(20, 70, n_targets).astype(np.float32)
    with store.write_step("encoder", {"n_train": n_images - len(test), "n_test": len(test)}) as group:
        weights = rng.standard_normal((VIT_DIM, n_targets), dtype=np.float32)
        write_arrays(group, {
            "weights": weights, "intercept": np.zeros(n_targets, np.float32),
            "alphas": np.ones(n_targets, np.float32), "feature_mean": np.zeros(VIT_DIM, np.float32),
            "feature_scale": np.ones(VIT_DIM, np.float32), "effective_weights": weights,
            "effective_bias": np.zeros(n_targets, np.float32), "test_image_ids": test,
            "accuracy/r": r, "accuracy/noise_ceiling": ceiling,
            "accuracy/normalized_r": (r / np.sqrt(ceiling / 100)).astype(np.float32),
        })


def _cache_general_embeddings(model_id: str, rng) -> None:
    """Unit text embeddings of the general vocabulary in the user cache (random: the weights are random)."""
    from napari_mine import vocabulary

    general = vocabulary.general_vocabulary()
    embeddings = rng.standard_normal((len(general), VIT_DIM)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    vocabulary._write_cache(vocabulary.cache_path(None, model_id, general), embeddings, model_id, general)
    return general


def _write_profiles(store, general, rng, n_targets: int, n_images: int) -> None:
    """Saved profiles in the general vocabulary, laid out as ``pipeline.profile_step`` writes them."""
    from napari_mine import describe
    from napari_mine.store import write_arrays

    record = {"vocabulary": general.name, "vocabulary_digest": general.digest, "top_k": describe.DEFAULT_TOP_K}
    with store.write_step("profiles", record) as group:
        scores = rng.standard_normal((n_targets, len(general)), dtype=np.float32)
        write_arrays(group, {"scores": scores, "baseline": scores[:, ::-1],
                             "top_images": rng.integers(0, n_images, (describe.DEFAULT_TOP_K, n_targets)),
                             "region_mass": rng.uniform(0.3, 0.9, n_targets).astype(np.float32),
                             "voxels": np.arange(n_targets)}, chunk_rows=describe.STORE_VOXEL_BLOCK)
        group.attrs["concepts"] = list(general.concepts)


if __name__ == "__main__":
    main()
