"""Resumable steps: a real `napari-mine` process killed with SIGKILL mid-run, resumed, and compared array for
array with an uninterrupted run; a finished step re-run does nothing; Dask runs equal serial ones.

The killed processes use small chunks (so a tiny world has many) and sleep before each chunk, so the kill lands
while a chunk is in flight whatever the machine's speed. The uninterrupted reference, the resumed run and the
re-run go through `napari_mine.cli.main` in this process with the same chunks and cache (sparing each a
process's torch import).
"""

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from napari_mine import decompose, describe
from napari_mine.cli import main
from napari_mine.store import PARTIAL_STATE, ResultsStore

FEATURE_ROWS_BYTES = 2**19  # 15 images per chunk of mine-small's token cache (120 images: 8 chunks)
PROFILE_BLOCK = 256  # targets per chunk (2,300 targets: 9 chunks)
KILL_AFTER = 3  # chunks complete before the kill
SLOW_S = 0.3

RUNNER = """
import sys, time
from napari_mine import decompose, describe, distributed
decompose.TOKEN_CHUNK_BYTES = {rows_bytes}
describe.STORE_VOXEL_BLOCK = {block}
delay = float(sys.argv[1])
for name in ("_decompose_into", "profile_block"):
    def slowed(*args, _work=getattr(distributed, name)):
        time.sleep(delay)
        return _work(*args)
    setattr(distributed, name, slowed)
from napari_mine.cli import main
sys.exit(main(sys.argv[2:]))
""".format(rows_bytes=FEATURE_ROWS_BYTES, block=PROFILE_BLOCK)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, fit_synthetic_world):
    root = tmp_path_factory.mktemp("resume")
    return root, fit_synthetic_world(root, n_images=120)


