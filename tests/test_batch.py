"""``glam batch`` on a real local Ray cluster (2 CPUs, started once for the module): plan
files, the archive against serial ``glam analyze`` bit for bit, a broken model in the plan,
resume (also after SIGKILL of the driver), external links."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from glam.archive.hdf5 import existing_runs, open_archive
from glam.batch.plan import Task, expand_tasks, grid_roi, load_plan, plan_from_dict
from glam.batch.shards import read_batch, shard_dir_for
from glam.cli import cli
from glam.errors import UserInputError
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "fixtures" / "models"
IMAGES = ROOT / "fixtures" / "images"
CARN = MODELS / "carn_small_x2.legacy.onnx"
RCAN = MODELS / "rcan_small_x2.script.pt"
#: Attributes that differ between any two runs of the same analysis (time, command line).
VOLATILE = {"created", "command_line", "argv"}


def _volatile(key: str) -> bool:
    return key in VOLATILE or "seconds" in key


def diff_groups(a: h5py.Group | h5py.Dataset, b: h5py.Group | h5py.Dataset,
                path: str = "") -> list[str]:
    """Every difference between two archived runs, bit for bit (datasets by their bytes,
    attributes by value), but the volatile attributes."""
    out = []
    ka = {k for k in a.attrs if not _volatile(k)}
    kb = {k for k in b.attrs if not _volatile(k)}
    if ka != kb:
        out.append(f"{path}: attributes {sorted(ka ^ kb)}")
    for k in sorted(ka & kb):
        va, vb = np.asarray(a.attrs[k]), np.asarray(b.attrs[k])
        if k == "model_metadata":  # the import's own timing ("conversion_s") is volatile
            va, vb = (np.asarray(json.dumps({m: v for m, v in json.loads(str(x)).items()
                                             if not m.endswith("_s")}, sort_keys=True))
                      for x in (a.attrs[k], b.attrs[k]))
        if va.dtype == object or vb.dtype == object:
            same = va.tolist() == vb.tolist()
        else:
            same = va.dtype == vb.dtype and va.tobytes() == vb.tobytes()
        if not same:
            out.append(f"{path}@{k}: {a.attrs[k]!r} != {b.attrs[k]!r}")
    if isinstance(a, h5py.Dataset):
        x, y = a[()], b[()]
        same = a.dtype == b.dtype and a.shape == b.shape and (
            x.tolist() == y.tolist() if a.dtype == object else x.tobytes() == y.tobytes())
        if not same:
            out.append(f"{path}: data differs")
        return out
    if set(a) != set(b):
        out.append(f"{path}: members {sorted(set(a) ^ set(b))}")
    for k in sorted(set(a) & set(b)):
        out += diff_groups(a[k], b[k], f"{path}/{k}")
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four small LR images (24x24 crops of the fixtures' LR images): fast analyses."""
    d = tmp_path_factory.mktemp("images")
    for k, name in enumerate(("astronaut_lr_x4.png", "coffee_lr_x4.png") * 2):
        with Image.open(IMAGES / name) as im:
            o = 8 * (k // 2)
            im.convert("RGB").crop((o, o, o + 24, o + 24)).save(d / f"img{k}.png")
    return d


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray cluster (2 CPUs) for the module; ``glam batch`` runs in it."""
    ray = pytest.importorskip("ray")
    import logging

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


# ------------------------------------------------------------------------- plans (no Ray)


def test_plan_file_expands_to_named_tasks(tmp_path: Path, images: Path) -> None:
    (tmp_path / "plan.toml").write_text(
        f'images = ["{images}"]\nlam = true\nlam_fold = 4\nrois = [[0, 0], [8, 16]]\n'
        f'[[models]]\npath = "{CARN}"\n'
        f'[[models]]\npath = "{RCAN}"\nname = "rcan"\nin_channels = 3\nlam_batch = 2\n'
    )
    plan = load_plan(tmp_path / "plan.toml")
    tasks = expand_tasks(plan)
    assert len(tasks) == 2 * 4 * 2
    assert tasks[0] == Task("carn_small_x2.legacy__img0__r0_0", 0, str(images / "img0.png"),
                            roi=(0, 0))
    assert tasks[-1].run == "rcan__img3__r8_16"
    assert plan.models[1].load_kwargs()["in_channels"] == 3
    o = plan.analyze_options(plan.models[1])
    assert (o.lam, o.lam_fold, o.lam_batch) == (True, 4, 2)
    # one ROI: glam analyze's own run names
    one = plan_from_dict({"models": [{"path": str(CARN)}], "images": [str(images)]})
    assert [t.run for t in expand_tasks(one)][:1] == ["carn_small_x2.legacy__img0"]
    # a grid spreads windows over the output, corners included
    assert [grid_roi((i, j, 2, 3), (48, 64), 16) for i, j in ((0, 0), (1, 2), (0, 1))] == [
        (0, 0), (32, 48), (0, 24)]


@pytest.fixture(scope="module")
def paired(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A benchmark-style folder: ``a_LR``/``a_HR`` and ``b_LR``/``b_HR`` (x2) pairs."""
    d = tmp_path_factory.mktemp("paired")
    for k, stem in enumerate(("a", "b")):
        with Image.open(IMAGES / "astronaut_lr_x4.png") as im:
            lr = im.convert("RGB").crop((8 * k, 0, 8 * k + 24, 24))
        lr.save(d / f"{stem}_LR.png")
        lr.resize((48, 48), Image.Resampling.BICUBIC).save(d / f"{stem}_HR.png")
    return d


def test_plan_pairs_lr_and_hr_images_like_analyze(tmp_path: Path, paired: Path) -> None:
    """*_LR/*_HR pairs in an image folder: one task per LR image, against its HR partner
    (not one per file, HR images analysed as LR inputs); --hr the other way round;
    reference_dir relative to the plan file."""
    one = {"models": [{"path": str(CARN)}], "images": [str(paired)]}
    tasks = expand_tasks(plan_from_dict(one))
    assert [(t.run, Path(t.image).name, Path(t.reference or "").name) for t in tasks] == [
        ("carn_small_x2.legacy__a_LR", "a_LR.png", "a_HR.png"),
        ("carn_small_x2.legacy__b_LR", "b_LR.png", "b_HR.png")]
    hr = expand_tasks(plan_from_dict({**one, "hr": True}))
    assert [(Path(t.image).name, t.reference) for t in hr] == [("a_HR.png", None),
                                                              ("b_HR.png", None)]
    lr_only = tmp_path / "lr"
    lr_only.mkdir()
    for stem in ("a", "b"):
        (lr_only / f"{stem}_LR.png").write_bytes((paired / f"{stem}_LR.png").read_bytes())
    (tmp_path / "plan.toml").write_text(
        f'images = ["lr"]\nreference_dir = "{paired.name}"\n[[models]]\npath = "{CARN}"\n')
    (tmp_path / paired.name).symlink_to(paired)
    tasks = expand_tasks(load_plan(tmp_path / "plan.toml"))
    assert [Path(t.reference or "").name for t in tasks] == ["a_HR.png", "b_HR.png"]
    with pytest.raises(UserInputError, match="no HR reference for 'c_LR.png'"):
        (lr_only / "c_LR.png").write_bytes((paired / "a_LR.png").read_bytes())
        expand_tasks(load_plan(tmp_path / "plan.toml"))


@pytest.mark.parametrize(("data", "needle"), [
    ({"images": ["x"]}, "no models"),
    ({"models": [{"path": "a.onnx"}]}, "no images"),
    ({"models": [{"path": "a.onnx", "colour": 1}], "images": ["x"]}, "'colour'"),
    ({"models": [{"path": "a.onnx"}], "images": ["x"], "window": "16"}, "window = '16'"),
    ({"models": [{"path": "a.onnx"}], "images": ["x"], "lam_fold": 0}, "--lam-fold 0"),
    ({"models": [{"path": "a.onnx"}], "images": ["x"], "roi_grid": [0, 2]}, "roi_grid"),
    ({"models": [{"path": "a.onnx"}], "images": ["x"], "speed": 2}, "unknown key(s) speed"),
])
def test_bad_plans_name_the_key(data: dict, needle: str) -> None:
    with pytest.raises(UserInputError, match=None) as err:
        plan_from_dict(data)
    assert needle in str(err.value)


def test_two_models_with_one_stem_need_names(tmp_path: Path, images: Path) -> None:
    plan = plan_from_dict({"models": [{"path": str(CARN)}, {"path": str(CARN)}],
                           "images": [str(images)]})
    with pytest.raises(UserInputError, match="give the models distinct names"):
        expand_tasks(plan)


def test_worker_slots_and_model_affine_scheduling(tmp_path: Path) -> None:
    from glam.batch.driver import BatchOptions, _Scheduler, worker_slots

    plan = plan_from_dict({"models": [{"path": "a.onnx"}, {"path": "b.onnx"}], "images": ["x"]})
    # one H200 and 16 CPUs: four analyses share the GPU, one CPU each
    assert worker_slots({"CPU": 16, "GPU": 1}, plan, BatchOptions(), 10) == (4, 1.0, 0.25)
    assert worker_slots({"CPU": 2}, plan, BatchOptions(), 10) == (2, 1.0, 0.0)
    assert worker_slots({"CPU": 8}, plan, BatchOptions(cpus_per_worker=2, workers=3), 10)[0] == 3
    assert worker_slots({"CPU": 8}, plan, BatchOptions(), 1)[0] == 1  # never more than tasks
    plan.options["device"] = "cpu"  # CPU-only plan on a GPU node: CPU workers
    assert worker_slots({"CPU": 4, "GPU": 1}, plan, BatchOptions(), 10) == (4, 1.0, 0.0)
    with pytest.raises(UserInputError, match="fewer than --cpus-per-worker 4"):
        worker_slots({"CPU": 2}, plan, BatchOptions(cpus_per_worker=4), 10)
    with pytest.raises(UserInputError, match="--gpu-fraction 0"):
        BatchOptions(gpu_fraction=0).validate()
    tasks = [Task(f"{m}{k}", m, "x") for m in (0, 1) for k in range(3)]
    sched = _Scheduler(tasks)
    order = [(w, sched.next(w).model) for w in (0, 1, 0, 1, 0, 1)]
    assert order == [(0, 0), (1, 1), (0, 0), (1, 1), (0, 0), (1, 1)]  # each keeps its model
    assert not sched and sched.next(0) is None


def test_worker_records_a_broken_model_once(tmp_path: Path) -> None:
    from glam.batch.worker import BatchWorker

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x00garbage")
    plan = plan_from_dict({"models": [{"path": str(broken)}], "images": [str(IMAGES)]})
    w = BatchWorker(plan, tmp_path, threads=1)
    a, b = (w.run(t) for t in expand_tasks(plan)[:2])
    assert a["status"] == b["status"] == "failed"
    assert a["error"] == b["error"] and "broken.onnx" in a["error"] and "\n" not in a["error"]
    assert len(w._models) == 1 and w.imports == 0 and not w.shard.exists()


# ------------------------------------------------------------------------ batches on Ray


def test_batch_equals_serial_reports_a_broken_model_and_resumes(
    ray_cluster: str, tmp_path: Path, images: Path
) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"this is not a model")
    imgs = [images / "img0.png"]
    plan = tmp_path / "zoo.toml"
    plan.write_text(
        f"images = {json.dumps([str(i) for i in imgs])}\n"
        f'[[models]]\npath = "{CARN}"\n[[models]]\npath = "{RCAN}"\n'
        f'[[models]]\npath = "{broken}"\n'
    )
    zoo = tmp_path / "zoo.h5"
    r = CliRunner().invoke(cli, ["batch", str(plan), "-o", str(zoo), "--json"])
    assert r.exit_code == 3, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert (summary["tasks"], summary["done"], summary["failed"]) == (3, 2, 1)
    assert [f["run"] for f in summary["failures"]] == ["broken__img0"]
    assert all("broken.onnx" in f["error"] and "\n" not in f["error"]
               for f in summary["failures"])
    assert sorted(existing_runs(zoo)) == ["carn_small_x2.legacy__img0", "rcan_small_x2.script__img0"]
    rec = read_batch(zoo)
    assert rec["tasks"]["broken__img0"]["status"] == "failed"
    assert rec["tasks"]["carn_small_x2.legacy__img0"]["status"] == "done"
    s0 = rec["sessions"][0]
    assert s0["ray_version"] and json.loads(s0["cluster_resources"])["CPU"] == 2.0
    assert not list(shard_dir_for(zoo).glob("shard-*.h5"))  # copied: the shards are gone

    # bit for bit what serial `glam analyze` writes for the same task
    serial = tmp_path / "serial.h5"
    for model, img in ((CARN, imgs[0]), (RCAN, imgs[0])):
        r = CliRunner().invoke(cli, ["analyze", str(model), str(img), "-o", str(serial)])
        assert r.exit_code == 0, r.output
    with h5py.File(zoo, "r") as a, h5py.File(serial, "r") as b:
        for run in ("carn_small_x2.legacy__img0", "rcan_small_x2.script__img0"):
            assert diff_groups(a["runs"][run], b["runs"][run]) == []

    # glam ls / compare read it unchanged; compare --image: every model on one image
    r = CliRunner().invoke(cli, ["ls", str(zoo)])
    assert r.exit_code == 0 and "rcan_small_x2.script__img0" in r.output
    r = CliRunner().invoke(cli, ["compare", str(zoo), "--image", "img0.png",
                                 "--to", str(tmp_path / "cmp")])
    assert r.exit_code == 0, r.output
    assert "carn_small_x2.legacy__img0" in r.output and "rcan_small_x2.script__img0" in r.output
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 0
    r = CliRunner().invoke(cli, ["compare", str(zoo), "--image", "ghost"])
    assert r.exit_code == 2 and "img0.png" in r.output

    # rerun: the complete runs are skipped, the failed tasks retried (and fail again)
    r = CliRunner().invoke(cli, ["batch", str(plan), "-o", str(zoo), "--json"])
    assert r.exit_code == 3, r.output
    again = json.loads(r.stdout.strip().splitlines()[-1])
    assert (again["skipped"], again["done"], again["failed"]) == (2, 0, 1)
    rec = read_batch(zoo)
    assert rec["tasks"]["broken__img0"]["attempts"] == 2
    assert len(rec["sessions"]) == 2


