"""The environment report and the summary of ``bench/gpu_check.sh``.

``python -m bench.gpu_summary env`` prints what the run had (Python, torch and its CUDA,
the GPU, onnxruntime's providers, numba, a C compiler for ``torch.compile``) as JSON.
``python -m bench.gpu_summary summarize --out DIR ...`` reads what the script left in
``DIR`` (``env.json``, ``pytest.xml``, ``bench.json``) and writes ``DIR/gpu_check.json``:
the tests run, passed, failed and skipped (with reasons), the benchmark rows, the issue's
performance targets each with its value and whether it was met (``null`` off CUDA: a CPU
run measures nothing about a GPU), and a Markdown table for docs/performance.md.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import platform
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

# (arch, LR size, row key, comparison, bound, what): the targets (RCAN at 256^2
# output is the 64x64 LR row of the paper-size x4 model)
TARGETS = (
    ("rcan", 64, "glam_seconds", "<", 1.0, "paper-size RCAN, 256x256 output: GL-AM < 1 s"),
    ("rcan", 64, "glam_over_fb", "<=", 2.0, "GL-AM <= 2.0 x one forward+backward"),
    ("rcan", 64, "lam_over_glam", ">=", 25.0, "LAM (batched) >= 25 x GL-AM"),
)


def environment() -> dict[str, Any]:
    """What this Python sees: versions, the GPU, onnxruntime's providers, a C compiler."""
    env: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform()}
    try:
        import torch

        env["torch"] = torch.__version__
        env["torch_cuda"] = torch.version.cuda
        env["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            env["gpu"] = props.name
            env["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    except ImportError as exc:
        env["torch"] = f"missing: {exc}"
    for name in ("onnx", "onnx2torch", "numba", "h5py", "click", "onnxruntime-gpu"):
        try:  # the installed version, without importing the package (fast)
            env[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            env[name] = "missing"
    try:
        import onnxruntime as ort

        env["onnxruntime"] = ort.__version__
        env["ort_providers"] = list(ort.get_available_providers())
    except Exception as exc:  # noqa: BLE001
        env["onnxruntime"] = f"missing: {type(exc).__name__}: {exc}"
        env["ort_providers"] = []
    from glam.engine.batched import compiler_available

    env["c_compiler"] = compiler_available()
    return env


def pytest_counts(path: Path) -> dict[str, Any]:
    """Tests, failures, errors, skips (with reasons) from a JUnit XML file pytest wrote."""
    if not path.exists():
        return {"ran": False}
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    out: dict[str, Any] = {"ran": True, "tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in suites:
        for key in ("tests", "failures", "errors", "skipped"):
            out[key] += int(suite.get(key, 0))
    out["passed"] = out["tests"] - out["failures"] - out["errors"] - out["skipped"]
    out["failed_tests"] = []
    out["skip_reasons"] = {}
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        for tag in ("failure", "error"):
            for node in case.findall(tag):
                out["failed_tests"].append({"test": name, "message": (node.get("message") or "")[:300]})
        for node in case.findall("skipped"):
            out["skip_reasons"][name] = (node.get("message") or "")[:200]
    return out


def _met(value: float, op: str, bound: float) -> bool:
    return value < bound if op == "<" else value <= bound if op == "<=" else value >= bound


def targets(rows: list[dict[str, Any]], on_gpu: bool) -> list[dict[str, Any]]:
    """Each target with the measured value; ``met`` is ``None`` off CUDA or when unmeasured."""
    out = []
    for arch, size, key, op, bound, what in TARGETS:
        row = next((r for r in rows if r.get("arch") == arch and r.get("size") == size), None)
        value = None if row is None else row.get(key)
        finite = isinstance(value, (int, float)) and math.isfinite(value)
        met = _met(float(value), op, bound) if (on_gpu and finite) else None
        out.append({"target": what, "key": key, "op": op, "bound": bound,
                    "value": value if finite else None, "met": met})  # fmt: skip
    return out


def markdown(rows: list[dict[str, Any]], device: str) -> str:
    """The benchmark rows as a Markdown table (what docs/performance.md shows)."""
    lines = [
        f"| model | LR | taps | fwd+bwd s | GL-AM s | GL-AM/fb | LAM s (batch) | LAM/GL-AM | "
        f"peak MiB fb | peak MiB GL-AM |  <!-- {device} -->",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "fb_seconds" not in r:
            lines.append(f"| {r.get('arch')} | {r.get('size')} | failed: {r.get('error', '?')} |||||||")
            continue
        lines.append(
            f"| {r['arch']} | {r['size']} | {r['taps']} | {r['fb_seconds']:.3f} | "
            f"{r['glam_seconds']:.3f} | {r['glam_over_fb']:.2f} | {r['lam_seconds']:.2f} "
            f"({r.get('lam_batch', 1)}) | {r['lam_over_glam']:.1f} | {r['peak_mib_fb']:.0f} | "
            f"{r['peak_mib_glam']:.0f} |"
        )
    return "\n".join(lines)


def summarize(out: Path, device: str, rcs: dict[str, int], seconds: dict[str, float]) -> dict[str, Any]:
    """Everything ``gpu_check.sh`` produced in ``out``, as one JSON-ready dict."""
    env = json.loads((out / "env.json").read_text()) if (out / "env.json").exists() else {}
    bench_path = out / "bench.json"
    rows: list[dict[str, Any]] = []
    if bench_path.exists():
        try:
            rows = json.loads(bench_path.read_text()).get("rows", [])
        except json.JSONDecodeError:
            rows = []
    on_gpu = device.startswith("cuda") and bool(env.get("cuda_available"))
    tests = pytest_counts(out / "pytest.xml")
    doc = {
        "schema": 1,
        "device": device,
        "gpu_run": on_gpu,
        "env": env,
        "exit_codes": rcs,
        "seconds": seconds,
        "pytest": tests,
        "bench_rows": rows,
        "targets": targets(rows, on_gpu),
        "markdown": markdown(rows, env.get("gpu", device)),
    }
    doc["ok"] = bool(
        tests.get("ran") and tests.get("failures", 1) == 0 and tests.get("errors", 1) == 0
        and rows and not any("error" in r for r in rows)
        and all(v == 0 for v in rcs.values())
    )  # fmt: skip
    return doc


def main(argv: list[str] | None = None) -> int:
    """``env`` prints the environment; ``summarize`` writes ``gpu_check.json``."""
    p = argparse.ArgumentParser(prog="python -m bench.gpu_summary")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("env")
    s = sub.add_parser("summarize")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--device", required=True)
    s.add_argument("--rc", action="append", default=[], metavar="STEP=CODE")
    s.add_argument("--seconds", action="append", default=[], metavar="STEP=S")
    args = p.parse_args(argv)
    if args.cmd == "env":
        print(json.dumps(environment(), indent=2))
        return 0
    rcs = {k: int(v) for k, v in (item.split("=", 1) for item in args.rc)}
    secs = {k: float(v) for k, v in (item.split("=", 1) for item in args.seconds)}
    doc = summarize(args.out, args.device, rcs, secs)
    (args.out / "gpu_check.json").write_text(json.dumps(doc, indent=2))
    print(doc["markdown"])
    for t in doc["targets"]:
        state = {True: "met", False: "NOT met", None: "not measured on a GPU"}[t["met"]]
        print(f"target: {t['target']}: value {t['value']}: {state}")
    print(f"gpu_check: {'ok' if doc['ok'] else 'PROBLEMS'} (see gpu_check.json)")
    return 0 if doc["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
