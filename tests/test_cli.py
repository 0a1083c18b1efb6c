"""The ``glam`` command line through click's CliRunner (and one real subprocess)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from cli_output import message_lines
from click.testing import CliRunner
from glam import importers
from glam.archive.hdf5 import open_archive
from glam.cli import cli
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent

# every command still imports real model files; successful imports are memoised per module
pytestmark = pytest.mark.usefixtures("cached_model_load")


def glam(*args: object, code: int = 0) -> object:
    """Invoke ``glam ARGS`` and check the exit code."""
    res = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == code, (res.exit_code, res.stdout, res.stderr)
    return res


def _error_line(res) -> str:  # type: ignore[no-untyped-def]
    # the phase log ("glam: ...") may precede the one error line
    lines = message_lines(res.stderr)
    assert lines and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr
    return lines[0]


def _png_ok(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 2000, path
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32)
    assert min(arr.shape[:2]) >= 64 and arr.std() > 5.0, path


# ------------------------------------------------------------------------------ inspect


def test_inspect_human_and_json(tiny_model: Path) -> None:
    res = glam("inspect", tiny_model)
    out = res.stdout
    assert "format     onnx" in out and "x2" in out and "passed" in out
    assert "head" in out and "squeeze" in out and "5 convolution(s), 3 participating" in out
    res = glam("inspect", tiny_model, "--json")
    d = json.loads(res.stdout)
    assert d["format"] == "onnx" and d["scale"] == 2 and d["input"]["channels"] == 3
    assert set(d["parity"]) >= {"reference", "max_abs_error", "passed"} and d["parity"]["passed"]
    assert [t["index"] for t in d["taps"]] == list(range(5))
    assert set(d["taps"][0]) >= {"index", "name", "op", "shape", "parent"}
    assert d["taps"][1]["parent"] == 0 and d["taps"][0]["parent"] == -1


def test_inspect_errors(models_dir: Path, tmp_path: Path) -> None:
    assert "does not exist" in _error_line(glam("inspect", tmp_path / "nope.onnx", code=2))
    assert "not an ONNX" in _error_line(glam("inspect", models_dir / "broken.onnx", code=2))
    line = _error_line(glam("inspect", models_dir / "unsupported.onnx", code=3))
    assert "FancyActivation" in line
    line = _error_line(glam("inspect", models_dir / "tiny_x2.onnx", "--tolerance", "0", code=3))
    assert "tolerance 0" in line
    res = glam("--debug", "inspect", models_dir / "broken.onnx", code=2)
    assert "Traceback" in res.stderr
    glam("inspect", models_dir / "tiny_x2.onnx", "--layout", "NWHC", code=2)  # click usage


# ------------------------------------------------------------------------------ analyze

RUN_ATTRS = (
    "model_path",
    "model_sha256",
    "model_format",
    "image_path",
    "image_sha256",
    "scale",
    "offset",
    "roi_top",
    "roi_left",
    "window",
    "input_range",
    "device",
    "complete",
    "baseline",
)
METRICS = (
    "di_local",
    "di_global",
    "attributed_fraction_local",
    "attributed_fraction_global",
    "seconds_glam",
)


def test_analyze_layout_json_and_append(tiny_model: Path, lr_image: Path, tmp_path: Path) -> None:
    ar = tmp_path / "runs.h5"
    res = glam(
        "analyze", tiny_model, lr_image, "-o", ar, "--json", "--roi", "4,6", "--window", "10"
    )
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1
    d = json.loads(lines[0])
    assert d["run"] == "tiny_x2__b" and d["archive"] == str(ar)
    assert set(METRICS) <= set(d["metrics"]) and "psnr" not in d["metrics"]

    with h5py.File(ar, "r") as f:
        assert f.attrs["format"] == "glam" and int(f.attrs["schema_version"]) == 1
        assert {"glam_version", "created"} <= set(f.attrs)
        assert list(f["runs"]) == ["tiny_x2__b"]
        g = f["runs/tiny_x2__b"]
        assert set(RUN_ATTRS) <= set(g.attrs)
        assert bool(g.attrs["complete"]) and not bool(g.attrs["baseline"])
        assert (int(g.attrs["roi_top"]), int(g.attrs["roi_left"]), int(g.attrs["window"])) == (
            4,
            6,
            10,
        )
        assert int(g.attrs["scale"]) == 2 and g.attrs["device"] == "cpu"
        assert g.attrs["model_sha256"] == importers.sha256_of(tiny_model)
        assert g["input"].shape == (3, 20, 24) and g["input"].dtype == np.float32
        assert g["output"].shape == (3, 40, 48) and g["output"].dtype == np.float32
        assert "reference" not in g and "lam" not in g
        for name in ("name", "op", "parent", "shape", "participating"):
            assert g[f"taps/{name}"].shape[0] == 5
        assert g["taps/shape"][1].tolist() == [1, 8, 20, 24]
        assert g["taps/parent"][()].tolist() == [-1, 0, 1, 1, 1]
        assert [s.decode() if isinstance(s, bytes) else s for s in g["taps/op"][()]][0]
        for fam in ("local", "global"):
            for key in ("consensus", "variation", "sum"):
                ds = g[f"{fam}/{key}"]
                assert ds.shape == (40, 48) and ds.dtype == np.float32
                assert ds.attrs["normalization"] == "N (GLAM.md)"
                assert 0.0 <= ds[()].min() and ds[()].max() <= 1.0
        assert len(g["layers"]) == 5
        lay = g["layers/1"]
        assert {"name", "op", "parent"} <= set(lay.attrs) and int(lay.attrs["parent"]) == 0
        assert set(lay) == {"local_map", "global_map", "global_grad_map", "activation_energy"}
        assert lay["local_map"].shape == (20, 24) and lay["local_map"].compression == "gzip"
        assert lay["local_map"].attrs["normalization"] == "none (raw)"
        assert set(g["layers/2"]) == {"local_map"}  # 1x1 squeeze conv: not participating
        m = g["metrics"].attrs
        assert set(METRICS) <= set(m)
        assert g["map_metrics/local/sum"].attrs["di"] == m["di_local"]  # the same DI
        p = g["provenance"]
        assert {
            "torch",
            "onnx",
            "onnxruntime",
            "python",
            "command_line",
            "store",
            "store_dtype",
            "warnings",
        } <= set(p.attrs)
        assert p.attrs["command_line"].startswith("glam analyze ")
        assert {"in_channels", "layout", "input_range", "output_index"} <= set(
            p["conventions"].attrs
        )
        assert bool(p["parity"].attrs["passed"])

    # appending a second image; the same name again is refused; --overwrite replaces it
    glam("analyze", tiny_model, lr_image, "-o", ar, "--run", "again")
    line = _error_line(glam("analyze", tiny_model, lr_image, "-o", ar, code=2))
    assert "already exists" in line and "--overwrite" in line
    glam("analyze", tiny_model, lr_image, "-o", ar, "--overwrite", "--window", "8")
    with open_archive(ar) as a:
        assert sorted(a.runs()) == ["again", "tiny_x2__b"]
        assert a.run("tiny_x2__b").window == 8


def test_analyze_hr_lam_tensors_float16_y_model(
    tiny_y_model: Path, hr_image: Path, tmp_path: Path
) -> None:
    ar = tmp_path / "y.h5"
    figs = tmp_path / "figs"
    res = glam(
        "analyze",
        tiny_y_model,
        hr_image,
        "-o",
        ar,
        "--hr",
        "--lam",
        "--lam-fold",
        "4",
        "--lam-batch",
        "3",
        "--store",
        "tensors",
        "--store-dtype",
        "float16",
        "--figures",
        figs,
    )
    assert "DI local" in res.stdout and "PSNR" in res.stdout
    with h5py.File(ar, "r") as f:
        g = f["runs/tiny_y_x2__a_hr"]
        assert g["input"].shape == (1, 24, 20) and g["input_rgb"].shape == (3, 24, 20)
        assert g["reference"].shape == g["output"].shape == (1, 48, 40)
        assert g["lam/attribution"].shape == (1, 24, 20)
        assert g["lam/map"].shape == (24, 20) and g["lam/map_output"].shape == (48, 40)
        assert {
            "psnr",
            "mse",
            "psnr_roi",
            "mse_roi",
            "di_lam",
            "di_lam_output",
            "attributed_fraction_lam",
            "seconds_lam",
        } <= set(g["metrics"].attrs)
        assert int(g["provenance"].attrs["lam_fold"]) == 4
        assert int(g["provenance"].attrs["lam_batch"]) == 3
        assert g.attrs["store_dtype"] == "float16"
        for i in ("0", "1", "4"):
            lay = g["layers"][i]
            assert {"activation", "grad_local", "grad_global", "local_map", "global_map"} <= set(
                lay
            )
            assert all(lay[k].dtype == np.float16 for k in lay)
            assert lay["activation"].ndim == 3 and "scale" in lay["activation"].attrs
        assert g["local/sum"].dtype == np.float32
    written = sorted((figs / "tiny_y_x2__a_hr").glob("*.png"))
    assert len(written) >= 3
    for p in written:
        _png_ok(p)


def test_analyze_directory_progress_and_summary(
    tiny_model: Path, images_dir: Path, tmp_path: Path
) -> None:
    ar = tmp_path / "dir.h5"
    res = glam("analyze", tiny_model, images_dir, "-o", ar, "--run", "batch", "--window", "8")
    # phase log per image and a progress bar over the images, as whole lines (not a TTY)
    assert "glam: [1/3 a_hr.png] GL-AM " in res.stderr
    assert "glam: images: 3/3 image" in res.stderr and "\r" not in res.stderr
    assert "glam: total " in res.stderr.splitlines()[-1]
    for stem in ("a_hr", "b", "c"):
        assert f"batch__{stem}" in res.stdout
    assert "DI local" in res.stdout and "3 run(s)" in res.stdout
    res = glam(
        "analyze",
        tiny_model,
        images_dir,
        "-o",
        ar,
        "--json",
        "--overwrite",
        "--window",
        "8",
        "--run",
        "batch",
    )
    rows = [json.loads(x) for x in res.stdout.strip().splitlines()]
    assert [r["run"] for r in rows] == ["batch__a_hr", "batch__b", "batch__c"]


def test_analyze_default_archive_in_cwd(
    tiny_model: Path, lr_image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    glam("analyze", tiny_model, lr_image, "--window", "6")
    assert (tmp_path / "glam-runs.h5").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_analyze_user_errors(
    tiny_model: Path, lr_image: Path, models_dir: Path, tmp_path: Path
) -> None:
    ar = tmp_path / "e.h5"
    assert "not inside the 40x48 output" in _error_line(
        glam("analyze", tiny_model, lr_image, "-o", ar, "--roi", "30,0", code=2)
    )
    assert "window 1" in _error_line(
        glam("analyze", tiny_model, lr_image, "-o", ar, "--window", "1", code=2)
    )
    assert "TOP,LEFT" in _error_line(
        glam("analyze", tiny_model, lr_image, "-o", ar, "--roi", "abc", code=2)
    )
    assert "does not exist" in _error_line(
        glam("analyze", tiny_model, tmp_path / "none.png", "-o", ar, code=2)
    )
    assert "does not exist" in _error_line(
        glam("analyze", tmp_path / "none.onnx", lr_image, "-o", ar, code=2)
    )
    assert "not an ONNX" in _error_line(
        glam("analyze", models_dir / "broken.onnx", lr_image, "-o", ar, code=2)
    )
    assert "either --hr or --reference" in _error_line(
        glam("analyze", tiny_model, lr_image, "-o", ar, "--hr", "--reference", lr_image, code=2)
    )
    assert "does not exist" in _error_line(
        glam("analyze", tiny_model, lr_image, "-o", tmp_path / "nodir" / "x.h5", code=2)
    )
    notes = tmp_path / "notes.txt"
    notes.write_text("not an archive")
    assert "not an HDF5 file" in _error_line(
        glam("analyze", tiny_model, lr_image, "-o", notes, code=2)
    )
    bad_img = tmp_path / "bad.png"
    bad_img.write_bytes(b"no image here")
    assert "not a readable image" in _error_line(
        glam("analyze", tiny_model, bad_img, "-o", ar, code=2)
    )
    line = _error_line(glam("analyze", models_dir / "unsupported.onnx", lr_image, "-o", ar, code=3))
    assert "unsupported operators" in line
    glam("analyze", tiny_model, lr_image, "--store", "everything", code=2)  # click usage error
    assert not ar.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_analyze_is_deterministic(tiny_model: Path, hr_image: Path, tmp_path: Path) -> None:
    ar = tmp_path / "det.h5"
    for name in ("one", "two"):
        glam(
            "analyze",
            tiny_model,
            hr_image,
            "--hr",
            "-o",
            ar,
            "--run",
            name,
            "--lam",
            "--lam-fold",
            "3",
            "--store",
            "tensors",
            "--device",
            "cpu",
        )
    skip = {"created", "name"}
    with h5py.File(ar, "r") as f:
        a, b = f["runs/one"], f["runs/two"]
        items_a: dict[str, object] = {}
        a.visititems(lambda n, o: items_a.update({n: o}))  # update() returns None: keep going
        items_b: dict[str, object] = {}
        b.visititems(lambda n, o: items_b.update({n: o}))
        assert sorted(items_a) == sorted(items_b)
        n_datasets = 0
        for name, oa in items_a.items():
            ob = items_b[name]
            if isinstance(oa, h5py.Dataset):
                n_datasets += 1
                va, vb = oa[()], ob[()]
                assert va.dtype == vb.dtype and va.shape == vb.shape, name
                if va.dtype.kind == "O":  # strings
                    assert va.tolist() == vb.tolist(), name
                else:
                    assert va.tobytes() == vb.tobytes(), f"{name} differs"
            for k in oa.attrs:
                if k in skip or k.startswith("seconds") or k in ("command_line", "argv"):
                    continue
                assert np.array_equal(np.asarray(oa.attrs[k]), np.asarray(ob.attrs[k])), (name, k)
        assert n_datasets > 30


# ----------------------------------------------------------- ls / show / export / compare


@pytest.fixture(scope="module")
def archive_two(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, tiny_y_model: Path, hr_image: Path
) -> Path:
    ar = tmp_path_factory.mktemp("arch") / "two.h5"
    runner = CliRunner()
    for model, extra in ((tiny_model, ["--lam", "--lam-fold", "3"]), (tiny_y_model, [])):
        res = runner.invoke(
            cli, ["analyze", str(model), str(hr_image), "--hr", "-o", str(ar), *extra]
        )
        assert res.exit_code == 0, res.stderr
    return ar


def test_ls_and_show(archive_two: Path, tmp_path: Path) -> None:
    out = glam("ls", archive_two).stdout
    assert "tiny_x2__a_hr" in out and "tiny_y_x2__a_hr" in out and "PSNR" in out
    assert "tiny_x2.onnx" in out and "a_hr.png" in out
    rows = [json.loads(x) for x in glam("ls", archive_two, "--json").stdout.splitlines()]
    assert [r["run"] for r in rows] == ["tiny_x2__a_hr", "tiny_y_x2__a_hr"]
    out = glam("show", archive_two, "tiny_x2__a_hr").stdout
    assert "di_local" in out and "psnr" in out and "torch" in out and "head" in out
    d = json.loads(glam("show", archive_two, "tiny_x2__a_hr", "--json").stdout)
    assert d["run"] == "tiny_x2__a_hr" and d["metrics"]["di_local"] > 0
    assert d["taps"]["count"] == 5 and d["provenance"]["parity"]["passed"] is True
    line = _error_line(glam("show", archive_two, "nope", code=2))
    assert "'nope'" in line and "tiny_x2__a_hr" in line
    assert "does not exist" in _error_line(glam("ls", tmp_path / "none.h5", code=2))
    txt = tmp_path / "x.h5"
    txt.write_text("plain text")
    assert "not an HDF5 file" in _error_line(glam("ls", txt, code=2))


def test_export(archive_two: Path, tmp_path: Path) -> None:
    out = tmp_path / "exp"
    res = glam("export", archive_two, "tiny_x2__a_hr", "--to", out)
    assert "exported" in res.stdout
    for name in (
        "local_consensus",
        "local_variation",
        "local_sum",
        "global_sum",
        "output",
        "input",
        "reference",
        "lam_attribution",
        "lam_map",
        "lam_map_output",
    ):
        assert (out / f"{name}.npy").is_file(), name
    assert np.load(out / "local_sum.npy").shape == (48, 40)
    assert np.load(out / "input.npy").shape == (3, 24, 20)
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) >= 4
    for p in pngs:
        _png_ok(p)
    assert json.loads((out / "run.json").read_text())["run"] == "tiny_x2__a_hr"
    glam("export", archive_two, "missing", "--to", out, code=2)


def test_compare(archive_two: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    res = glam("compare", archive_two, "--runs", "tiny_x2__a_hr,tiny_y_x2__a_hr", "--to", out)
    assert "tiny_x2" in res.stdout
    _png_ok(out / "compare.png")
    assert (out / "compare.txt").read_text().strip()
    glam("compare", archive_two, "--runs", "tiny_x2__a_hr", code=2)
    glam("compare", archive_two, "--runs", "tiny_x2__a_hr,ghost", "--to", out, code=2)


# --------------------------------------------------------------------------------- demo


def test_demo(tiny_model: Path, tmp_path: Path) -> None:
    from glam.runs import default_demo_inputs

    model, image = default_demo_inputs()
    assert image.is_file()
    assert model is not None and model.exists()
    # the default: LAM at fold 50 after an untimed warm-up; GL-AM must come out faster
    res = glam("demo", "--out", tmp_path / "demo", "--threads", "1")
    assert "archive" in res.stdout and "figures" in res.stdout and "LAM" in res.stdout
    assert "fold 50" in res.stdout and "GL-AM is " in res.stdout
    assert "faster than LAM; both exclude a " in res.stdout and "warm-up" in res.stdout
    phases = [ln.split()[1] for ln in res.stderr.splitlines() if ln.startswith("glam: ")
              and not ln.startswith(("glam: LAM path", "glam: note"))]
    # "run parity": the output against the reference runtime on the analysed input
    assert phases == ["threads", "import", "parity", "warm-up", "GL-AM", "run", "LAM", "figures",
                      "report", "total"]
    ar = tmp_path / "demo" / "demo.h5"
    with open_archive(ar) as a:
        (run,) = a.runs()
        rd = a.run(run)
        assert "psnr" in rd.metrics and "di_lam" in rd.metrics
        assert rd.lam is not None and int(rd.lam["attrs"]["fold"]) == 50
        assert rd.metrics["seconds_glam"] < rd.metrics["seconds_lam"]
    pngs = sorted((tmp_path / "demo" / "figures" / run).glob("*.png"))
    assert len(pngs) >= 4
    for p in pngs:
        _png_ok(p)


# -------------------------------------------------------------------- crash safety (real)


def test_sigkill_mid_directory_keeps_finished_runs(tiny_model: Path, tmp_path: Path) -> None:
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    src = Image.open(ROOT / "fixtures" / "images" / "astronaut_hr.png").convert("RGB")
    for i in range(5):
        src.crop((i * 20, i * 10, i * 20 + 48, i * 10 + 48)).save(imgs / f"im{i}.png")
    ar = tmp_path / "k.h5"
    cmd = [
        sys.executable,
        "-m",
        "glam",
        "analyze",
        str(tiny_model),
        str(imgs),
        "-o",
        str(ar),
        "--json",
        "--store",
        "tensors",
        "--lam",
        "--lam-fold",
        "6",
        "--device",
        "cpu",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=tmp_path, text=True
    )
    try:
        first = proc.stdout.readline()  # type: ignore[union-attr]
        assert first, "the analysis printed nothing"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    done = json.loads(first)["run"]
    assert done == "tiny_x2__im0"
    with open_archive(ar) as a:
        runs = a.runs()
        assert runs[0] == done and len(runs) < 5
        for r in runs:
            rd = a.run(r)
            assert rd.attrs["complete"] is True and rd.output.shape == (3, 96, 96)
            assert a.n_layers(r) == 5
    # appending afterwards works and cleans every leftover
    extra = tmp_path / "extra"
    extra.mkdir()
    shutil.copy(imgs / "im4.png", extra / "late.png")
    glam("analyze", tiny_model, extra, "-o", ar, "--window", "8")
    with h5py.File(ar, "r") as f:
        assert not [n for n in f["runs"] if n.startswith(".")]
        assert "tiny_x2__late" in f["runs"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_python_m_analyzer_help() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "glam", "--help"], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0 and "analyze" in res.stdout and "demo" in res.stdout


def test_demo_without_bundled_model_is_a_user_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from glam import runs

    image = ROOT / "fixtures" / "images" / "astronaut_hr.png"
    monkeypatch.setattr(runs, "default_demo_inputs", lambda: (None, image))
    line = _error_line(glam("demo", "--out", tmp_path / "d", code=2))
    assert "make_fixtures" in line and "--model" in line
