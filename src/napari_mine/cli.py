"""`napari-mine`: the MINE steps from the command line, each a thin shell over one library function."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from pathlib import Path

from napari_mine.errors import MineInputError

SPACES = ("volume", "fsaverage")  # where the targets are: voxels of a grid, or vertices of fsaverage


def _progress(label: str, unit: str):
    """A step's ``on_progress(done, total)`` as a tqdm bar with its rate and time left, on stderr.

    The bar starts at the first report: a resumed step first reports what was already done, so the rate and
    time left count this run's work only. Off a terminal it redraws every 10 s, not every chunk.
    """
    from tqdm import tqdm

    bars: list = []

    def show(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, initial=done, desc=label, unit=unit, file=sys.stderr, dynamic_ncols=True,
                             mininterval=0.5 if sys.stderr.isatty() else 10.0))
        bar = bars[0]
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return show


@contextlib.contextmanager
def _dask_client(address: str | None, what: str):
    """The Dask client of ``--dask ADDRESS`` (None without it), closed at the end."""
    if not address:
        yield None
        return
    from napari_mine.distributed import connect

    client = connect(address)
    print(f"{what} on the Dask cluster {client.dashboard_link}", file=sys.stderr)
    try:
        yield client
    finally:
        client.close()


def _concept_space(results, vocabulary: str | None, checkpoint: str | None):
    """The vocabulary embedded by the results' model, with a progress bar when it is not cached yet."""
    from napari_mine.vocabulary import concept_space, vocabulary_named

    name = vocabulary or results.default_vocabulary()
    space = concept_space(vocabulary_named(name), results.backbone(checkpoint),
                          on_progress=_progress("vocabulary", "prompt"))
    results.check_model(space.model_id)
    return space


def _load_dataset(path: str, layout: str, subject: int, space: str = "volume", sessions: int | None = None):
    from napari_mine.data import load_generic, load_generic_surface, load_nsd, load_nsd_surface

    if layout == "nsd" or (layout == "auto" and _looks_like_nsd(Path(path))):
        chosen = None if sessions is None else range(1, sessions + 1)
        loader = load_nsd_surface if space == "fsaverage" else load_nsd
        return loader(path, subject=subject, sessions=chosen)
    if sessions is not None:
        raise MineInputError("--sessions counts NSD sessions; a generic folder has none (leave --sessions out).")
    return load_generic_surface(path) if space == "fsaverage" else load_generic(path)


def _looks_like_nsd(path: Path) -> bool:
    return any(path.glob("**/nsd_expdesign.mat"))


def cmd_world(args) -> None:
    from napari_mine.synthetic.write_nsd import write_world

    info = write_world(args.out, seed=args.seed, n_images=args.images, n_subjects=args.subjects, space=args.space)
    print(f"wrote a synthetic world in the NSD layout to {args.out}: {info.n_subjects} subject(s), {info.n_images} "
          f"images each ({info.n_shared} shared), {info.n_stimuli} stimuli, space {info.space}")
    for subject in info.subjects:
        surface = f", {subject.n_vertices} vertices" if subject.n_vertices else ""
        print(f"  subj{subject.subject:02d}: {subject.n_sessions} sessions, {subject.n_trials} trials, "
              f"{subject.n_images_shown} images shown, {subject.n_voxels} voxels on a {subject.shape} grid{surface}")


def cmd_features(args) -> None:
    from napari_mine.models.backbone import load_backbone
    from napari_mine.pipeline import compute_features
    from napari_mine.store import ResultsStore
    from napari_mine.study import parse_subjects

    subjects = parse_subjects(args.subject)
    if subjects == "all" or len(subjects) > 1:
        return _study_features(args, subjects)
    dataset = _load_dataset(args.data, args.layout, subjects[0], args.space, args.sessions)
    backbone = load_backbone(args.model, pretrained=args.pretrained, checkpoint=args.checkpoint, device=args.device)
    with _dask_client(args.dask, "decomposing") as client:
        store = ResultsStore.create(args.out, model=backbone.record, dataset=dataset.source,
                                    checkpoint=args.checkpoint)
        n = compute_features(dataset, backbone, store, batch_size=args.batch_size, client=client,
                             checkpoint=args.checkpoint, token_dtype=args.token_dtype,
                             on_progress=_progress("features", "image"), force=args.force)
    print(f"features and token contributions of {n} images written to {store.root}")


