"""Phase log, progress without a TTY, --quiet, --threads and oversubscription (issue 14)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from glam.cli import cli
from glam.errors import UserInputError
from glam.machine import CpuBudget
from glam.progress import PhaseLog, progress_bar
from glam.runs import DemoResult, RunSummary, demo_report
from glam.threads import affinity_cpus, apply_threads, choose_threads, oversubscription


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture()
def keep_threads() -> Any:
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------ progress bars


def test_bar_in_a_log_is_whole_rate_limited_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    bar = progress_bar(200, "LAM path", "step", stream=out)
    for _ in range(200):
        bar.update(1)
    bar.close()
    text = out.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and text.endswith("\n")
    # the first line and the last, nothing in between within the 10 s interval
    assert len(lines) <= 3, lines
    assert lines[0].startswith("glam: LAM path: 0/200 step")
    assert lines[-1].startswith("glam: LAM path: 200/200 step")
    assert not any(ch in text for ch in "\u2588\u258f|#")  # no bar glyphs
    # a short interval gives periodic lines, still one per redraw and no duplicates
    monkeypatch.setenv("GLAM_PROGRESS_INTERVAL", "1e-6")
    out = io.StringIO()
    bar = progress_bar(5, "images", "image", stream=out)
    for _ in range(5):
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert [ln.split(": ")[2].split()[0] for ln in lines] == ["0/5", "1/5", "2/5", "3/5", "4/5", "5/5"]


def test_bar_on_a_terminal_redraws_in_place_and_quiet_writes_nothing() -> None:
    tty = _Tty()
    bar = progress_bar(10, "LAM path", "step", stream=tty)
    bar.update(10)
    bar.close()
    assert "\r" in tty.getvalue()
    quiet = io.StringIO()
    log = PhaseLog(quiet, quiet=True)
    b = log.bar(10, "x")
    b.update(10)
    b.close()
    with log.phase("GL-AM"):
        pass
    log.summary()
    assert quiet.getvalue() == "" and "GL-AM" in log.times


def test_phase_log_lines_and_summary() -> None:
    out = io.StringIO()
    log = PhaseLog(out)
    log.done("import", 1.234, "m.onnx")
    with log.phase("GL-AM", "3 layers"):
        pass
    log.prefix = "[1/2 a.png] "
    log.done("LAM", 2.0)
    text = log.summary()
    lines = out.getvalue().splitlines()
    assert lines[0] == "glam: import 1.23 s (m.onnx)"
    assert lines[1].startswith("glam: GL-AM 0.00 s (3 layers)")
    assert lines[2] == "glam: [1/2 a.png] LAM 2.00 s"
    assert lines[3] == "glam: " + text and text.startswith("total ")
    assert "import 1.23 s, GL-AM 0.00 s, LAM 2.00 s" in text


# ------------------------------------------------------------------------------ threads


def test_threads_default_to_the_free_cpus(keep_threads: None,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 23: the default is the CPUs that are free (affinity, cgroup quota, less what
    other processes keep busy), never more; an explicit --threads is taken as given, and
    GLAM_THREADS sets the default."""
    monkeypatch.delenv("GLAM_THREADS", raising=False)
    assert affinity_cpus() == len(os.sched_getaffinity(0))
    assert choose_threads(None, CpuBudget(affinity=2, busy=1.0)).threads == 1  # a busy neighbour
    assert choose_threads(None, CpuBudget(affinity=2, busy=0.1)).threads == 2  # daemons only
    assert choose_threads(None, CpuBudget(affinity=2, busy=2.0)).threads == 1  # never 0
    assert choose_threads(None, CpuBudget(affinity=8, quota=1.5)).threads == 1  # docker --cpus
    assert choose_threads(None, CpuBudget(affinity=8, quota=4.0, busy=1.0)).threads == 3
    assert choose_threads(None, CpuBudget(affinity=8, busy=2.6)).threads == 5
    assert choose_threads(3, CpuBudget(affinity=2, busy=2.0)).threads == 3
    n = apply_threads(None)
    assert 1 <= n <= affinity_cpus() and torch.get_num_threads() == n
    assert apply_threads(1) == 1 == torch.get_num_threads()
    text = choose_threads(None, CpuBudget(affinity=2, busy=1.0, load=1.9)).describe()
    assert text == ("threads 1 (default: the CPUs free now; 2 CPU(s) available, 1.0 busy with "
                    "other processes, load average 1.9)")
    monkeypatch.setenv("GLAM_THREADS", "3")
    got = choose_threads(None, CpuBudget(affinity=2, busy=2.0))
    assert got.threads == 3 and got.describe().startswith("threads 3 (GLAM_THREADS;")
    assert choose_threads(1, CpuBudget(affinity=2)).threads == 1  # --threads wins
    monkeypatch.setenv("GLAM_THREADS", "0")
    with pytest.raises(UserInputError, match="GLAM_THREADS='0'"):
        choose_threads(None)


