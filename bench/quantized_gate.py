"""How far int8 maps move from float maps: the measurements behind ``glam check``'s
quantized defaults (``docs/ci.md``, ``docs/quantized.md``).

Run ``python -m bench.quantized_gate OUT_DIR [MODEL ...]`` from the repository root (needs
``../shared``). For every float model (the shared models and the fixtures; a MODEL argument
picks them by file stem) it:

1. writes a float baseline (``make_baseline``, ``--hr``) on centre crops of Set5 HR images
   (96x96 for x2/x3, 128x128 for x4);
2. quantizes the model with onnxruntime's quantizer (``tests/quantized_models.py``: QDQ and
   QOperator static per-channel, QOperator per-tensor, QDQ int8 symmetric, dynamic),
   calibrated on four Set14 LR crops;
3. makes broken deployments: the QOperator and the QDQ model with the second quantized
   convolution's weight scale doubled (the head conv, on the main path; ``*_broken``), and
   the QOperator model with the middle convolution's doubled (``qop_pc_broken_mid``: in
   most nets a conv inside a residual branch);
4. runs ``check_model`` of every variant against the float baseline, and records the
   import parity (in steps), every check's value, every metric's worst value and the
   verdicts under the quantized defaults and under the float defaults.

Writes ``OUT_DIR/quantized_gate.json`` and prints a table. Settings are small enough for two
shared CPU cores (about 1-2 minutes per model).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT / "tests"))

from quantized_models import VARIANTS, break_scale, quantize  # noqa: E402

MODELS = [
    *(SHARED / "models" / f"{stem}.onnx" for stem in (
        "carn_m_x2", "carn_m_x4", "fsrcnn_x2", "fsrcnn_x3", "espcn_tf_x2", "espcn_tf_x3",
        "fsrcnn_tf_x2", "lapsrn_tf_x2", "imdn_rtc_x2", "imdn_x4", "srgan_x4")),
    *(ROOT / "fixtures" / "models" / f"{stem}.onnx" for stem in (
        "carn_small_x2.legacy", "rcan_small_x2.legacy", "rrdbnet_small_x2.legacy",
        "rnan_small_x2.legacy", "san_small_x2.legacy", "spandrel_compact_x2",
        "spandrel_esrgan_x2", "spandrel_span_x2")),
]
N_IMAGES = 2
CALIBRATION = sorted((SHARED / "data" / "Set14" / "image_SRF_4").glob("*_LR.png"))[:4]


def _crops(scale: int, out: Path) -> list[Path]:
    size = 128 if scale == 4 else 96
    files = sorted((SHARED / "data" / "Set5" / f"image_SRF_{scale}").glob("*_HR.png"))
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in files[:N_IMAGES]:
        im = Image.open(f).convert("RGB")
        left, top = (im.width - size) // 2, (im.height - size) // 2
        p = out / f.name.replace("_HR", "")
        im.crop((left, top, left + size, top + size)).save(p)
        paths.append(p)
    return paths


def _calibration() -> list[np.ndarray]:
    return [np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255.0
            for f in CALIBRATION]


def _worst(report) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Per metric, the worst value over runs and layers (min for >=, max for <=)."""
    out: dict[str, float] = {}
    for c in report.checks:
        if c.value is None or c.status == "skipped":
            continue
        v = float(c.value)
        if c.name not in out:
            out[c.name] = v
        else:
            out[c.name] = min(out[c.name], v) if c.comparison == ">=" else max(out[c.name], v)
    return out


def _failed(report, tolerances: dict[str, float]) -> list[str]:  # type: ignore[no-untyped-def]
    """The metrics that fail ``tolerances`` (e.g. the float defaults) on a report's values."""
    bad = set()
    for c in report.checks:
        tol = tolerances.get(c.name)
        if c.value is None or c.status == "skipped" or tol is None:
            continue
        if (c.value < tol) if c.comparison == ">=" else (c.value > tol):
            bad.add(c.name)
    return sorted(bad)


