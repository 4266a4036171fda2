"""The study-level HTML report (``STUDY/report.html``): how the subjects of a study compare (DESIGN.md §10).

It shows what :func:`napari_mine.across_subjects.compare_subjects` wrote: per ROI label the agreement of every
pair of subjects (Spearman ρ with its bootstrap CI, the true agreement beside it for a synthetic world), each
subject's ROI profiles side by side, which sub-populations recur, how consistently the subjects describe the
same shared images and, on fsaverage, the map of per-vertex agreement. Each subject's own report stays in its
folder. Figures are PNG files in ``STUDY/figures/``, embedded in the page as report.py does.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np

from napari_mine.across_subjects import SECTION, read_roi_profiles
from napari_mine.errors import MineInputError
from napari_mine.report import offscreen_pyplot, flat_map_figure, write_page
from napari_mine.study import Study

N_PROFILE_ROIS = 4
N_PROFILE_CONCEPTS = 10


def write_study_report(study_root, *, title: str = "napari-mine study", n_profile_rois: int = N_PROFILE_ROIS) -> Path:
    """Write ``report.html`` and its figures into the study folder; returns the page's path."""
    study = Study.open(study_root)
    section = study.summary().get(SECTION)
    if section is None:
        raise MineInputError(f"{study.root} has no cross-subject comparison yet; run "
                             "napari_mine.across_subjects.compare_subjects on it first.")
    saved = read_roi_profiles(study.root)
    figures_dir = study.root / "figures"
    figures_dir.mkdir(exist_ok=True)
    truth = section.get("truth", {})
    figures = [("Agreement of the subjects' ROI profiles (Spearman ρ, bootstrap CI over targets; × the true "
                "agreement over the categories)",
                agreement_figure(section, figures_dir / "subjects_agreement.png")),
               ("Each subject's ROI profile on the shared images (top concepts)",
                roi_profiles_figure(saved, _spread(section["rois"], n_profile_rois),
                                    figures_dir / "subjects_roi_profiles.png"))]
    if "vertex_agreement" in section:
        import nibabel as nib

        values = np.asarray(nib.load(study.root / section["vertex_agreement"]["path"]).dataobj).ravel()
        figures.append(("Per-vertex agreement of the subjects' profiles (mean pairwise Spearman ρ)",
                        flat_map_figure(study.results(study.subjects[0]), values,
                                        figures_dir / "subjects_vertex_agreement.png", cmap="viridis", vmin=-1,
                                        vmax=1, title="profile agreement between subjects", label="mean ρ")))
    blocks = "".join(f"<h2>{html.escape(caption)}</h2><img src='data:image/png;base64,"
                     f"{base64.b64encode(path.read_bytes()).decode()}' style='max-width:100%'>"
                     for caption, path in figures)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}}td,th{{padding:2px 10px;text-align:left}}