def test_batch_pairs_references_and_passes_analysis_options(
    ray_cluster: str, tmp_path: Path, paired: Path
) -> None:
    """`glam batch --images DIR` pairs *_LR/*_HR like `glam analyze DIR` (PSNR against the
    HR partner, bit for bit the serial runs); --lam-fold/--store-dtype reach the tasks."""
    zoo, serial = tmp_path / "zoo.h5", tmp_path / "serial.h5"
    opts = ["--lam", "--lam-fold", "3", "--store-dtype", "float16"]
    r = CliRunner().invoke(cli, ["batch", "--models", str(CARN), "--images", str(paired),
                                 "-o", str(zoo), "--json", *opts])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert (summary["tasks"], summary["done"]) == (2, 2)
    # one torch thread, as each 1-CPU worker: LAM's float sums depend on the thread count
    r = CliRunner().invoke(cli, ["analyze", str(CARN), str(paired), "-o", str(serial), *opts,
                                 "--threads", "1"])
    assert r.exit_code == 0, r.output
    runs = ["carn_small_x2.legacy__a_LR", "carn_small_x2.legacy__b_LR"]
    assert sorted(existing_runs(zoo)) == sorted(existing_runs(serial)) == runs
    with h5py.File(zoo, "r") as a, h5py.File(serial, "r") as b:
        for run in runs:
            assert diff_groups(a["runs"][run], b["runs"][run]) == []
    with open_archive(zoo) as ar:
        assert np.isfinite(ar.run(runs[0]).metrics["psnr"])
        g = ar.group(runs[0])
        assert str(g.attrs["reference_path"]).endswith("a_HR.png")
        assert (int(g["lam"].attrs["fold"]), str(g.attrs["store_dtype"])) == (3, "float16")


