"""docs/sanity.md's table: ``glam sanity`` on the real models of ``../shared/models``.

Run ``python -m bench.sanity_table [OUT_DIR] [MODEL_STEM ...]`` from the repository root
(needs ``../shared``; the stems choose models, e.g. ``srgan_x4``). Settings (small enough for 2 shared CPU cores): Urban100 ``img_001`` LR
(x4), centre-cropped to 32x32 LR; default ROI (16x16 at the output centre); 6 tap blocks
for both randomization variants; LAM fold 8; deletion/insertion 0-50 % in 1 % steps, blur
baseline, 5 random orderings; seed 0. Writes ``sanity_<model>.h5``, ``sanity_<model>.png``,
``sanity_<model>.json`` and prints the markdown table.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import glam.importers
import torch
from glam.sanity_checks.runner import SanityOptions, run_sanity

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
MODELS = {"CARN-M x4": "carn_m_x4.onnx", "IMDN x4": "imdn_x4.onnx", "SRGAN x4": "srgan_x4.onnx"}
IMAGE = SHARED / "data" / "Urban100" / "image_SRF_4" / "img_001_SRF_4_LR.png"
OPTIONS = SanityOptions(crop=32, blocks=6, lam_fold=8, seed=0, device="cpu")
LABELS = {"local": "GL-AM local", "global": "GL-AM global", "lam": "LAM",
          "saliency": "gradient saliency"}


def _depth(summary: dict, variant: str, method: str, metric: str, n_taps: int) -> str:
    r = summary["randomization"][variant]["methods"][method][metric]
    return f"{r['taps_randomized']}/{n_taps}" if r["taps_randomized"] is not None else "never"


def main(out: Path, only: list[str] | None = None) -> None:
    torch.set_num_threads(2)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for label, file in MODELS.items():
        if only and file.split(".")[0] not in only:
            continue
        t0 = time.perf_counter()
        model = glam.importers.load(SHARED / "models" / file)
        stem = file.split(".")[0]
        archive = out / f"sanity_{stem}.h5"
        archive.unlink(missing_ok=True)
        res = run_sanity(model, IMAGE, archive, stem, OPTIONS, figure=out / f"sanity_{stem}.png",
                         progress=lambda m, s=stem: print(f"[{s}] {m}", flush=True))
        s = res.summary()
        s["wall_s"] = time.perf_counter() - t0
        (out / f"sanity_{stem}.json").write_text(json.dumps(s, indent=1, sort_keys=True))
        n = s["n_taps"]
        f = s["faithfulness"]
        for m in res.record.methods:
            ind = s["randomization"]["independent"]["methods"][m]["blocks_below"]
            fa = (f"{f[m]['deletion_auc']:.3f} / {f[m]['insertion_auc']:.3f}" if m in f
                  else "—")
            rows.append(f"| {label} | {LABELS[m]} | {_depth(s, 'cascading', m, 'spearman', n)} | "
                        f"{_depth(s, 'cascading', m, 'ssim', n)} | "
                        f"{_depth(s, 'cascading', m, 'topk', n)} | {ind}/6 | {fa} | "
                        f"{f['random']['deletion_auc']:.3f} / {f['random']['insertion_auc']:.3f} |")
        print(f"[{stem}] {s['wall_s']:.0f} s", flush=True)
    print("| model | map | cascading: Spearman < 0.5 after | SSIM < 0.5 after | top-5% < 0.5 "
          "after | independent blocks < 0.5 (Spearman) | deletion / insertion AUC | random "
          "deletion / insertion AUC |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("sanity-table"), sys.argv[2:] or None)
