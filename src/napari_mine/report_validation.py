"""Figures and tables of the causal validation for the report (DESIGN.md §1 step 5).

:func:`save_strips` draws example strips from the experiments' results (original · attribution overlay ·
generated or edited image, with the predicted and, on the synthetic world, the true response);
:func:`validation_html` turns ``summary.json["validation"]`` into an HTML fragment (tables, and the strips
embedded), so a report can be rebuilt from the summary alone.
"""

from __future__ import annotations

import base64
import html
import os
import tempfile
from pathlib import Path

import numpy as np

CONDITION_NAMES = {"mine": "MINE description", "random": "random concepts", "low_attribution": "low-attribution region"}
EDIT_ROWS = (("removal_sign_accuracy", "removal (Δ < 0)"), ("insertion_sign_accuracy", "insertion (Δ > 0)"),
             ("profile_insertion", "profile-guided insertion (Δ > 0)"))
PANEL_INCHES = 1.9


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


# ----------------------------------------------------------------------------------------------- strips


def save_strips(folder, results: dict, n_examples: int = 4) -> dict:
    """One PNG strip per experiment, ``<folder>/validation_<experiment>.png``, written atomically.

    Parameters
    ----------
    folder : path
        Usually ``<store>/figures``.
    results : dict
        Experiment name → result of ``validate.sufficiency`` / ``removal`` / ``insertion``.
    n_examples : int
        Pairs shown (the first ones, which are a seeded random sample already).

    Returns
    -------
    dict experiment → path of its PNG relative to ``folder``'s parent (the store's root).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, result in results.items():
        rows = _strip_rows(result, n_examples)
        if rows:
            path = folder / f"validation_{name}.png"
            _draw_strip(rows, path, _strip_title(name, result))
            paths[name] = f"{folder.name}/{path.name}"
    return paths


def _strip_title(name: str, result: dict) -> str:
    if name == "sufficiency":
        return "Sufficiency: images generated from descriptions alone (responses relative to the voxel's mean)"
    if name == "removal":
        return "Counterfactual removal of the high-attribution feature"
    source = "the voxel's profile" if result.get("concept_source") == "profile" else "the per-image description"
    return f"Insertion of {source} into low-response images"


def _strip_rows(result: dict, n_examples: int) -> list[list[dict]]:
    """Panels (image, title, optional attribution map and mask) of the first ``n_examples`` pairs."""
    rows = []
    for i in range(min(int(n_examples), len(result["row"]))):
        label = result["roi"][i] if result.get("roi") is not None else ""
        head = f"voxel {result['voxel'][i]} {label}".strip()
        original = {"image": result["original"][i], "title": f"{head}\n{_responses(result, i, None)}"}
        overlay = {"image": result["original"][i], "map": result["attribution"][i],
                   "mask": result["masks"][i] if "masks" in result else None, "title": "attribution"}
        if result["kind"] == "sufficiency":
            overlay["title"] = _wrap(result["descriptions"]["mine"][i])
            panels = [original, overlay]
            for name, condition in result["conditions"].items():
                panels.append({"image": condition["images"][i],
                               "title": f"{CONDITION_NAMES.get(name, name)}\n{_wrap(condition['text'][i])}\n"
                                        f"{_responses(condition, i, None)}"})
        elif result["kind"] == "removal":
            removed = f"removed: {result['removed'][i]}\n" if "removed" in result else ""
            panels = [original, overlay, {"image": result["conditions"]["edited"]["images"][i],
                                          "title": f"{removed}{_responses(result['conditions']['edited'], i, 'Δ')}"}]
            original["title"] = head
        else:
            original["title"] = f"{head}\ntop image"
            target = {"image": result["target"][i], "title": "low-response image"}
            change = result["conditions"]["edited"]
            edited = {"image": change["images"][i],
                      "title": f"+ {_wrap(result['concepts'][i])}\n{_responses(change, i, 'Δ')}"}
            panels = [original, overlay, target, edited]
        rows.append(panels)
    return rows


def _responses(values: dict, i: int, prefix: str | None) -> str:
    """"ŷ +0.42 · true +0.31" (or Δ…) for pair ``i`` of a result or condition."""
    if "predicted_original" in values:
        predicted, true = values["predicted_original"], values.get("true_original")
    else:
        predicted, true = values["predicted"], values.get("true")
    mark = prefix or ""
    text = f"{mark}ŷ {predicted[i]:+.3f}"
    return text + (f" · {mark}true {true[i]:+.3f}" if true is not None else "")


def _wrap(text: str, width: int = 26) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)[:2]) if text else "(empty)"


def _draw_strip(rows: list[list[dict]], path: Path, title: str) -> None:
    from napari_mine.attribution import upsample

    plt = _pyplot()
    n_cols = max(len(row) for row in rows)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(PANEL_INCHES * n_cols, (PANEL_INCHES + 0.55) * len(rows)),
                             squeeze=False)
    for axes_row, panels in zip(axes, rows):
        for ax, panel in zip(axes_row, panels + [None] * (n_cols - len(panels))):
            ax.axis("off")
            if panel is None:
                continue
            image = panel["image"]
            ax.imshow(image)
            if panel.get("map") is not None:
                values = upsample(panel["map"], image.shape[:2])
                limit = float(np.abs(values).max()) or 1.0
                ax.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit, alpha=0.55)
            if panel.get("mask") is not None:
                ax.contour(panel["mask"], levels=[0.5], colors="yellow", linewidths=1.0)
            ax.set_title(panel["title"], fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save_atomic(fig, path)
    plt.close(fig)


def _save_atomic(fig, path: Path) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(handle)
    try:
        fig.savefig(temporary, dpi=110)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


# ----------------------------------------------------------------------------------------------- tables


def validation_html(validation: dict, root=None) -> str:
    """An HTML fragment with the validation tables (and the strips, embedded, when ``root`` is given).

    Parameters
    ----------
    validation : dict
        ``summary.json["validation"]`` as ``validate.run_validation`` writes it.
    root : path, optional
        The store's root, where the strips' relative paths point.

    Returns
    -------
    str
    """
    kinds = [kind for kind in ("predicted", "true") if kind in validation.get("sufficiency", {})]
    parts = ["<h2>Causal validation</h2>"]
    if not validation.get("complete", False):
        parts.append("<p><b>Incomplete:</b> the validation run stopped before its last experiment.</p>")
    parts.append(f"<p>{validation.get('n_pairs', 0)} (voxel, image) pairs from the top images of category voxels; "
                 "95 % bootstrap intervals (resampling voxels) in brackets; p-values test MINE against each "
                 "control (Wilcoxon signed-rank on per-voxel mean absolute errors, paired voxel bootstrap on the "
                 "correlation). r within voxels: responses centred on each voxel's pairs.</p>")
    for kind in kinds:
        parts.append(_sufficiency_table(validation["sufficiency"][kind], kind))
    parts.append(_edit_table(validation, kinds))
    for name, relative in (validation.get("figures") or {}).items():
        path = Path(root) / relative if root is not None else None
        if path is not None and path.is_file():
            data = base64.b64encode(path.read_bytes()).decode()
            parts.append(f"<h3>{html.escape(name.replace('_', ' '))}</h3>"
                         f"<img src='data:image/png;base64,{data}' style='max-width:100%'>")
    return "\n".join(parts)


def _sufficiency_table(entries: dict, kind: str) -> str:
    head = ("<tr><th>generated from</th><th>r (original vs generated)</th><th>r within voxels</th><th>MAE</th>"
            "<th>p (MAE)</th><th>p (r)</th></tr>")
    rows = "".join(
        f"<tr><td>{html.escape(CONDITION_NAMES.get(name, name))}</td>"
        f"<td>{_with_ci(entry.get('correlation'), entry.get('correlation_ci'))}</td>"
        f"<td>{_with_ci(entry.get('correlation_within_voxel'), entry.get('correlation_within_voxel_ci'))}</td>"
        f"<td>{_with_ci(entry.get('mae'), entry.get('mae_ci'))}</td>"
        f"<td>{_p(entry.get('p_mae'))}</td><td>{_p(entry.get('p_correlation'))}</td></tr>"
        for name, entry in entries.items())
    return f"<h3>Sufficiency ({_kind_name(kind)})</h3><table>{head}{rows}</table>"


def _edit_table(validation: dict, kinds: list[str]) -> str:
    columns = "".join(f"<th>sign accuracy ({_kind_name(k)})</th><th>mean Δ ({_kind_name(k)})</th>" for k in kinds)
    head = f"<tr><th>edit</th>{columns}<th>n</th></tr>"
    rows = ""
    for key, label in EDIT_ROWS:
        entry = validation.get(key)
        if not entry:
            continue
        cells = "".join(f"<td>{_with_ci(entry[k].get('value'), entry[k].get('ci'))}</td>"
                        f"<td>{_with_ci(entry[k].get('mean_delta'), entry[k].get('mean_delta_ci'))}</td>"
                        for k in kinds if k in entry)
        rows += f"<tr><td>{label}</td>{cells}<td>{entry.get('predicted', {}).get('n', '–')}</td></tr>"
    ratio = validation.get("profile_vs_image_insertion_delta_ratio")
    if ratio:
        cells = "".join(f"<td colspan=2>{_with_ci(ratio[k].get('value'), ratio[k].get('ci'))}</td>"
                        for k in kinds if k in ratio)
        n = ratio.get("predicted", {}).get("n", "–")
        rows += f"<tr><td>Δ profile / Δ per-image insertion</td>{cells}<td>{n}</td></tr>"
    hit = (validation.get("removal_sign_accuracy") or {}).get("removed_driving_object")
    note = (f"<p>Removals that took out the object that truly drives the voxel most: {hit:.0%}.</p>"
            if hit is not None else "")
    return f"<h3>Counterfactual edits</h3><table>{head}{rows}</table>{note}"


def _kind_name(kind: str) -> str:
    return "encoder" if kind == "predicted" else "true brain"


def _with_ci(value, ci) -> str:
    if value is None:
        return "–"
    low, high = ci if ci else (None, None)
    interval = f" [{low:.2f}, {high:.2f}]" if low is not None and high is not None else ""
    return f"{value:.2f}{interval}"


def _p(value) -> str:
    if value is None:
        return "–"
    return f"{value:.1e}" if value < 1e-3 else f"{value:.3f}"