def _study_features(args, subjects) -> None:
    """``features --subject 1 2 5`` (or all): one study folder, every unique stimulus decomposed once."""
    from napari_mine.data.nsd import nsd_study_subjects
    from napari_mine.models.backbone import load_backbone
    from napari_mine.study_steps import compute_study_features

    if args.layout == "generic" or not _looks_like_nsd(Path(args.data)):
        raise MineInputError(f"--subject with several subjects needs an NSD root (with nsd_expdesign.mat); {args.data} "
                             "is not one.")
    subjects = nsd_study_subjects(args.data, subjects, args.space)
    backbone = load_backbone(args.model, pretrained=args.pretrained, checkpoint=args.checkpoint, device=args.device)

    def load(subject: int):
        print(f"loading subj{subject:02d}", file=sys.stderr)
        try:
            return _load_dataset(args.data, "nsd", subject, args.space, args.sessions)
        except MineInputError as error:
            raise MineInputError(f"subj{subject:02d}: {error}") from None

    with _dask_client(args.dask, "decomposing") as client:
        counts = compute_study_features(load, subjects, backbone, args.out, space=args.space,
                                        batch_size=args.batch_size, client=client, checkpoint=args.checkpoint,
                                        token_dtype=args.token_dtype, on_progress=_progress("features", "image"),
                                        force=args.force)
    print(f"study of {len(subjects)} subjects in {args.out}: {counts['images_decomposed']} unique images decomposed "
          f"for {counts['images_summed_over_subjects']} subject images")


def cmd_fit(args) -> None:
    from napari_mine.pipeline import fit_encoder_step
    from napari_mine.results import Results
    from napari_mine.store import ResultsStore
    from napari_mine.study import is_study

    if is_study(args.results):
        return _study_fit(args)
    dataset = Results.open(args.results).dataset()
    _print_fit(fit_encoder_step(dataset, ResultsStore.open(args.results), on_progress=_progress("fit", "voxel")))


def _print_fit(summary: dict, prefix: str = "") -> None:
    with_ceiling = summary["median_nc_r_all"] is not None
    measure, key = ("noise-ceiling-normalised r", "median_nc_r_by_roi") if with_ceiling else ("r", "median_r_by_roi")
    for name, value in summary[key].items():
        name = f"{prefix}{name}"
        print(f"{name:>18}: median {measure} = {value:.3f}" if value is not None else f"{name:>18}: no finite value")


def _study_fit(args) -> None:
    from napari_mine.study_steps import fit_study

    with _dask_client(args.dask, "fitting the subjects") as client:
        summaries = fit_study(args.results, client=client, on_progress=_progress("fit", "subject"))
    for subject, summary in summaries.items():
        _print_fit(summary, prefix=f"subj{subject:02d} ")


def cmd_attribute(args) -> None:
    import numpy as np

    from napari_mine.results import Results

    results = Results.open(args.results)
    results.require("encoder", "run `napari-mine fit` first.")
    attribution = results.image_map(args.voxel, args.image)
    np.save(args.out, attribution.grid_map)
    side = attribution.grid_map.shape
    print(f"image {args.image}, voxel {args.voxel}: predicted {attribution.predicted:.3f}; patch terms carry "
          f"{100 * attribution.spatial_fraction:.1f}% of the attribution; {side[0]}x{side[1]} map written to {args.out}")


def cmd_describe(args) -> None:
    from napari_mine.results import Results

    results = Results.open(args.results)
    space = _concept_space(results, args.vocabulary, args.checkpoint)
    description = results.describe(args.image, args.voxel, space)
    print(f"image {args.image}, voxel {args.voxel}: {description.text or '(no positive attribution)'}")
    for concept, score in zip(description.concepts, description.scores):
        print(f"  {score:7.3f}  {concept}")


