"""Batch jobs past one process: photo lists, resumable Parquet results, and Ray Data on a real local cluster."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from psyattr.cli import cli
from psyattr.scale import ResultsError, list_inputs, read_results
from psyattr.scale import results
from tests.conftest import require_data

BATCH = 8
GOOD = 19


def _bad_images(folder: Path, sample: Path) -> list[str]:
    """Five images that cannot be scored, each for another reason."""
    data = sample.read_bytes()
    (folder / "bad_truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "bad_text.jpg").write_text("this is not an image")
    (folder / "bad_empty.png").write_bytes(b"")
    Image.new("RGB", (1, 1), (120, 90, 60)).save(folder / "bad_tiny.png")
    ramp = np.tile(np.linspace(0, 255, 256, dtype=np.uint8)[None, :, None], (256, 1, 3))
    Image.fromarray(ramp).save(folder / "bad_noface.png")
    return sorted(str(folder / n) for n in ("bad_truncated.jpg", "bad_text.jpg", "bad_empty.png", "bad_tiny.png",
                                            "bad_noface.png"))


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> tuple[Path, list[str]]:
    omi = require_data("omi") / "images_256"
    folder = tmp_path_factory.mktemp("photos")
    for index in range(1, GOOD + 1):
        (folder / f"face_{index:02d}.jpg").write_bytes((omi / f"{index}.jpg").read_bytes())
    return folder, _bad_images(folder, omi / "1.jpg")


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason='the Ray engine needs Ray: pip install "psyattr[ray]"')
    from psyattr.scale import ray_engine

    ray_engine.connect(num_cpus=2)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _invoke(*args: str):
    return CliRunner().invoke(cli, [*args], catch_exceptions=False)


# --- inputs and the results folder, without Ray -------------------------------------------------------------


def test_inputs_from_folders_globs_and_path_lists(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    for name in ("a.jpg", "b.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.jpg").write_bytes(b"x")
    assert list_inputs([tmp_path]) == [str(tmp_path / "a.jpg"), str(tmp_path / "b.png")]
    assert list_inputs([str(tmp_path / "*.jpg"), str(tmp_path / "sub" / "c.jpg")]) == [
        str(tmp_path / "a.jpg"), str(tmp_path / "sub" / "c.jpg")]
    (tmp_path / "list.csv").write_text("path,rating\nsub/c.jpg,3\n/abs/d.jpg,4\n")
    assert list_inputs([tmp_path / "list.csv"]) == [str(tmp_path / "sub" / "c.jpg"), "/abs/d.jpg"]
    pq.write_table(pa.table({"image": ["a.jpg", "b.png", "a.jpg"]}), tmp_path / "list.parquet")
    assert list_inputs([tmp_path / "list.parquet"]) == [str(tmp_path / "a.jpg"), str(tmp_path / "b.png")]
    assert list_inputs([f"file://{tmp_path}"]) == [f"file://{tmp_path}/a.jpg", f"file://{tmp_path}/b.png"]
    (tmp_path / "wrong.csv").write_text("file_name\nx.jpg\n")
    with pytest.raises(ValueError, match="column named path or image or file; it has file_name"):
        list_inputs([tmp_path / "wrong.csv"])
    with pytest.raises(FileNotFoundError, match="no file matches"):
        list_inputs([str(tmp_path / "*.gif")])


def test_results_folder_refuses_another_job_and_parts_it_did_not_write(tmp_path):
    job = {"mode": "explain", "model": "age", "framing": "model", "target": None, "composite": "alpha2beta1"}
    assert results.open_results(tmp_path / "out", job) == set()
    table_schema = results.schema("predict", ["happy"], job)
    name = results.write_part(tmp_path / "out", [{"path": "x.jpg", "happy": 0.5}, {"path": "y.jpg", "error": "bad"}],
                              table_schema)
    assert name == results.part_name(["x.jpg", "y.jpg"])
    assert sorted(os.listdir(tmp_path / "out")) == ["_psyattr.json", name]  # no staging file left behind
    assert results.open_results(tmp_path / "out", job) == {"x.jpg", "y.jpg"}
    with pytest.raises(ResultsError, match="another job .*composite: 'alpha2beta1' there, 'epsilon' now"):
        results.open_results(tmp_path / "out", {**job, "composite": "epsilon"})
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "part-0.parquet").write_bytes(b"PAR1")
    with pytest.raises(ResultsError, match="no _psyattr.json"):
        results.open_results(tmp_path / "foreign", job)


def test_stored_heatmaps_keep_small_relevance_to_three_digits():
    import pyarrow as pa

    rng = np.random.default_rng(0)
    heat = rng.normal(0, 1e-6, results.HEATMAP_SHAPE).astype(np.float32)  # under float16's smallest normal
    packed, scale = results.pack_heatmap(heat)
    table = pa.table({"heatmap": pa.array([packed, None], pa.list_(pa.float16(), heat.size)),
                      "heatmap_scale": pa.array([scale, None], pa.float32())})
    back = results.heatmaps(table)
    assert np.abs(back[0] - heat).max() <= 5e-4 * np.abs(heat).max()
    assert np.isnan(back[1]).all()


# --- Ray ------------------------------------------------------------------------------------------------------


def test_an_address_that_does_not_answer_fails_within_seconds(tmp_path, photo_folder):
    pytest.importorskip("ray")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    started = time.monotonic()
    result = CliRunner().invoke(cli, ["predict", "--model", "age", "--engine", "ray", "--address", f"127.0.0.1:{port}",
                                      "--out", str(tmp_path / "out"), str(photo_folder[0])])
    assert result.exit_code != 0
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in result.output and "ray start --head" in result.output
    assert time.monotonic() - started < 30


def test_without_ray_the_engine_says_how_to_install_it(tmp_path):
    code = ("import sys; sys.modules['ray'] = None; from psyattr.cli import cli; "
            f"cli(['predict', '--model', 'age', '--engine', 'ray', '--out', {str(tmp_path / 'o')!r}, {str(tmp_path)!r}])")
    Image.new("RGB", (64, 64)).save(tmp_path / "x.png")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert 'pip install "psyattr[ray]"' in done.stderr


@pytest.fixture(scope="module")
def ray_explained(ray_cluster, photo_folder, tmp_path_factory) -> Path:
    folder, _ = photo_folder
    out = tmp_path_factory.mktemp("ray") / "explained"
    result = _invoke("explain", "--model", "age", "--engine", "ray", "--workers", "2", "--batch-size", str(BATCH),
                     "--no-progress", "--out", str(out), str(folder))
    assert result.exit_code == 0, result.output
    assert f"explained {GOOD} image(s) with age (utkface framing) on Ray (2 workers)" in result.output
    return out


def _assert_same_outputs(row: dict, outputs: dict) -> None:
    """A Ray row holds the local engine's outputs, each to 1e-5 of the largest of them.

    The actors compute on one thread and the local engine on two, so sums run in another order: a logit near 0
    (a difference of larger terms) keeps the absolute error of the large ones, not its own relative precision.
    """
    largest = max(abs(v) for v in outputs.values())
    for name, value in outputs.items():
        np.testing.assert_allclose(row[name], value, rtol=1e-5, atol=1e-5 * largest, err_msg=name)


@pytest.mark.slow
def test_ray_and_local_engines_agree_and_name_every_bad_image(ray_explained, photo_folder, tmp_path):
    folder, bad = photo_folder
    table = read_results(ray_explained)
    rows = {row["path"]: row for row in table.drop_columns(["heatmap"]).to_pylist()}
    assert table.num_rows == GOOD + len(bad) == len(rows)
    failed = sorted(p for p, row in rows.items() if row["error"])
    assert failed == bad
    assert "no face found" in rows[str(folder / "bad_noface.png")]["error"]
    assert "no face found" in rows[str(folder / "bad_tiny.png")]["error"]
    assert "cannot decode" in rows[str(folder / "bad_text.jpg")]["error"]
    heats = dict(zip(table.column("path").to_pylist(), results.heatmaps(table)))

    local = tmp_path / "local"
    result = _invoke("explain", "--model", "age", "--batch-size", str(BATCH), "--no-progress", "--out", str(local),
                     str(folder))
    assert result.exit_code == 0, result.output
    assert sorted(line.split(": ")[0].removeprefix("skipped ") for line in result.output.splitlines()
                  if line.startswith("skipped ")) == bad
    for record_file in sorted(local.glob("*.json")):
        record = json.loads(record_file.read_text())
        row = rows[record["image"]]
        assert row["error"] is None and row["target"] == record["target"]
        np.testing.assert_allclose(row["score"], record["score"], rtol=1e-5)
        _assert_same_outputs(row, record["outputs"])
        heat = np.load(local / f"{record_file.stem}.relevance.npy").sum(axis=-1)
        assert np.abs(heats[record["image"]] - heat).max() <= 1e-3 * np.abs(heat).max()
    assert len(list(local.glob("*.json"))) == GOOD

    # predict: the same outputs as the local engine's JSON lines
    predicted = tmp_path / "predicted"
    result = _invoke("predict", "--model", "age", "--engine", "ray", "--workers", "2", "--batch-size", str(BATCH),
                     "--out", str(predicted), str(folder))
    assert result.exit_code == 0, result.output
    scored = {row["path"]: row for row in read_results(predicted).to_pylist()}
    local_lines = _invoke("predict", "--model", "age", "--batch-size", str(BATCH), str(folder)).output
    records = [json.loads(line) for line in local_lines.splitlines() if line.startswith("{")]
    assert len(records) == GOOD and sorted(p for p, row in scored.items() if row["error"]) == bad
    for record in records:
        row = scored[record["image"]]
        np.testing.assert_allclose(row["expected_age"], record["expected_age"], rtol=1e-5)
        _assert_same_outputs(row, record["outputs"])


@pytest.mark.slow
def test_a_rerun_redoes_only_what_is_missing(ray_explained, photo_folder):
    folder, bad = photo_folder
    parts = sorted(ray_explained.glob("part-*.parquet"))
    stamps = {p.name: p.stat().st_mtime_ns for p in parts}
    result = _invoke("explain", "--model", "age", "--engine", "ray", "--batch-size", str(BATCH), "--no-progress",
                     "--out", str(ray_explained), str(folder))
    assert result.exit_code == 0, result.output
    assert f"{GOOD + len(bad)} were done already" in result.output
    lost = parts[0]
    lost_paths = pq.read_table(lost, columns=["path"]).column("path").to_pylist()
    lost.unlink()  # as if the job had stopped before this batch
    result = _invoke("explain", "--model", "age", "--engine", "ray", "--batch-size", str(BATCH), "--no-progress",
                     "--out", str(ray_explained), str(folder))
    assert result.exit_code == 0, result.output
    assert f"{GOOD + len(bad) - len(lost_paths)} were done already" in result.output
    after = {p.name: p.stat().st_mtime_ns for p in ray_explained.glob("part-*.parquet")}
    assert {k: v for k, v in after.items() if k in stamps and k != lost.name} == {
        k: v for k, v in stamps.items() if k != lost.name}
    table = read_results(ray_explained, ["path"])
    assert sorted(table.column("path").to_pylist()) == sorted({*map(str, folder.iterdir())})
    result = CliRunner().invoke(cli, ["explain", "--model", "age", "--engine", "ray", "--target", "0-2",
                                      "--out", str(ray_explained), str(folder)])
    assert result.exit_code != 0 and "holds results of another job (target: None there, '0-2' now)" in result.output


def _batch_worker_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"BatchWorker" in title and b"pytest" not in title:
                pids.append(int(entry.name))
    return pids


@pytest.mark.slow
def test_a_killed_actor_does_not_lose_or_redo_finished_work(ray_cluster, photo_folder, tmp_path):
    folder, bad = photo_folder
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "psyattr", "explain", "--model", "age", "--engine", "ray", "--address",
               ray_cluster, "--workers", "1", "--batch-size", "4", "--no-progress", "--out", str(out), str(folder)]
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while len(list(out.glob("part-*.parquet"))) < 2 and time.monotonic() < deadline and job.poll() is None:
        time.sleep(0.2)
    finished = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    victims = _batch_worker_pids()
    assert finished and victims, "the job wrote no part, or no actor was found to kill"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    output, _ = job.communicate(timeout=300)
    if job.returncode != 0:  # Ray gave up on the batch: a rerun completes it
        rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    paths = read_results(out, ["path"]).column("path").to_pylist()
    assert sorted(paths) == sorted(map(str, folder.iterdir()))  # every image once
    assert len(list(out.glob("part-*.parquet"))) == -(-len(paths) // 4)
    # The one batch in flight when the actor died may be written again (under its own name); none before it.
    rewritten = [name for name, stamp in finished.items() if (out / name).stat().st_mtime_ns != stamp]
    assert len(rewritten) <= 1, f"finished parts were written again: {rewritten}"


@pytest.mark.slow
def test_an_exported_savedmodel_gives_what_its_keras_model_gives(tmp_path):
    """The worker's third kind of model: a TF Serving export (its `explain` and `serving_default` signatures)."""
    from psyattr.export import export_model
    from psyattr.scale.worker import BatchJob, BatchWorker
    from tests.test_lrp_explainer import random_net

    model = random_net("age", 3, zero_bias=False)
    model.save(tmp_path / "age.keras")
    export_model(tmp_path / "age.keras", tmp_path / "models", "age_random", framing="none")
    rng = np.random.default_rng(1)
    photos = []
    for index in range(3):
        Image.fromarray(rng.integers(0, 256, (240, 260, 3), dtype=np.uint8)).save(tmp_path / f"p{index}.png")
        photos.append(str(tmp_path / f"p{index}.png"))
    photos.append(str(tmp_path / "missing.png"))
    for mode in ("explain", "predict"):
        rows = {}
        for kind, spec in (("keras", tmp_path / "age.keras"), ("export", tmp_path / "models" / "age_random")):
            job = BatchJob(mode, str(spec), str(tmp_path / f"{mode}_{kind}"), framing="none")
            results.open_results(job.out, job.record())
            BatchWorker(job)({"paths": np.array([photos], dtype=object)})
            rows[kind] = {r["path"]: r for r in read_results(job.out).to_pylist()}
        assert rows["export"][photos[-1]]["error"] == f"cannot read {photos[-1]}: No such file or directory"
        for photo in photos[:-1]:
            keras_row, export_row = rows["keras"][photo], rows["export"][photo]
            if mode == "explain":
                assert export_row["target"] == keras_row["target"]
                np.testing.assert_allclose(export_row["score"], keras_row["score"], rtol=1e-4)
                np.testing.assert_allclose(export_row["relevance_sum"], keras_row["relevance_sum"], rtol=1e-3, atol=1e-6)
            else:
                for key in ("prob_0_2", "logit_60_100", "expected_age"):
                    np.testing.assert_allclose(export_row[key], keras_row[key], rtol=1e-5, atol=1e-7)
