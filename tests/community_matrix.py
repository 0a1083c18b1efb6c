"""The community-architecture matrix: every architecture of spandrel's registries, built tiny
(``fixtures/community_archs.py``), saved as a checkpoint, re-detected by spandrel and driven
through glam: import -> ``analyze --verify`` -> LAM (-> sanity in the full matrix).

``run_arch`` returns one row of the table the README and the closing note quote
(architecture, route, parity, taps vs convs that run, batch-folded taps, verify, seconds);
``tests/test_community_archs.py`` asserts on it. ``python tests/community_matrix.py`` runs
every architecture (or ``--archs ...``) and prints the table as Markdown.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "fixtures"))
import community_archs as ca  # noqa: E402  (fixtures/ is a folder, glam.fixtures when installed)

#: analysed LR size (odd on both axes: no multiple of any window) before the architecture's
#: own requirements (minimum side, square) are applied
ANALYSIS_SIZE = (23, 19)
LAM_FOLD = 4


@dataclass
class Row:
    """One architecture through glam."""

    arch: str
    purpose: str = ""
    file: str = ""
    route: str = ""
    specialised: str = ""
    parity: float | None = None
    run_parity: float | None = None
    taps: int = 0
    convs_run: int = 0
    folded: int = 0
    folded_eager: int = 0
    participating: int = 0
    verify: str = ""
    lam: str = ""
    sanity: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    error: str = ""

    def markdown(self) -> str:
        s = self.seconds
        return (
            f"| {self.arch} | {self.purpose} | {self.route or '-'}"
            f"{' (' + self.specialised + '-specialised)' if self.specialised else ''} | "
            f"{_num(self.parity)} / {_num(self.run_parity)} | {self.taps} / {self.convs_run} | "
            f"{self.folded} | {self.verify or self.error or '-'} | {self.lam or '-'} | "
            f"{s.get('import', 0):.1f} + {s.get('analyze', 0):.1f} + {s.get('lam', 0):.1f} |"
        )


HEADER = (
    "| architecture | purpose | route | parity import / run | taps / convs that run | "
    "batch-folded taps | analyze --verify | LAM | seconds (import + analyze + LAM) |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.1g}"


def analysis_size(arch_id: str) -> tuple[int, int]:
    """The LR size the matrix analyses ``arch_id`` at: :data:`ANALYSIS_SIZE`, raised to the
    architecture's minimum side and made square where it must be (glam pads multiples)."""
    minimum, _multiple, square = ca.ARCHS[arch_id].size_req
    h, w = (max(d, minimum) for d in ANALYSIS_SIZE)
    if square:
        h = w = max(h, w)
    return h, w


def convs_that_run(module: nn.Module, x: torch.Tensor, arch_id: str) -> tuple[list[str], int]:
    """Qualnames of the ``nn.Conv*`` modules that run on ``x`` (in call order, one per call)
    and how many of those calls saw a batch other than 1 (a batch-folded input)."""
    ran: list[str] = []
    folded = 0
    names = {m: n for n, m in module.named_modules()}

    def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], _out: object) -> None:
        nonlocal folded
        ran.append(names[mod])
        folded += int(inp[0].shape[0] != 1)

    hooks = [m.register_forward_hook(hook) for m in module.modules()
             if isinstance(m, nn.modules.conv._ConvNd)]
    try:
        ca.forward(arch_id, module, x)
    finally:
        for h in hooks:
            h.remove()
    return ran, folded


def run_arch(arch_id: str, folder: Path, *, fmt: str = "safetensors", sanity: bool = False) -> Row:
    """Build, save, re-detect and analyse one architecture; never raises (the error is in
    the row, ``error`` starting with the exception's type)."""
    import glam
    from glam.importers.probe import probe_input

    spec = ca.ARCHS[arch_id]
    row = Row(arch=arch_id, purpose=spec.purpose.split(" ")[0] if spec.purpose else "")
    try:
        t0 = time.perf_counter()
        ca.save(arch_id, folder)  # .pth + .safetensors, re-detected by spandrel (raises if not)
        path = folder / f"{arch_id}.{fmt}"
        row.file = path.name
        model = glam.load(path, input_range=1)
        row.seconds["import"] = time.perf_counter() - t0
        row.route = str(model.metadata.get("route", ""))
        row.specialised = str(model.metadata.get("specialised", "") or "")
        row.parity = model.parity.max_abs_error
        row.taps = model.n_taps
        row.folded = sum(1 for t in model.taps if t.reason.startswith("batch-folded"))
        h, w = analysis_size(arch_id)
        if row.specialised == "values":
            h, w = ca.BASE_SIZE  # the probe input: the branch the trace holds
        x = probe_input(model.conventions.in_channels, h, w)
        eager = ca.build(arch_id)
        ran, row.folded_eager = convs_that_run(eager, _eager_input(arch_id, x), arch_id)
        row.convs_run = len(ran)
        t1 = time.perf_counter()
        res = glam.analyze(model, x, window=8, verify=True, keep_layers=False)
        row.seconds["analyze"] = time.perf_counter() - t1
        row.run_parity = res.run_parity.max_abs_error if res.run_parity else None
        row.participating = sum(1 for t in res.taps if t.participating)
        ep = res.engine_parity
        row.verify = f"passed ({ep.max_error:.1g})" if ep and ep.passed else f"FAILED ({ep})"
        t2 = time.perf_counter()
        lam = glam.analyze(model, x, window=8, lam=True, lam_fold=LAM_FOLD, keep_layers=False)
        row.seconds["lam"] = time.perf_counter() - t2 - lam.timings.get("total", 0.0)
        row.lam = f"DI {lam.metrics['di_lam']:.1f}"
        if sanity:
            from glam import sanity as run_sanity

            run_sanity(model, x, window=8, methods=("local", "global"), blocks=2,
                       variants=("cascading",), n_random=1, lam_fold=LAM_FOLD)
            row.sanity = "ok"
    except Exception as exc:  # noqa: BLE001 - the matrix records every failure as a row
        row.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
    return row


def _eager_input(arch_id: str, x: torch.Tensor) -> torch.Tensor:
    """``x`` as the raw spandrel module takes it (DRUNet: + its noise-level map), padded as
    spandrel pads it (so that the convs that run are those of the analysed call)."""
    spec = ca.ARCHS[arch_id]
    _minimum, multiple, square = spec.size_req
    h, w = int(x.shape[-2]), int(x.shape[-1])
    ph, pw = (-h) % multiple, (-w) % multiple
    if square:
        side = max(h + ph, w + pw)
        ph, pw = side - h, side - w
    if ph or pw:
        x = torch.nn.functional.pad(x, (0, pw, 0, ph), mode="reflect")
    if spec.in_channels == 4:
        x = torch.cat([x, torch.full_like(x[:, :1], 15 / 255)], dim=1)
    return x


def main(argv: list[str] | None = None) -> int:
    """Run the matrix and print the Markdown table (and, with ``--json``, the rows)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archs", nargs="+", default=ca.supported_ids())
    ap.add_argument("--format", default="safetensors", choices=("safetensors", "pth"))
    ap.add_argument("--sanity", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    print(HEADER, flush=True)
    for arch in args.archs:
        with tempfile.TemporaryDirectory() as tmp:
            row = run_arch(arch, Path(tmp), fmt=args.format, sanity=args.sanity)
        rows.append(row)
        print(row.markdown(), flush=True)
        if args.json:
            args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    bad = [r.arch for r in rows if r.error or not r.verify.startswith("passed")]
    print(f"\n{len(rows) - len(bad)}/{len(rows)} passed; failed: {', '.join(bad) or 'none'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