def cmd_profile(args) -> None:
    from napari_mine.describe import top_concepts
    from napari_mine.pipeline import profile_step
    from napari_mine.results import Results
    from napari_mine.store import ResultsStore

    from napari_mine.study import Study, is_study

    folders = [r.root for _, r in Study.open(args.results).items()] if is_study(args.results) else [args.results]
    space = _concept_space(Results.open(folders[0]), args.vocabulary, args.checkpoint)
    with _dask_client(args.dask, "profiling") as client:
        for folder in folders:
            store = ResultsStore.open(folder)
            profiles, by_label = profile_step(store, space, top_k=args.top_k, rois=args.roi or None, seed=args.seed,
                                              client=client,
                                              on_progress=_progress(f"profiles {store.root.name}", "target"),
                                              force=args.force)
            print(f"profiles of {len(profiles.voxels)} voxels written to {store.root / 'profiles.zarr'}")
            for roi in by_label:
                concepts = ", ".join(f"{c} ({v:.2f})" for c, v in top_concepts(roi.profile, profiles.concepts, 3))
                print(f"{roi.label:>10}: {concepts}; {roi.clustering.k} sub-populations -> {roi.path}")
    if is_study(args.results):
        _compare_subjects(args.results, space, args.seed)


def _compare_subjects(root, space, seed: int) -> None:
    """A study's profiles compared between subjects on their shared images, and the study's report."""
    from napari_mine.across_subjects import compare_subjects
    from napari_mine.report_study import write_study_report

    section = compare_subjects(root, space, seed=seed, on_progress=_progress("comparison", "subject"))
    print(f"subjects compared on {section['n_shared_images']} shared images: mean ROI profile agreement "
          f"{_number(section['mean_agreement'])}, sub-populations recurring in {_number(section['recurrence_rate'])} "
          f"of ROI pairs, description consistency {_number(section['mean_description_consistency'])}")
    print(f"study report: {write_study_report(root)}")


def _number(value) -> str:
    return "–" if value is None else f"{value:.2f}"


def cmd_validate(args) -> None:
    from napari_mine.study import Study, is_study

    if is_study(args.results):
        for _, subject in Study.open(args.results).items():
            print(f"{subject.root.name}:")
            _validate_folder(args, subject.root)
        return
    _validate_folder(args, args.results)


def _validate_folder(args, folder) -> None:
    from napari_mine.pipeline import validate_step
    from napari_mine.results import Results

    results = Results.open(folder)
    generator = None
    if args.generator == "diffusers":
        from napari_mine.generate import DiffusionGenerator

        if not args.model:
            raise MineInputError("--generator diffusers needs --model: a diffusers model id in your cache or a "
                                 "local folder saved with save_pretrained.")
        generator = DiffusionGenerator.load(args.model, edit_model=args.edit_model, steps=args.steps)
    with _dask_client(args.dask, "validating") as client:
        summary = validate_step(results, generator=generator, backbone=results.backbone(args.checkpoint),
                                seed=args.seed, n_voxels=args.voxels, client=client, checkpoint=args.checkpoint,
                                on_progress=_progress("validation", "pair"), force=args.force)
    for name in ("removal_sign_accuracy", "insertion_sign_accuracy", "profile_vs_image_insertion_delta_ratio"):
        print(f"{name}: {summary.get(name)}")
    print(f"validation written to {results.root / 'summary.json'} and {results.root / 'figures'}")


