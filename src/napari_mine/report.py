"""The HTML report of a results folder: figures a researcher checks before trusting the model.

Figures are written as PNG files beside `report.html` and embedded in it, so the page opens anywhere and
the figures can go into a paper as they are.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np

from napari_mine.results import Results


def offscreen_pyplot():
    """matplotlib.pyplot on the Agg backend: figures are written to files, never shown (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def flat_map_figure(results: Results, values: np.ndarray, path: Path, *, cmap: str, vmin: float, vmax: float,
                    title: str, label: str | None = None) -> Path:
    """Values over a surface's vertices on both hemispheres' flat maps, over the sulcal depth (NaN unshaded)."""
    from napari_mine.surfaces import sulcal_depth

    plt = offscreen_pyplot()
    space = results.space
    fig, axes = plt.subplots(1, len(space.hemispheres), figsize=(6.0 * len(space.hemispheres), 4.4), squeeze=False)
    shown = None
    for ax, (hemi, hemi_values) in zip(axes[0], space.per_hemisphere(np.asarray(values, dtype=float)).items()):
        mesh = space.mesh(hemi, "flat")
        n = mesh.n_vertices  # a coarser mesh draws the first vertices (fsaverage's icosahedral order)
        x, y = mesh.vertices[:, 0], mesh.vertices[:, 1]
        depth = sulcal_depth(hemi, space.layout.freesurfer_dir)[:n]
        ax.tripcolor(x, y, mesh.faces, depth, cmap="gray_r", shading="gouraud", vmin=-3 * depth.std(),
                     vmax=4 * depth.std())
        corners = np.asarray(hemi_values[:n])[mesh.faces]
        finite = np.isfinite(corners)
        face_values = np.where(finite.any(axis=1), np.where(finite, corners, 0).sum(axis=1) /
                               np.maximum(finite.sum(axis=1), 1), np.nan)
        drawn = np.isfinite(face_values)
        if drawn.any():
            shown = ax.tripcolor(x, y, mesh.faces[drawn], facecolors=face_values[drawn], cmap=cmap, vmin=vmin,
                                 vmax=vmax)
        ax.set_title(f"{hemi} (flat)", fontsize=9)
        ax.set_aspect("equal")
        ax.axis("off")
    if shown is not None and label:
        fig.colorbar(shown, ax=axes, shrink=0.7, label=label)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def accuracy_slices_figure(results: Results, path: Path, n_slices: int = 6) -> Path:
    """The noise-ceiling-normalised r over the anatomy: axial slices, or the flat cortex for surface results."""
    if results.space.kind == "surface":
        return flat_map_figure(results, results.space.unmask(results.accuracy["normalized_r"]), path,
                               cmap="inferno", vmin=0, vmax=1, title="Held-out accuracy on the flat cortex",
                               label="noise-ceiling-normalised r")
    plt = offscreen_pyplot()
    mask = results.space.mask
    volume = results.space.unmask(results.accuracy["normalized_r"]).astype(np.float32)
    anatomy = results.anatomy()
    anatomy = mask.astype(np.float32) if anatomy is None else anatomy
    z_with_voxels = np.flatnonzero(mask.any(axis=(0, 1)))
    slices = np.linspace(z_with_voxels.min(), z_with_voxels.max(), n_slices).round().astype(int)
    fig, axes = plt.subplots(1, n_slices, figsize=(2.4 * n_slices, 3.0))
    for ax, z in zip(np.atleast_1d(axes), slices):
        ax.imshow(anatomy[:, :, z].T, cmap="gray", origin="lower")
        image = ax.imshow(volume[:, :, z].T, cmap="inferno", vmin=0, vmax=1, origin="lower")
        ax.set_title(f"z = {z}", fontsize=9)
        ax.axis("off")
    fig.colorbar(image, ax=axes, shrink=0.8, label="noise-ceiling-normalised r")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def accuracy_by_roi_figure(results: Results, roi_of_voxel: np.ndarray, path: Path) -> Path:
    """Test r against the noise ceiling (sqrt NC) per ROI: how much explainable signal the model reaches."""
    plt = offscreen_pyplot()
    accuracy = results.accuracy
    r = accuracy["r"]
    ceiling = np.sqrt(np.clip(accuracy["noise_ceiling"], 0, None) / 100)
    names = sorted({n for n in roi_of_voxel if n})
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    colours = plt.get_cmap("tab20")(np.linspace(0, 1, max(len(names), 1)))
    for colour, name in zip(colours, names):
        inside = roi_of_voxel == name
        left.scatter(ceiling[inside], r[inside], s=5, color=colour, label=name, alpha=0.7)
    left.plot([0, 1], [0, 1], "k--", lw=1)
    left.set(xlabel="noise ceiling (sqrt NC)", ylabel="test r", title="voxels: accuracy vs ceiling")
    left.legend(fontsize=7, ncol=2, markerscale=2)
    nc_r = accuracy["normalized_r"]
    data = [nc_r[(roi_of_voxel == name) & np.isfinite(nc_r)] for name in names]
    right.boxplot(data, showfliers=False)
    right.set_xticks(range(1, len(names) + 1), names, rotation=60, fontsize=8)
    right.axhline(1.0, color="k", lw=0.8, ls="--")
    right.set(ylabel="noise-ceiling-normalised r", title="per ROI")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def best_voxel_per_roi(results: Results, roi_of_voxel: np.ndarray, rois) -> dict[str, int]:
    """The most accurately predicted voxel (noise-ceiling-normalised r) of each ROI in `rois` that has voxels."""
    nc_r = np.nan_to_num(results.accuracy["normalized_r"], nan=-np.inf)
    best = {}
    for name in rois:
        inside = np.flatnonzero(roi_of_voxel == name)
        if inside.size:
            best[name] = int(inside[np.argmax(nc_r[inside])])
    return best


def attribution_overlays_figure(results: Results, images, voxels: dict[str, int], path: Path, k: int = 4) -> Path:
    """Each ROI's best voxel: its top-k images (by prediction) with the exact attribution map over them."""
    from napari_mine.attribution import upsample

    plt = offscreen_pyplot()
    fig, axes = plt.subplots(len(voxels), k, figsize=(1.9 * k, 2.0 * len(voxels)), squeeze=False)
    for row, (roi, voxel) in enumerate(voxels.items()):
        rows, _ = results.top_images(voxel, k=k)
        for ax, image_row in zip(axes[row], rows):
            image = images[int(image_row)]
            grid = results.image_map(voxel, int(image_row)).grid_map
            heat = upsample(grid, image.shape[:2])
            limit = max(float(np.abs(heat).max()), 1e-12)
            ax.imshow(image)
            ax.imshow(heat, cmap="RdBu_r", vmin=-limit, vmax=limit, alpha=0.55)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(f"{roi}\nvoxel {voxel}", fontsize=8)
    fig.suptitle("Exact attribution (red raises the predicted response) on each ROI's top images", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def profile_charts_figure(profiles_by_name: dict[str, list[tuple[str, float]]], path: Path, title: str) -> Path:
    """Horizontal bar charts of ranked concept profiles, one panel per ROI or voxel."""
    plt = offscreen_pyplot()
    names = list(profiles_by_name)
    columns = min(4, max(len(names), 1))
    rows = int(np.ceil(len(names) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.2 * rows), squeeze=False)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.ravel(), names):
        concepts, values = zip(*profiles_by_name[name]) if profiles_by_name[name] else ((), ())
        ax.barh(range(len(values))[::-1], values, color="tab:orange")
        ax.set_yticks(range(len(values))[::-1], concepts, fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def cluster_map_figure(results: Results, clusters: np.ndarray, path: Path, n_slices: int = 6) -> Path:
    """Within-ROI sub-populations (labels over the sites) on the slices that hold them, or the flat cortex."""
    if results.space.kind == "surface":
        return flat_map_figure(results, np.where(clusters > 0, clusters, np.nan), path, cmap="tab10", vmin=0.5,
                               vmax=10.5, title="Within-ROI sub-populations (clusters of vertex profiles; colour = "
                                                "cluster)")
    plt = offscreen_pyplot()
    anatomy = results.anatomy()
    anatomy = results.space.mask.astype(float) if anatomy is None else anatomy
    z_with = np.flatnonzero((clusters > 0).any(axis=(0, 1)))
    slices = np.unique(np.linspace(z_with.min(), z_with.max(), n_slices).round().astype(int)) if z_with.size \
        else np.array([clusters.shape[2] // 2])
    fig, axes = plt.subplots(1, len(slices), figsize=(2.4 * len(slices), 3.0), squeeze=False)
    shown = np.where(clusters > 0, clusters, np.nan).astype(float)
    for ax, z in zip(axes[0], slices):
        ax.imshow(anatomy[:, :, z].T, cmap="gray", origin="lower")
        ax.imshow(shown[:, :, z].T, cmap="tab10", vmin=0.5, vmax=10.5, origin="lower", interpolation="nearest")
        ax.set_title(f"z = {z}", fontsize=9)
        ax.axis("off")
    fig.suptitle("Within-ROI sub-populations (clusters of voxel profiles; colour = cluster)", fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def write_report(results: Results, roi_of_voxel: np.ndarray, summary: dict, title: str = "napari-mine",
                 extra_figures: list[tuple[str, Path]] = (), extra_html: str = "") -> Path:
    """Write `report.html` (and its figures) into the store's folder; returns the page's path."""
    figures_dir = results.root / "figures"
    figures_dir.mkdir(exist_ok=True)
    figures = [
        ("Accuracy map (noise-ceiling-normalised r over the anatomy)",
         accuracy_slices_figure(results, figures_dir / "accuracy_slices.png")),
        ("Accuracy against the noise ceiling, per ROI",
         accuracy_by_roi_figure(results, roi_of_voxel, figures_dir / "accuracy_by_roi.png")),
        *extra_figures,
    ]
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{value:.3f}</td></tr>"
        for name, value in summary.get("encoder", {}).get("median_nc_r_by_roi", {}).items()
        if value is not None
    )
    blocks = "".join(
        f"<h2>{html.escape(caption)}</h2><img src='data:image/png;base64,"
        f"{base64.b64encode(path.read_bytes()).decode()}' style='max-width:100%'>"
        for caption, path in figures
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}td{{padding:2px 12px}}
pre{{background:#f4f4f4;padding:1em;overflow:auto}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Model <b>{html.escape(results.manifest.model.name)}</b>; decomposition max relative error
{summary.get('decomposition_max_rel_error', float('nan')):.2e}.</p>
<h2>Median noise-ceiling-normalised r per ROI (held-out images)</h2><table>{rows}</table>
{blocks}
{extra_html}
<h2>summary.json</h2><pre>{html.escape(json.dumps(summary, indent=2))}</pre>
</body></html>"""
    return write_page(results.root / "report.html", page)


def write_page(path: Path, page: str) -> Path:
    """Write an HTML page atomically (a reader never sees half a report)."""
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(page)
    tmp.replace(path)
    return path