def test_resume_after_sigkill_of_the_driver(ray_cluster: str, tmp_path: Path,
                                            images: Path) -> None:
    zoo = tmp_path / "zoo.h5"
    # LAM at fold 400 (seconds a run) keeps the driver busy after its first run is in the
    # archive: without it the four runs took well under a second together, and the driver
    # had finished all of them when the kill came (twice in clean-clone runs)
    slow = ["--lam", "--lam-fold", "400"]
    cmd = [sys.executable, "-m", "glam", "batch", "--models", str(CARN), "--images",
           str(images), "-o", str(zoo), "--address", ray_cluster, "--workers", "1", *slow]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if zoo.exists() and existing_runs(zoo):
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    finished = set(existing_runs(zoo))
    assert 1 <= len(finished) < 4
    with open_archive(zoo) as ar:  # the archive survived, its runs are whole
        for name in finished:
            assert ar.verify_run(name) > 0
    # the rerun (joining the same cluster) keeps the finished runs and does the rest
    r = CliRunner().invoke(cli, ["batch", "--models", str(CARN), "--images", str(images),
                                 "-o", str(zoo), "--json", "--links", *slow])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["skipped"] == len(finished)
    assert summary["skipped"] + summary["recovered"] + summary["done"] == 4
    assert len(existing_runs(zoo)) == 4
    # --links: the new runs are external links into shards kept beside the archive
    with h5py.File(zoo, "r") as f:
        links = [n for n in f["runs"]
                 if isinstance(f["runs"].get(n, getlink=True), h5py.ExternalLink)]
    assert len(links) == 4 - len(finished)
    with open_archive(zoo) as ar:
        assert ar.run(links[0]).local["sum"].shape == (48, 48)
        di = [ar.run(n).metrics["di_local"] for n in ar.runs()]
    # compare --by-model: DI over the image set as mean ± std (sample std)
    r = CliRunner().invoke(cli, ["compare", str(zoo), "--by-model"])
    assert r.exit_code == 0, r.output
    row = next(line for line in r.output.splitlines() if "carn_small_x2.legacy.onnx" in line)
    assert row.split()[1:3] == ["4", "4"]
    assert f"{np.mean(di):.2f} ± {np.std(di, ddof=1):.2f}" in row