def cmd_export(args) -> None:
    import numpy as np

    from napari_mine.export import export_maps
    from napari_mine.results import Results

    values = None
    if args.values:
        try:
            values = np.load(args.values, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise MineInputError(f"{args.values} cannot be read as a .npy array ({error}); save the per-target "
                                 "values with numpy.save.") from None
    paths = export_maps(Results.open(args.results), args.map, args.format, args.out, values=values,
                        label=Path(args.values).stem if args.values else None, on_fsaverage=args.on_fsaverage)
    for path in paths:
        print(path)


def cmd_evaluate(args) -> None:
    from napari_mine.evaluate import evaluate

    path = evaluate(args.out, args.seeds, n_images=args.images, workers=args.workers, log=print)
    evaluation = json.loads(path.read_text())
    missed = [aim["score"] for aim in evaluation["aims"] if not aim["met"]]
    print(f"{path} and {path.with_suffix('.md')}: {len(evaluation['aims']) - len(missed)} of "
          f"{len(evaluation['aims'])} aims met on the worst {evaluation['judged_on']} seed"
          + (f"; missed: {', '.join(missed)}" if missed else ""))


def cmd_view(args) -> None:
    from napari_mine.viewer import view_results

    view_results(args.results, on_fsaverage=args.on_fsaverage)


def cmd_demo(args) -> None:
    from napari_mine.demo import run_demo

    if args.subjects > 1:
        return _study_demo(args)
    summary_path = run_demo(args.out, seed=args.seed, n_images=args.images, space=args.space, log=print)
    print(f"demo finished: {Path(args.out) / 'report.html'} and {summary_path}")
    if args.view:
        from napari_mine.viewer import view_results

        view_results(args.out)


def _study_demo(args) -> None:
    from napari_mine.demo_study import run_study_demo

    with _dask_client(args.dask, "fitting the subjects") as client:
        summary_path = run_study_demo(args.out, n_subjects=args.subjects, seed=args.seed, n_images=args.images,
                                      space=args.space, client=client, log=print)
    print(f"study demo finished: {Path(args.out) / 'report.html'} and {summary_path}")
    if args.view:
        from napari_mine.viewer import view_results

        view_results(args.out)


def _general_size() -> int:
    """The number of concepts in the shipped general vocabulary (counted, so the help never goes stale)."""
    from napari_mine.vocabulary import GENERAL_VOCABULARY_FILE, read_concepts

    return len(read_concepts(GENERAL_VOCABULARY_FILE))


FORCE_HELP = ("recompute even if the step is done with these settings (an interrupted run resumes without it, "
              "from its last complete chunk)")
DASK_HELP = ("run the {what} as tasks of a Dask cluster: a scheduler address (tcp://host:8786) or 'local'; its "
             "workers must see the results folder")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-mine", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    world = commands.add_parser("world", help="write a synthetic ground-truth world in the NSD layout")
    world.add_argument("out")
    world.add_argument("--seed", type=int, default=0)
    world.add_argument("--images", type=int, default=2500, help="images per subject")
    world.add_argument("--subjects", type=int, default=1,
                       help="subjects of a study (NSD has 8): all see the shared images, each its own as well")
    world.add_argument("--space", choices=SPACES, default="volume",
                       help="fsaverage: write the same subject on fsaverage5 too (NSD's surface betas, labels and "
                            "volume-to-surface transforms)")
    world.set_defaults(run=cmd_world)

    features = commands.add_parser("features", help="CLIP features and exact token contributions of every image")
    features.add_argument("data", help="an NSD root folder or a generic folder (images + responses + table)")
    features.add_argument("--out", required=True, help="the results folder to create or add to")
    features.add_argument("--layout", choices=["auto", "nsd", "generic"], default="auto")
    features.add_argument("--subject", nargs="+", default=["1"], metavar="N",
                          help="NSD subject number(s), or all: several subjects make a study folder whose unique "
                               "images are decomposed once")
    features.add_argument("--sessions", type=int, default=None, metavar="N",
                          help="use each subject's first N sessions (default: every session found)")
    features.add_argument("--space", choices=SPACES, default="volume",
                          help="volume (voxels, the default) or fsaverage (vertices of both hemispheres: NSD's "
                               "{lh,rh}.betas_sessionNN.mgh, or a generic folder's per-vertex responses)")
    features.add_argument("--model", default="mine-small", help="mine-small or any open_clip model name")
    features.add_argument("--pretrained", default=None, help="open_clip pretrained tag, e.g. laion2b_s34b_b88k")
    features.add_argument("--checkpoint", default=None, help="a local weights file (no download)")
    features.add_argument("--device", default="auto", help="cpu, cuda or auto")
    features.add_argument("--batch-size", type=int, default=64)
    features.add_argument("--token-dtype", choices=["float32", "float16"], default="float32",
                          help="how the token contribution cache is stored: float32 (exact, default) or float16 "
                               "(half the disk; its error in docs/benchmarks.md)")
    features.add_argument("--dask", default=None, metavar="ADDRESS",
                          help="decompose on a Dask cluster: a scheduler address (tcp://host:8786) or 'local'; "
                               "its workers must see the results folder and the images")
    features.add_argument("--force", action="store_true", help=FORCE_HELP)
    features.set_defaults(run=cmd_features)

    fit = commands.add_parser("fit", help="fit the voxelwise ridge encoder and score it against the noise ceiling")
    fit.add_argument("results", help="a results folder, or a study folder (every subject is fitted)")
    fit.add_argument("--dask", default=None, metavar="ADDRESS",
                     help="fit a study's subjects in parallel on a Dask cluster: a scheduler address or 'local'")
    fit.set_defaults(run=cmd_fit)

    attribute = commands.add_parser("attribute", help="exact patch attribution of one (image, voxel)")
    attribute.add_argument("results")
    attribute.add_argument("--image", type=int, required=True, help="image row in the results store")
    attribute.add_argument("--voxel", type=int, required=True, help="voxel index among the encoder's voxels")
    attribute.add_argument("--out", default="attribution.npy", help="where to save the (g, g) map")
    attribute.set_defaults(run=cmd_attribute)

    vocabulary_help = (f"synthetic, general (the shipped {_general_size():,} concepts) or a text file with one concept "
                       "per line")
    describe = commands.add_parser("describe", help="what drives a voxel on one image, in words")
    describe.add_argument("results")
    describe.add_argument("--image", type=int, required=True)
    describe.add_argument("--voxel", type=int, required=True)
    describe.add_argument("--vocabulary", default="synthetic", help=vocabulary_help)
    describe.add_argument("--checkpoint", default=None, help="the local weights file the store was made with")
    describe.set_defaults(run=cmd_describe)

    profile = commands.add_parser("profile", help="per-voxel concept profiles, ROI profiles and sub-populations")
    profile.add_argument("results", help="a results folder, or a study folder (every subject is profiled)")
    profile.add_argument("--vocabulary", default="synthetic", help=vocabulary_help)
    profile.add_argument("--top-k", type=int, default=20, help="top images per voxel")
    profile.add_argument("--roi", nargs="*", default=None,
                         help="ROI volumes to profile and cluster (default: the category ROIs these results have)")
    profile.add_argument("--checkpoint", default=None)
    profile.add_argument("--seed", type=int, default=0, help="seeds the clustering and a study's bootstrap CIs")
    profile.add_argument("--dask", default=None, metavar="ADDRESS", help=DASK_HELP.format(what="target blocks"))
    profile.add_argument("--force", action="store_true", help=FORCE_HELP)
    profile.set_defaults(run=cmd_profile)

    validate = commands.add_parser("validate", help="causal validation: generation from descriptions, edits")
    validate.add_argument("results", help="a results folder, or a study folder (every subject is validated)")
    validate.add_argument("--generator", choices=["procedural", "diffusers"], default="procedural",
                          help="procedural: the synthetic world's renderer (scores the true brain too)")
    validate.add_argument("--model", default=None, help="diffusers text-to-image model id or local folder")
    validate.add_argument("--edit-model", default=None, help="diffusers inpainting model id or local folder")
    validate.add_argument("--steps", type=int, default=25)
    validate.add_argument("--voxels", type=int, default=None,
                          help="voxels sampled from the category ROIs, 2 top images each (default 128)")
    validate.add_argument("--seed", type=int, default=0)
    validate.add_argument("--checkpoint", default=None)
    validate.add_argument("--dask", default=None, metavar="ADDRESS",
                          help=DASK_HELP.format(what="experiments on batches of pairs"))
    validate.add_argument("--force", action="store_true", help=FORCE_HELP)
    validate.set_defaults(run=cmd_validate)

    export = commands.add_parser("export", help="per-target maps as NIfTI (volumes) or MGH / GIfTI (surfaces), for "
                                                "pycortex, nilearn or FreeSurfer")
    export.add_argument("results")
    export.add_argument("--map", nargs="+", default=["accuracy"],
                        help="accuracy (r / noise ceiling), r, noise-ceiling, clusters (ROI sub-populations), "
                             "top-concept (a label per concept) or values (an array given by --values)")
    export.add_argument("--values", default=None, metavar="FILE.npy",
                        help="per-target values for --map values (e.g. a counterfactual edit's delta), named "
                             "after the file")
    export.add_argument("--format", choices=["nifti", "mgh", "gifti"], default="nifti",
                        help="nifti for volume results; mgh or gifti (one file per hemisphere) for surface results")
    export.add_argument("--on-fsaverage", action="store_true",
                        help="carry volume maps of an NSD subject onto fsaverage through its transforms "
                             "(nsddata/ppdata/subjXX/transforms) and write them as MGH or GIfTI")
    export.add_argument("--out", required=True, help="the folder to write the files into")
    export.set_defaults(run=cmd_export)

    evaluate = commands.add_parser("evaluate", help="the demo pipeline on several world seeds: every score's "
                                                    "mean, spread and worst seed")
    evaluate.add_argument("--seeds", type=int, nargs="+", required=True,
                          help="world seeds (the split: demo 0, tuning 1-3, report-only 101-105)")
    evaluate.add_argument("--out", required=True, help="folder of the per-seed runs and evaluation.json/.md")
    evaluate.add_argument("--images", type=int, default=None, help="images per world (default: the demo's size)")
    evaluate.add_argument("--workers", type=int, default=None,
                          help="worlds run at once on a Dask local cluster (default: one per 2 cores)")
    evaluate.set_defaults(run=cmd_evaluate)

    view = commands.add_parser("view", help="open napari with the plugin docked and RESULTS loaded")
    view.add_argument("results")
    view.add_argument("--on-fsaverage", action="store_true",
                      help="also draw the volume maps of an NSD subject on the inflated fsaverage (through its "
                           "transforms)")
    view.set_defaults(run=cmd_view)

    demo = commands.add_parser("demo", help="world -> features -> fit -> report on the synthetic world")
    demo.add_argument("--out", default="demo_out")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--images", type=int, default=None, help="number of images (default: the demo's size)")
    demo.add_argument("--space", choices=SPACES, default="volume",
                      help="volume (the default) or fsaverage: the same world's subject on the cortex, every step "
                           "on vertices")
    demo.add_argument("--subjects", type=int, default=1,
                      help="several subjects: a synthetic study, compared across subjects on their shared images")
    demo.add_argument("--dask", default=None, metavar="ADDRESS",
                      help="fit a study's subjects in parallel on a Dask cluster: a scheduler address or 'local'")
    demo.add_argument("--view", action="store_true", help="open the results in napari afterwards")
    demo.set_defaults(run=cmd_demo)
    return parser


def _show_notes() -> None:
    """The steps' notes (resuming, discarding a partial, already done) on stderr, once per process."""
    package = logging.getLogger("napari_mine")
    if not any(getattr(handler, "napari_mine_cli", False) for handler in package.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("napari-mine %(message)s"))
        handler.napari_mine_cli = True
        package.addHandler(handler)
        package.setLevel(logging.INFO)
        # open_clip logs through the root logger, whose implicit basicConfig would print every note twice
        logging.getLogger().addHandler(logging.NullHandler())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _show_notes()
    start = time.perf_counter()
    try:
        args.run(args)
    except MineInputError as error:
        print(f"napari-mine {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"napari-mine {args.command}: interrupted; results already written are kept.", file=sys.stderr)
        return 130
    print(f"({args.command} took {time.perf_counter() - start:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