def killed_after_chunks(args, partial, n_done: int) -> list[int]:
    """Run `napari-mine ARGS` in a slowed process (with this process's environment, so the cache
    :func:`napari_mine_here` sets) and SIGKILL it once ``partial`` has ``n_done`` complete chunks; returns the
    chunks complete then."""
    process = subprocess.Popen([sys.executable, "-c", RUNNER, str(SLOW_S), *map(str, args)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = partial / PARTIAL_STATE
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        try:
            done = json.loads(state.read_text())["done"]
        except (OSError, ValueError, KeyError):
            done = []
        if len(done) >= n_done:
            process.send_signal(signal.SIGKILL)
            process.communicate()
            return json.loads(state.read_text())["done"]
        time.sleep(0.02)
    process.kill()
    raise AssertionError(f"the run ended or stalled before {n_done} chunks: {process.communicate()}")


@pytest.fixture
def napari_mine_here(tmp_path, monkeypatch, capsys, caplog):
    """``run(args)``: `napari-mine ARGS` in this process with the runner's chunks (unslowed) and a cache of the
    test's own (also the killed processes'); returns its (stdout, log), the log holding the steps' notes."""
    monkeypatch.setenv("NAPARI_MINE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(decompose, "TOKEN_CHUNK_BYTES", FEATURE_ROWS_BYTES)
    monkeypatch.setattr(describe, "STORE_VOXEL_BLOCK", PROFILE_BLOCK)
    caplog.set_level(logging.INFO, logger="napari_mine")
    # the CLI's note handler writes to this test's captured stderr, closed after it: it leaves with the test
    monkeypatch.setattr(logging.getLogger("napari_mine"), "handlers", [])

    def run(args) -> tuple[str, str]:
        capsys.readouterr()
        caplog.clear()
        assert main(list(map(str, args))) == 0, capsys.readouterr().err
        return capsys.readouterr().out, caplog.text

    return run


def counts(output: tuple[str, str], step: str) -> tuple[int, int]:
    """(chunks computed by the run, chunks it found complete) from its closing note."""
    found = re.search(rf"{step}: done, (\d+) chunks computed by this run and (\d+) found complete", output[1])
    assert found, output
    return int(found[1]), int(found[2])


def arrays(root, step: str) -> dict:
    group = ResultsStore.open(root).results().group(step)
    return {name: np.asarray(group[name][...]) for name in group.array_keys()}


def test_features_killed_mid_run_resume_from_the_last_complete_chunk(fitted, tmp_path, napari_mine_here):
    _, (dataset, *_) = fitted
    world = dataset.source["root"]
    features = ["features", world, "--batch-size", 16]
    clean = napari_mine_here([*features, "--out", tmp_path / "clean"])
    n_chunks, _ = counts(clean, "features")
    assert n_chunks >= KILL_AFTER + 3

    done = killed_after_chunks([*features, "--out", tmp_path / "resumed"], tmp_path / "resumed" / ".features.partial",
                               KILL_AFTER)
    assert done == list(range(len(done))) and not ResultsStore.open(tmp_path / "resumed").has("features")

    resumed = napari_mine_here([*features, "--out", tmp_path / "resumed"])
    assert f"resuming from .features.partial ({len(done)} chunks already complete)" in resumed[1]
    assert counts(resumed, "features") == (n_chunks - len(done), len(done))  # at most the chunk in flight redone
    expected, got = arrays(tmp_path / "clean", "features"), arrays(tmp_path / "resumed", "features")
    assert set(got) == set(expected) == {"tokens", "rest", "features", "image_ids"}
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])

    written = (tmp_path / "resumed" / "features.zarr").stat().st_mtime_ns
    again = napari_mine_here([*features, "--out", tmp_path / "resumed"])
    assert "features: already done with these settings" in again[1]
    assert (tmp_path / "resumed" / "features.zarr").stat().st_mtime_ns == written
    assert not (tmp_path / "resumed" / ".features.partial").exists()


def test_profiles_killed_mid_run_resume_from_the_last_complete_block(fitted, tmp_path, napari_mine_here):
    _, (_, _, store, _) = fitted
    for name in ("clean", "resumed"):
        shutil.copytree(store.root, tmp_path / name)
    places = ["--roi", "floc-places"]  # an ROI analysis of 3 labels, not of every category ROI's 17
    clean = napari_mine_here(["profile", tmp_path / "clean", *places])
    n_chunks, _ = counts(clean, "profiles")
    assert n_chunks == -(-store.results().n_targets // PROFILE_BLOCK) >= KILL_AFTER + 3

    done = killed_after_chunks(["profile", tmp_path / "resumed", *places], tmp_path / "resumed" / ".profiles.partial",
                               KILL_AFTER)
    resumed = napari_mine_here(["profile", tmp_path / "resumed", *places])
    assert counts(resumed, "profiles") == (n_chunks - len(done), len(done))
    expected, got = arrays(tmp_path / "clean", "profiles"), arrays(tmp_path / "resumed", "profiles")
    assert set(got) == set(expected) == {"scores", "baseline", "top_images", "region_mass", "voxels"}
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])
    clusters = {name: sorted(os.listdir(tmp_path / name / "clusters")) for name in ("clean", "resumed")}
    assert clusters["resumed"] == clusters["clean"] == ["OPA.nii.gz", "PPA.nii.gz", "RSC.nii.gz"]

    again = napari_mine_here(["profile", tmp_path / "resumed", *places])
    assert "profiles: already done with these settings" in again[1] and "chunks computed" not in again[1]
    assert again[0] == resumed[0]  # the ROI lines come back from the saved analysis