def _spin() -> None:  # a busy neighbour: one process spinning on one core
    while True:
        pass


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs Linux CPU affinity and two CPUs")
def test_default_threads_leave_a_busy_neighbours_core_alone() -> None:
    """A process restricted to two CPUs, one of them kept busy by a neighbour spinning on
    it: the default is one thread (it was two, the affinity set, whatever the load)."""
    import multiprocessing as mp
    import subprocess
    import sys

    a, b = sorted(os.sched_getaffinity(0))[:2]
    ctx = mp.get_context("fork")
    spinner = ctx.Process(target=_spin, daemon=True)
    spinner.start()
    try:
        os.sched_setaffinity(spinner.pid, {a})
        code = ("from glam.threads import apply_threads\nimport torch\n"
                "n = apply_threads(None)\nprint(n, torch.get_num_threads())")
        env = {k: v for k, v in os.environ.items() if k != "GLAM_THREADS"}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=300, env=env,
                             preexec_fn=lambda: os.sched_setaffinity(0, {a, b}))
    finally:
        spinner.kill()
        spinner.join()
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1"], out.stdout


def test_numba_start_does_not_undo_the_thread_count() -> None:
    """numba's OpenMP layer, started on the first fused kernel, reset the shared OpenMP
    runtime to NUMBA_NUM_THREADS and so torch's count too (``--threads 1`` ran with 2)."""
    import subprocess
    import sys

    code = (
        "import torch; torch.set_num_threads(1)\n"
        "from glam.engine import kernels\n"
        "k = kernels._applies(torch.rand(1, 4, 8, 8))\n"
        "import numba\n"
        "print(torch.get_num_threads(), numba.get_num_threads() if k is not None else 1)\n"
    )
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root), "NUMBA_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=root, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1"]


def test_oversubscription_is_detected() -> None:
    busy = oversubscription(2, load=3.5, cpus=2)
    assert busy is not None and "load average 3.5 on 2 CPU(s)" in busy and "--threads 1" in busy
    assert oversubscription(1, load=3.5, cpus=2) is None  # one thread cannot oversubscribe
    assert oversubscription(2, load=0.4, cpus=2) is None
    more = oversubscription(8, load=0.0, cpus=2)
    assert more is not None and "--threads 8 is more than the 2 CPU(s)" in more


def test_onnxruntime_sessions_take_torchs_thread_count(
    monkeypatch: pytest.MonkeyPatch, keep_threads: None, tiny_model: Path
) -> None:
    import onnxruntime as ort
    from glam.importers.onnx import backend as onnx_backend

    seen: list[int] = []
    real = ort.InferenceSession

    def spy(source: Any, sess_options: Any = None, **kw: Any) -> Any:
        seen.append(int(sess_options.intra_op_num_threads))
        return real(source, sess_options=sess_options, **kw)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    torch.set_num_threads(1)
    onnx_backend._session(str(tiny_model))
    assert seen == [1]