table{{border-collapse:collapse}}tr:nth-child(even){{background:#f4f4f4}}
pre{{background:#f4f4f4;padding:1em;overflow:auto}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Subjects {html.escape(', '.join(section['subjects']))}, compared on their {section['n_shared_images']} shared
images in the <b>{html.escape(section['vocabulary'])}</b> vocabulary (top {section['top_k']} shared images per
profile). Images decomposed: {section.get('images_decomposed')} (summed over subjects:
{section.get('images_summed_over_subjects')}).</p>
{_truth_summary(truth)}
<h2>Agreement between subjects (ROI × pair)</h2>{agreement_table(section)}
<h2>Recurring sub-populations (clusters matched by profile)</h2>{recurrence_table(section)}
<h2>Consistency of the descriptions of the same shared images</h2>{consistency_table(section)}
{blocks}
<h2>summary.json: {SECTION}</h2><pre>{html.escape(json.dumps(section, indent=2))}</pre>
</body></html>"""
    return write_page(study.root / "report.html", page)


# ----------------------------------------------------------------------------------------------- tables


def agreement_table(section: dict) -> str:
    """ROI rows × pair columns: ρ [CI], and the true agreement beside it when the truth is known."""
    truth = section.get("truth", {}).get("agreement", {})

    def cell(label: str, pair: str) -> str:
        value = section["agreement"][label][pair]
        text = f"{_number(value['rho'])} [{_number(value['ci'][0])}, {_number(value['ci'][1])}]"
        if label in truth:
            known = truth[label][pair]
            text += f"; categories {_number(known['estimated'])}, true {_number(known['true'])}"
        return text

    return _roi_by_pair(section, cell)


def recurrence_table(section: dict) -> str:
    """ROI rows × pair columns: the matched clusters' r, whether the sub-populations recur (true beside it)."""
    truth = section.get("truth", {}).get("recurrence", {})

    def cell(label: str, pair: str) -> str:
        value = section["recurrence"][label][pair]
        matched = ", ".join(f"{a}↔{b} {_number(r)}" for a, b, r in value["matches"])
        text = f"{'recurs' if value['recurs'] else 'no'} (k {value['k'][0]}/{value['k'][1]}: {matched})"
        if label in truth:
            text += f"; true: {'recurs' if truth[label][pair]['true'] else 'no'}"
        return html.escape(text)

    return (f"<p>A cluster recurs when its one-to-one match reaches r ≥ {section['recurrence_threshold']} "
            "(clusters' mean profiles minus their ROI's); an ROI's sub-populations recur when every cluster of the "
            f"subject with fewer does.</p>{_roi_by_pair(section, cell)}")


def _roi_by_pair(section: dict, cell) -> str:
    """A table of the section's ROIs (rows) by subject pairs (columns), ``cell(label, pair)`` the HTML of each."""
    head = "".join(f"<th>{html.escape(pair)}</th>" for pair in section["pairs"])
    rows = "".join(f"<tr><td>{html.escape(label)}</td>" + "".join(f"<td>{cell(label, pair)}</td>"
                                                                   for pair in section["pairs"]) + "</tr>"
                   for label in section["rois"])
    return f"<table><tr><th>ROI</th>{head}</tr>{rows}</table>"


def consistency_table(section: dict) -> str:
    rows = "".join(f"<tr><td>{html.escape(label)}</td><td>{_number(value)}</td></tr>"
                   for label, value in section["description_consistency"].items())
    return ("<p>Per ROI, the fraction of subject pairs whose descriptions of a shared image have the same top "
            f"concept, averaged over the ROI's top shared images.</p><table><tr><th>ROI</th><th>consistency</th></tr>"
            f"{rows}</table>")


def _truth_summary(truth: dict) -> str:
    if not truth:
        return ""
    accuracy = ", ".join(f"{name} {_number(value)}" for name, value in truth["roi_category_accuracy"].items())
    difference = _number(truth["agreement_mean_abs_difference"])
    return (f"<h2>Against the world's truth</h2><p>ROI category recovered: {html.escape(accuracy)}. Agreement over "
            f"the categories vs the true agreement: mean |difference| {difference}, correlation over ROI × pair "
            f"{_number(truth['agreement_correlation'])}. Recurrence accuracy over ROI × pair: "
            f"{_number(truth['recurrence_accuracy'])}.</p>")


def _number(value) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.2f}"


# ----------------------------------------------------------------------------------------------- figures


def agreement_figure(section: dict, path: Path) -> Path:
    """ρ of every pair per ROI label with its CI as an error bar, the true agreement as a cross when known."""
    plt = offscreen_pyplot()
    labels, pairs = section["rois"], section["pairs"]
    truth = section.get("truth", {}).get("agreement", {})
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(labels) * max(len(pairs), 1) ** 0.5), 3.8))
    width = 0.8 / len(pairs)
    colours = plt.get_cmap("tab10")(np.arange(len(pairs)) % 10)
    for k, (pair, colour) in enumerate(zip(pairs, colours)):
        x = np.arange(len(labels)) + (k - (len(pairs) - 1) / 2) * width
        rho = np.array([_finite(section["agreement"][label][pair]["rho"]) for label in labels])
        ci = np.array([[_finite(v) for v in section["agreement"][label][pair]["ci"]] for label in labels])
        ax.errorbar(x, rho, yerr=np.abs(np.stack([rho - ci[:, 0], ci[:, 1] - rho])), fmt="o", ms=4, color=colour,
                    label=pair, capsize=2)
        known = [label in truth for label in labels]
        if any(known):
            ax.scatter(x[known], [_finite(truth[label][pair]["true"]) for label in labels if label in truth],
                       marker="x", color=colour, s=30)
    ax.set_xticks(np.arange(len(labels)), labels, rotation=60, fontsize=8)
    ax.axhline(0, color="k", lw=0.6)
    lowest = min([v for label in labels for pair in pairs for v in section["agreement"][label][pair]["ci"]
                  if v is not None] + [0.0])
    ax.set(ylabel="Spearman ρ of ROI profiles", ylim=(max(-1.05, lowest - 0.1), 1.05))
    ax.legend(fontsize=7, ncol=min(len(pairs), 4))
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def roi_profiles_figure(saved: dict, labels, path: Path, n_concepts: int = N_PROFILE_CONCEPTS) -> Path:
    """Per ROI label, each subject's profile as bars side by side over the ROI's top concepts (by the mean over
    subjects), so a concept one subject has and another lacks shows at a glance."""
    plt = offscreen_pyplot()
    concepts = np.asarray(saved["concepts"])
    fig, axes = plt.subplots(len(labels), 1, figsize=(7.5, 2.2 * len(labels)), squeeze=False)
    for ax, label in zip(axes[:, 0], labels):
        by_subject = saved["profiles"][label]
        names = list(by_subject)
        values = np.stack([by_subject[name] for name in names])
        shown = np.argsort(-values.mean(axis=0), kind="stable")[:n_concepts]
        width = 0.8 / len(names)
        for k, name in enumerate(names):
            ax.bar(np.arange(len(shown)) + (k - (len(names) - 1) / 2) * width, values[k, shown], width, label=name)
        ax.set_xticks(np.arange(len(shown)), concepts[shown], fontsize=7)
        ax.set_title(label, fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    axes[0, 0].legend(fontsize=7, ncol=min(len(names), 4))
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def _spread(labels, n: int) -> list[str]:
    """``n`` labels evenly spread over the list (the profile step's order runs ROI file by ROI file, so a few
    labels reach several categories)."""
    picks = np.unique(np.linspace(0, len(labels) - 1, min(n, len(labels))).round().astype(int))
    return [labels[i] for i in picks]


def _finite(value) -> float:
    return float("nan") if value is None else float(value)