def test_a_partial_resumes_with_its_settings_only_and_one_without_a_complete_chunk_goes(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="napari_mine")
    store = ResultsStore.create(tmp_path, model={"id": "m"}, dataset={})

    def interrupted(settings, chunk=None):
        with pytest.raises(RuntimeError):
            with store.resumable_step("validation", settings) as partial:
                if chunk is not None:
                    partial.save_chunk(chunk, {"chunk": chunk})
                    partial.mark_done(chunk)
                raise RuntimeError("killed")

    interrupted({"n": 1}, chunk=0)
    with store.resumable_step("validation", {"n": 1}) as partial:
        assert partial.done == {0} and partial.load_chunk(0) == {"chunk": 0} and partial.pending(3) == [1, 2]
    assert store.is_current("validation", {"n": 1}) and not (tmp_path / ".validation.partial").exists()
    interrupted({"n": 1}, chunk=0)
    interrupted({"n": 2})
    assert "discarding .validation.partial, which was computed with other settings" in caplog.text
    assert not (tmp_path / ".validation.partial").exists()  # nothing of the second run was complete
    assert store.is_current("validation", {"n": 1}) and not store.is_current("validation", {"n": 2})


# ----------------------------------------------------------------------------------------------- validation


@pytest.fixture(scope="module")
def validation(fitted):
    from napari_mine.generate import ProceduralGenerator
    from napari_mine.synthetic.truth import load_truth
    from napari_mine.vocabulary import concept_space, synthetic_vocabulary

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny forward passes: threads only contend
    root, (dataset, backbone, store, _) = fitted
    world = dataset.source["root"]
    yield {"store": store, "backbone": backbone, "truth": load_truth(world),
           "generator": ProceduralGenerator.from_world(world),
           "space": concept_space(synthetic_vocabulary(), backbone, cache_dir=root / "cache")}
    torch.set_num_threads(threads)


def validate(validation, **options):
    from napari_mine.validate import run_validation

    return run_validation(validation["store"].results(), validation["generator"], validation["truth"],
                          backbone=validation["backbone"], space=validation["space"], n_voxels=6, images_per_voxel=1,
                          top_k=5, min_nc_r=-1.0, n_boot=50, n_examples=2, seed=3, chunk_voxels=2, **options)


def test_validation_failed_mid_run_resumes_to_the_uninterrupted_summary(validation, monkeypatch):
    from napari_mine.validate import tasks

    clean = validate(validation, force=True)
    generator = validation["generator"]
    monkeypatch.setattr(generator, "insert", lambda *args, **kwargs: 1 / 0)  # the third experiment breaks
    with pytest.raises(ZeroDivisionError):
        validate(validation, force=True)
    monkeypatch.undo()
    partial = validation["store"].root / ".validation.partial"
    assert json.loads((partial / PARTIAL_STATE).read_text())["done"] == list(range(6))  # 2 experiments × 3 batches
    reports = []
    assert validate(validation, on_progress=lambda *report: reports.append(report)) == clean
    assert reports[0] == (12, 24) and reports[-1] == (24, 24) and len(reports) == 7  # in pairs: 6 chunks ran
    monkeypatch.setattr(tasks, "validation_chunk", lambda *args: 1 / 0)
    assert validate(validation) == clean  # done with these settings: no chunk runs


def test_dask_profiles_and_validation_equal_serial_ones(validation, tmp_path):
    from distributed import Client

    from napari_mine.pipeline import profile_step

    store = ResultsStore.open(shutil.copytree(validation["store"].root, tmp_path / "copy"))
    serial, serial_rois = profile_step(store, validation["space"], block=512, force=True)
    serial_validation = validate(validation, force=True)
    with Client(processes=False, n_workers=2, threads_per_worker=1, dashboard_address=None) as client:
        on_cluster, cluster_rois = profile_step(store, validation["space"], block=512, client=client, force=True)
        cluster_validation = validate(validation, client=client, force=True)
    for name in ("scores", "baseline", "top_images", "region_mass", "voxels"):
        np.testing.assert_array_equal(getattr(on_cluster, name), getattr(serial, name))
    assert [r.clustering.k for r in cluster_rois] == [r.clustering.k for r in serial_rois]
    assert cluster_validation == serial_validation and cluster_validation["complete"] is True
