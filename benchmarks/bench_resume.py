"""Kill and resume: a real `napari-mine` process killed with SIGKILL mid-run, resumed, and compared with a clean run.

For `features` and `profile` on a synthetic world (default: the demo's size, default chunking), the script runs
the step once uninterrupted, once killed (SIGKILL) as soon as its partial folder has ``--kill-after`` complete
chunks (at most all but one), then resumed, and records: the chunks complete at the kill, the chunks the resumed run computed (so
how many were computed twice: the one in flight at most), the images or targets that makes, the wall times,
and whether every array equals the clean run's. Writes ``benchmarks/results/resume.json`` and ``.md``.

Run: `.venv/bin/python benchmarks/bench_resume.py [--images 2500] [--kill-after 3] [--work /tmp/bench_resume]`.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "napari_mine.cli", *map(str, args)]


def timed_run(args) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cli(*args), capture_output=True, text=True, check=True)
    return time.perf_counter() - start, done.stderr


def killed_run(args, partial: Path, kill_after: int) -> tuple[float, list[int]]:
    """Start the step, SIGKILL it once ``kill_after`` chunks are complete; (seconds it ran, chunks complete)."""
    start = time.perf_counter()
    process = subprocess.Popen(cli(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = partial / "state.json"
    while process.poll() is None:
        try:
            done = json.loads(state.read_text())["done"]
        except (OSError, ValueError, KeyError):
            done = []
        if len(done) >= kill_after:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return time.perf_counter() - start, json.loads(state.read_text())["done"]
        time.sleep(0.01)
    raise SystemExit(f"{args[0]} finished before {kill_after} chunks were complete; lower --kill-after.")


def chunk_counts(stderr: str, step: str) -> tuple[int, int]:
    found = re.search(rf"{step}: done, (\d+) chunks computed by this run and (\d+) found complete", stderr)
    return int(found[1]), int(found[2])


def compare(clean: Path, resumed: Path, step: str) -> dict:
    import zarr

    a, b = zarr.open_group(clean / f"{step}.zarr", mode="r"), zarr.open_group(resumed / f"{step}.zarr", mode="r")
    names = sorted(a.array_keys())
    equal = {name: bool(np.array_equal(a[name][...], b[name][...], equal_nan=True)) for name in names}
    return {"arrays": names, "all_equal": all(equal.values()) and names == sorted(b.array_keys()), "equal": equal}


def chunk_size(results: Path, step: str) -> int:
    """Images (features: the token array's storage chunk) or targets (profiles: the block) per chunk."""
    import zarr

    if step == "features":
        return zarr.open_group(results / "features.zarr", mode="r")["tokens"].chunks[0]
    return json.loads((results / "manifest.json").read_text())["steps"]["profiles"]["settings"]["block"]


def kill_and_resume(step: str, args_of, clean: Path, resumed: Path, kill_after: int) -> dict:
    clean_s, clean_log = timed_run(args_of(clean))
    n_chunks, _ = chunk_counts(clean_log, step)
    killed_s, done = killed_run(args_of(resumed), resumed / f".{step}.partial", min(kill_after, n_chunks - 1))
    resumed_s, resumed_log = timed_run(args_of(resumed))
    computed, found = chunk_counts(resumed_log, step)
    again_s, again_log = timed_run(args_of(resumed))
    per_chunk = chunk_size(clean, step)
    return {"chunks": n_chunks, "units_per_chunk": per_chunk, "complete_at_kill": len(done),
            "computed_on_resume": computed, "found_on_resume": found,
            "no_complete_chunk_recomputed": found == len(done) and computed == n_chunks - len(done),
            "units_computed_twice_at_most": per_chunk, "clean_s": round(clean_s, 1),
            "killed_after_s": round(killed_s, 1), "resumed_s": round(resumed_s, 1),
            "rerun_s": round(again_s, 1), "rerun_did_nothing": "already done" in again_log,
            **compare(clean, resumed, step)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2500)
    parser.add_argument("--kill-after", type=int, default=3)
    parser.add_argument("--work", default="/tmp/bench_resume")
    args = parser.parse_args()
    from napari_mine.synthetic.write_nsd import write_world

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    write_world(work / "world", seed=0, n_images=args.images)
    features = kill_and_resume("features", lambda out: ["features", work / "world", "--out", out], work / "clean",
                               work / "resumed", args.kill_after)
    subprocess.run(cli("fit", work / "clean"), capture_output=True, check=True)
    for name in ("profile_clean", "profile_resumed"):
        shutil.copytree(work / "clean", work / name)
    n_targets = json.loads((work / "clean" / "summary.json").read_text())["encoder"]["n_voxels"]
    profiles = kill_and_resume("profiles", lambda out: ["profile", out], work / "profile_clean",
                               work / "profile_resumed", args.kill_after)
    report = {"images": args.images, "targets": n_targets, "kill_after": args.kill_after,
              "features": features, "profiles": profiles}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "resume.json").write_text(json.dumps(report, indent=2) + "\n")
    publish(report)


def publish(report: dict) -> None:
    """Write the table of ``report`` to resume.md (and print it)."""
    rows = ["| step | chunks | complete at kill | computed on resume | computed twice | equal to clean run | "
            "clean run | resumed run | re-run |", "|---|---|---|---|---|---|---|---|---|"]
    for step, unit in (("features", "images"), ("profiles", "targets")):
        r = report[step]
        rows.append(f"| {step} | {r['chunks']} × {r['units_per_chunk']} {unit} | {r['complete_at_kill']} | "
                    f"{r['computed_on_resume']} | "
                    f"{'the one in flight' if r['no_complete_chunk_recomputed'] else 'MORE'} (≤ "
                    f"{r['units_computed_twice_at_most']} {unit}) | {'yes' if r['all_equal'] else 'NO'} | "
                    f"{r['clean_s']} s | {r['resumed_s']} s | {r['rerun_s']} s "
                    f"({'nothing done' if r['rerun_did_nothing'] else 'RECOMPUTED'}) |")
    (RESULTS / "resume.md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