# ---------------------------------------------------------------------------------- CLI


def test_cli_quiet_threads_and_figure_format(
    tiny_model: Path, lr_image: Path, tmp_path: Path, keep_threads: None
) -> None:
    r = CliRunner()
    ar = tmp_path / "a.h5"
    res = r.invoke(cli, ["analyze", str(tiny_model), str(lr_image), "-o", str(ar), "--threads",
                         "1", "--figures", str(tmp_path / "f"), "--figure-format", "svg",
                         "--figure-scale", "gamma", "--run", "r"])
    assert res.exit_code == 0, res.stderr
    assert torch.get_num_threads() == 1
    phases = [ln.split()[1] for ln in res.stderr.splitlines() if ln.startswith("glam: ")
              and not ln.startswith("glam: note")]
    assert phases == ["threads", "import", "parity", "GL-AM", "run", "figures", "total"]  # run parity
    assert "glam: threads 1 (--threads; " in res.stderr and "1 thread(s)" in res.stderr
    figs = tmp_path / "f" / "r"
    assert (figs / "local.svg").is_file() and (figs / "attributed.svg").is_file()
    assert not list(figs.glob("*.png"))
    assert sorted(p.name for p in (figs / "overlays").iterdir()) == ["global_sum.png",
                                                                     "local_sum.png"]
    res = r.invoke(cli, ["analyze", str(tiny_model), str(lr_image), "-o", str(ar), "--quiet",
                         "--run", "q"])
    assert res.exit_code == 0 and res.stderr == "", res.stderr
    assert "run 'q'" in res.stdout
    for bad in (["--threads", "0"], ["--figure-format", "jpeg"], ["--figure-gamma", "0"]):
        res = r.invoke(cli, ["analyze", str(tiny_model), str(lr_image), "-o", str(ar), *bad])
        assert res.exit_code == 2, (bad, res.stderr)


def test_baseline_and_check_show_progress_over_image_sets(
    tiny_model: Path, images_dir: Path, tmp_path: Path
) -> None:
    r = CliRunner()
    base = tmp_path / "b.h5"
    res = r.invoke(cli, ["baseline", str(tiny_model), str(images_dir), "-o", str(base),
                         "--window", "8"])
    assert res.exit_code == 0, res.stderr
    assert "glam: images: 3/3 image" in res.stderr and "\r" not in res.stderr
    assert "glam: [2/3 b.png] GL-AM " in res.stderr
    res = r.invoke(cli, ["check", str(tiny_model), "--baseline", str(base)])
    assert res.exit_code == 0, res.stderr
    assert "glam: baseline runs: 3/3 run" in res.stderr and "\r" not in res.stderr
    assert "glam: import " in res.stderr and "glam: parity " in res.stderr
    assert res.stderr.splitlines()[-1].startswith("PASSED | ")


# --------------------------------------------------------------------------------- demo


@pytest.mark.parametrize(("s_glam", "s_lam", "words"), [
    (0.9, 14.0, "GL-AM is 15.6\u00d7 faster than LAM"),
    (3.0, 1.2, "LAM is 2.5\u00d7 faster than GL-AM"),
])
def test_demo_report_says_which_is_faster(
    tmp_path: Path, s_glam: float, s_lam: float, words: str
) -> None:
    m = {"di_local": 1.0, "di_global": 2.0, "di_lam": 0.5, "di_lam_output": 9.0,
         "seconds_glam": s_glam, "seconds_lam": s_lam}
    summary = RunSummary(run="r", archive=str(tmp_path / "none.h5"), model="m", image="i",
                         metrics=m)
    demo = DemoResult(out_dir=tmp_path, archive=tmp_path / "none.h5", run="r", model="m.onnx",
                      image="i.png", figures=[], summary=summary, warmup_seconds=3.2)
    text = "\n".join(demo_report(demo))
    assert words in text and "fold 50" in text and "3.2 s untimed warm-up" in text
    assert "0.4\u00d7" not in text