def measure(model: Path, out: Path) -> dict:
    """Every variant of one model against its float baseline."""
    import glam.importers
    from glam.gate.check import check_model, make_baseline
    from glam.gate.tolerances import build_tolerances, default_tolerances
    from glam.runs import AnalyzeOptions

    stem = model.name[:-5]
    work = out / stem
    work.mkdir(parents=True, exist_ok=True)
    base = glam.importers.load(model)
    images = _crops(base.conventions.scale, work / "images")
    archive = work / "float.h5"
    if archive.exists():
        archive.unlink()
    make_baseline(base, images, archive, AnalyzeOptions(hr=True))
    calib = _calibration()
    size = (48, 48)
    files: dict[str, Path] = {}
    for variant in VARIANTS:
        files[variant] = quantize(model, work / f"{stem}.{variant}.onnx", variant, calib, size)
    broken = {}
    for src, which in (("qop_pc", 1), ("qdq_pc", 1), ("qop_pc", "middle")):
        tag = f"{src}_broken" + ("_mid" if which == "middle" else "")
        dst = work / f"{stem}.{tag}.onnx"
        broken[tag] = break_scale(files[src], dst, 2.0, which)
        files[tag] = dst
    rows = {}
    for variant, path in files.items():
        t = time.perf_counter()
        row: dict = {"broken_layer": broken.get(variant)}
        try:
            rep_q = check_model(path, archive, build_tolerances(), defaults="auto")
        except Exception as exc:  # noqa: BLE001 - a measurement: record and go on
            row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            rows[variant] = row
            continue
        m = glam.importers.load(path)
        row.update({
            "parity": m.parity.to_dict(),
            "quantization": {k: v for k, v in (m.metadata.get("quantization") or {}).items()
                             if k in ("formats", "ops", "activation_types", "weight_types",
                                      "per_channel")},
            "worst": _worst(rep_q),
            "verdict_quantized_defaults": rep_q.status,
            "failed_quantized_defaults": sorted({c.name for c in rep_q.checks
                                                 if c.status == "failed"}),
            "failed_float_defaults": _failed(rep_q, default_tolerances()),
            "checks": [[c.run, c.name, c.layer, c.value] for c in rep_q.checks
                       if c.value is not None and c.status != "skipped"],
            "seconds": round(time.perf_counter() - t, 1),
        })
        rows[variant] = row
    return rows


def main(out: Path, only: list[str]) -> None:
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    result_path = out / "quantized_gate.json"
    results = json.loads(result_path.read_text()) if result_path.exists() else {}
    for model in MODELS:
        stem = model.name[:-5]
        if only and stem not in only:
            continue
        if not model.exists():
            print(f"skip {stem}: {model} is absent")
            continue
        t = time.perf_counter()
        results[stem] = measure(model, out)
        result_path.write_text(json.dumps(results, indent=1, sort_keys=True))
        print(f"{stem}: {time.perf_counter() - t:.0f} s", flush=True)
    for stem, rows in results.items():
        for variant, row in rows.items():
            if "error" in row:
                print(f"{stem:26s} {variant:14s} ERROR {row['error']}")
                continue
            st = row["parity"].get("steps") or {}
            w = row["worst"]
            print(f"{stem:26s} {variant:14s} within1 {st.get('within_one', 1) * 100:7.3f}% "
                  f"max {st.get('max_steps', 0):4.1f} | out {w.get('output_max_abs', 0):.3g} "
                  f"psnr {w.get('output_psnr', 0):.1f} | Lsum {w.get('local_sum_pearson', 0):.3f}"
                  f" Gsum {w.get('global_sum_pearson', 0):.3f} "
                  f"Gst {w.get('global_stable_sum_pearson', 0):.3f} | "
                  f"q:{row['verdict_quantized_defaults']} "
                  f"f:{'FAILED' if row['failed_float_defaults'] else 'PASSED'}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "bench_out/quantized_gate"), sys.argv[2:])
