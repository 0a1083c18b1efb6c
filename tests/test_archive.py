"""The HDF5 archive (glam.archive.hdf5) through its Python API: writing, reading, crash safety."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from glam.archive import hdf5
from glam.archive.figure_data import FigureData
from glam.archive.hdf5 import (
    SCHEMA_VERSION,
    RunWriter,
    _quantize,
    check_run_names,
    open_archive,
    validate_run_name,
)
from glam.errors import ArchiveError
from glam.runs import AnalyzeOptions, analyze_images, default_run_name
from numerics import EPS16, assert_close


def _run(model, images, archive, **kw):  # type: ignore[no-untyped-def]
    return analyze_images(model, images, archive, AnalyzeOptions(**kw))


def _scratch_files(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.name.startswith("."))


def test_roundtrip_reader_and_figure_data(imported_tiny, hr_image: Path, tmp_path: Path) -> None:
    ar_path = tmp_path / "a.h5"
    (s,) = _run(imported_tiny, [hr_image], ar_path, hr=True, lam=True, lam_fold=4)
    assert s.run == default_run_name(imported_tiny.path, hr_image) == "tiny_x2__a_hr"
    with open_archive(ar_path) as ar:
        assert ar.runs() == [s.run]
        assert ar.schema_version == SCHEMA_VERSION
        rd = ar.run(s.run)
        assert rd.metrics["di_local"] == s.metrics["di_local"]  # stored and read back
        assert "psnr" in rd.metrics and "di_lam" in rd.metrics
        assert rd.reference is not None and rd.reference.shape == rd.output.shape
        assert rd.lam is not None and rd.lam["map"].shape == rd.input.shape[-2:]
        assert set(rd.local) == set(rd.global_) == {"consensus", "variation", "sum"}
        assert len(rd.taps) == 5 and [t["participating"] for t in rd.taps] == [
            True,
            True,
            False,
            False,
            True,
        ]
        assert rd.provenance["parity"]["passed"] is True
        assert rd.provenance["conventions"]["scale"] == 2
        assert rd.map_metrics["local/sum"]["di"] == rd.metrics["di_local"]  # the same DI
        assert ar.n_layers(s.run) == 5
        layers = list(ar.iter_layers(s.run))
        assert [rec["index"] for rec in layers] == list(range(5))
        assert "global_map" in layers[0] and "global_map" not in layers[2]
        fd = ar.figure_data(s.run)
        assert isinstance(fd, FigureData)
        assert fd.input_rgb.dtype == np.uint8 and fd.input_rgb.shape[-1] == 3
        assert fd.output_rgb.shape[:2] == rd.output.shape[-2:]
        assert [k.index for k in fd.local_keys] == [0, 1, 4]
        assert all(k.key.shape == rd.output.shape[-2:] for k in fd.global_keys)
        assert fd.lam_map_output is not None
        with pytest.raises(ArchiveError, match="layer 9 is not in run"):
            ar.layer(s.run, 9)
    assert _scratch_files(tmp_path) == []


def test_float16_storage_scales_tiny_values() -> None:
    a = np.array([[1e-9, -3e-10], [2.5e-9, 0.0]], dtype=np.float32)
    stored, scale = _quantize(a, "float16")
    assert stored.dtype == np.float16 and scale > 0
    back = stored.astype(np.float32) * np.float32(scale)
    # float16 keeps 11 significant bits of each value (scaled into its range): half an
    # epsilon of float16 relative to the largest value
    assert_close(back, a, ulps=0.5, eps=EPS16)
    same, one = _quantize(a, "float32")
    assert one == 1.0 and same.dtype == np.float32


def test_float16_layers_read_back_close_to_float32(
    imported_tiny, lr_image: Path, tmp_path: Path
) -> None:
    p32, p16 = tmp_path / "32.h5", tmp_path / "16.h5"
    _run(imported_tiny, [lr_image], p32, store="tensors")
    (s,) = _run(imported_tiny, [lr_image], p16, store="tensors", store_dtype="float16")
    with open_archive(p32) as a32, open_archive(p16) as a16:
        for i in range(5):
            r32, r16 = a32.layer(s.run, i), a16.layer(s.run, i)
            for key in ("local_map", "activation", "grad_local"):
                ref = r32[key]
                assert_close(r16[key], ref, ulps=0.5, eps=EPS16, err_msg=f"layer {i} {key}")
        g = a16.group(s.run)
        assert g["layers/0/grad_local"].dtype == np.float16
        assert g["local/sum"].dtype == np.float32  # final maps stay float32


def test_new_archive_appears_only_when_first_run_is_complete(
    imported_tiny, lr_image: Path, tmp_path: Path
) -> None:
    ar_path = tmp_path / "new.h5"
    seen: list[bool] = []
    analyze_images(
        imported_tiny,
        [lr_image],
        ar_path,
        AnalyzeOptions(),
        on_layer=lambda rec: seen.append(ar_path.exists()),
    )
    assert seen and not any(seen)
    assert ar_path.exists()
    with h5py.File(ar_path, "r") as f:
        assert f.attrs["format"] == "glam" and int(f.attrs["schema_version"]) == 1


def test_interrupt_mid_run_keeps_earlier_runs(
    imported_tiny, images_dir: Path, tmp_path: Path
) -> None:
    ar_path = tmp_path / "int.h5"
    calls = {"n": 0}

    def sink(rec) -> None:  # type: ignore[no-untyped-def]
        if rec.index == 0:
            calls["n"] += 1
        if calls["n"] == 2 and rec.index == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        analyze_images(
            imported_tiny, [images_dir], ar_path, AnalyzeOptions(store="tensors"), on_layer=sink
        )
    with open_archive(ar_path) as ar:
        assert ar.runs() == ["tiny_x2__a_hr"]
        rd = ar.run("tiny_x2__a_hr")
        assert rd.attrs["complete"] is True and rd.output.shape[0] == 3
    with h5py.File(ar_path, "r") as f:
        assert list(f["runs"]) == ["tiny_x2__a_hr"]
    assert _scratch_files(tmp_path) == []


def test_leftovers_are_hidden_and_cleaned(imported_tiny, lr_image: Path, tmp_path: Path) -> None:
    ar_path = tmp_path / "left.h5"
    (s,) = _run(imported_tiny, [lr_image], ar_path)
    with h5py.File(ar_path, "r+") as f:
        f["runs"].create_group(".tmp-ghost-99999").attrs["complete"] = True
        f["runs"].create_group("half").attrs["complete"] = False
    dead_pid = 2**22 + 12345
    stale = tmp_path / f".left.h5.{dead_pid}.1.scratch.h5"
    stale.write_bytes(b"partial")
    with open_archive(ar_path) as ar:
        assert ar.runs() == [s.run]
        with pytest.raises(ArchiveError, match="available runs: tiny_x2__b"):
            ar.run("half")
    _run(imported_tiny, [lr_image], ar_path, run="second")
    with h5py.File(ar_path, "r") as f:
        assert sorted(f["runs"]) == ["second", s.run]
    assert not stale.exists()


def test_refuse_existing_then_overwrite(imported_tiny, lr_image: Path, tmp_path: Path) -> None:
    ar_path = tmp_path / "ow.h5"
    (s,) = _run(imported_tiny, [lr_image], ar_path, window=8)
    with pytest.raises(ArchiveError, match="already exists.*--overwrite"):
        _run(imported_tiny, [lr_image], ar_path)
    _run(imported_tiny, [lr_image], ar_path, overwrite=True, window=12)
    with open_archive(ar_path) as ar:
        assert ar.runs() == [s.run]
        assert ar.run(s.run).window == 12


def test_reader_errors(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="does not exist"):
        open_archive(tmp_path / "missing.h5")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ArchiveError, match="not an HDF5 file"):
        open_archive(text)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.attrs["format"] = "something"
    with pytest.raises(ArchiveError, match="not a glam archive.*'something'"):
        open_archive(other)
    newer = tmp_path / "newer.h5"
    with h5py.File(newer, "w") as f:
        f.attrs["format"] = "glam"
        f.attrs["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(ArchiveError, match=f"schema_version {SCHEMA_VERSION + 1}.*upgrade glam"):
        open_archive(newer)
    empty = tmp_path / "empty.h5"
    with h5py.File(empty, "w") as f:
        f.attrs["format"] = "glam"
        f.attrs["schema_version"] = 1
    with open_archive(empty) as ar, pytest.raises(ArchiveError, match="holds no runs"):
        ar.run("x")
    with pytest.raises(ArchiveError, match="not a glam archive"):
        RunWriter(other, "x")


def test_run_names(tmp_path: Path) -> None:
    assert validate_run_name("rcan_small_x2.legacy__astronaut_hr")
    for bad in ("", "a/b", ".tmp-x", "."):
        with pytest.raises(ArchiveError):
            validate_run_name(bad)
    with pytest.raises(ArchiveError, match="written twice"):
        check_run_names(tmp_path / "none.h5", ["a", "a"])
    with pytest.raises(ArchiveError, match="does not exist; create it first"):
        check_run_names(Path(os.devnull) / "none.h5", ["a"])


def _scratch(path: Path, value: float) -> Path:
    with h5py.File(path, "w") as f:
        f.create_group("run").create_dataset("x", data=np.full(3, value))
    return path


def _commit_in_another_process(archive: Path, scratch: Path, name: str) -> None:
    code = ("import sys; from glam.archive.hdf5 import commit_run; "
            "commit_run(sys.argv[1], sys.argv[2], sys.argv[3], overwrite=False)")
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code, str(archive), str(scratch), name], check=True,
                   env={**os.environ, "PYTHONPATH": str(root)}, timeout=120)


def _lose_the_creation_race(monkeypatch: pytest.MonkeyPatch, archive: Path,
                            scratch: Path) -> None:
    """Once this process has started building a new ``archive``, another process creates it
    first, with ``scratch``'s run as ``run_b``."""
    real_init = hdf5._init_root
    raced: list[bool] = []

    def init_then_race(f: h5py.File) -> None:
        real_init(f)
        if not raced:
            raced.append(True)
            _commit_in_another_process(archive, scratch, "run_b")

    monkeypatch.setattr(hdf5, "_init_root", init_then_race)


def test_two_processes_creating_one_archive_keep_both_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Process A finds no archive and builds one; before it publishes, process B creates the
    archive with its own run. A must append to B's archive, not replace it (the lost-run
    race the two-writer crash test found)."""
    ar = tmp_path / "shared.h5"
    a, b = _scratch(tmp_path / "a.h5", 1.0), _scratch(tmp_path / "b.h5", 2.0)
    _lose_the_creation_race(monkeypatch, ar, b)
    hdf5.commit_run(ar, a, "run_a", overwrite=False)
    with h5py.File(ar, "r") as f:
        assert sorted(f["runs"]) == ["run_a", "run_b"]
        assert all(bool(f["runs"][n].attrs["complete"]) for n in ("run_a", "run_b"))
        assert f["runs/run_a/x"][0] == 1.0 and f["runs/run_b/x"][0] == 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5", "b.h5", "shared.h5"]


def test_init_archive_keeps_an_archive_created_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ar = tmp_path / "zoo.h5"
    _lose_the_creation_race(monkeypatch, ar, _scratch(tmp_path / "b.h5", 2.0))
    hdf5.init_archive(ar)
    with h5py.File(ar, "r") as f:
        assert list(f["runs"]) == ["run_b"]