def test_a_killed_worker_loses_only_its_task(ray_cluster: str, tmp_path: Path,
                                             images: Path) -> None:
    from glam.batch.driver import BatchOptions, run_batch
    from glam.batch.plan import plan_from_options

    plan = plan_from_options([str(CARN)], [str(images / f"img{k}.png") for k in range(3)])
    killed: list[int] = []

    def kill_the_worker(rec: dict) -> None:
        if not killed:  # SIGKILL the worker right after its first run is archived
            killed.append(int(rec["pid"]))
            os.kill(killed[0], signal.SIGKILL)

    zoo = tmp_path / "zoo.h5"
    s = run_batch(plan, zoo, BatchOptions(workers=1), on_task=kill_the_worker)
    assert (s.done, s.failed) == (2, 1)
    assert s.failures[0]["error"].startswith("worker died")
    assert len(existing_runs(zoo)) == 2  # the finished run and the one after the restart
    pids = {t["pid"] for t in read_batch(zoo)["tasks"].values() if t["status"] == "done"}
    assert len(pids) == 2 and killed[0] in pids


def test_external_links_adopted_and_dangling(tmp_path: Path) -> None:
    """--links archives: a run is an external link into its shard; a shard that is gone
    hides its runs (listing, later writes) instead of breaking the archive."""
    from glam.archive.hdf5 import adopt_runs, init_archive

    def shard(name: str, run: str) -> Path:
        p = tmp_path / name
        init_archive(p)
        with h5py.File(p, "r+") as f:
            g = f["runs"].create_group(run)
            g.attrs["complete"] = np.bool_(True)
            g["output"] = np.arange(4, dtype=np.float32)
        return p

    zoo = tmp_path / "zoo.h5"
    adopt_runs(zoo, [(shard("s1.h5", "a"), "a")], link=True)
    with h5py.File(zoo, "r") as f:
        assert f["runs"].get("a", getlink=True).filename == "s1.h5"  # relative to the archive
        assert f["runs/a/output"][()].tolist() == [0, 1, 2, 3]
    (tmp_path / "s1.h5").unlink()
    assert existing_runs(zoo) == []
    adopt_runs(zoo, [(shard("s2.h5", "b"), "b")])  # a copy: the dangling link is left alone
    assert existing_runs(zoo) == ["b"]
    with pytest.raises(Exception, match="not complete"):
        adopt_runs(zoo, [(tmp_path / "s2.h5", "ghost")])
