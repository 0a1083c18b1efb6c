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
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

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
    dead_convs: int = 0
    untapped: list[str] = field(default_factory=list)  # convs that run and count, no tap
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
    architecture's minimum side and made square where it must be (glam pads multiples), or
    the one size a fixed-size module takes."""
    spec = ca.ARCHS[arch_id]
    if spec.exact_size is not None:  # the raw module takes one size only (IPT: its patch)
        return spec.exact_size, spec.exact_size
    minimum, _multiple, square = spec.size_req
    h, w = (max(d, minimum) for d in ANALYSIS_SIZE)
    if square:
        h = w = max(h, w)
    return h, w


class _Dataflow(TorchDispatchMode):
    """Records which tensors each op read and wrote (by identity; every tensor is kept alive
    for the run, so identities are not reused)."""

    def __init__(self) -> None:
        super().__init__()
        self.made_from: dict[int, list[int]] = {}
        self.keep: list[torch.Tensor] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        ins = [id(a) for a in tree_flatten((args, kwargs or {}))[0] if isinstance(a, torch.Tensor)]
        written = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
        schema = func._schema
        if schema.arguments and schema.arguments[0].alias_info is not None \
                and schema.arguments[0].alias_info.is_write and isinstance(args[0], torch.Tensor):
            # an in-place write (x[:, :k] = conv(...)): the tensor and the base it views now
            # hold what the op read
            written += [args[0]] + ([args[0]._base] if args[0]._base is not None else [])
        for o in written:
            self.made_from.setdefault(id(o), []).extend(i for i in ins if i != id(o))
            self.keep.append(o)
        self.keep += [a for a in tree_flatten((args, kwargs or {}))[0] if isinstance(a, torch.Tensor)]
        return out

    def reaches(self, outputs: list[torch.Tensor]) -> set[int]:
        """Identities of every tensor the outputs were computed from (and the outputs)."""
        seen: set[int] = set()
        stack = [id(o) for o in outputs]
        while stack:
            t = stack.pop()
            if t not in seen:
                seen.add(t)
                stack.extend(self.made_from.get(t, ()))
        return seen


def convs_that_run(module: nn.Module, x: torch.Tensor, arch_id: str,
                   call: Any = None) -> tuple[list[str], int, int]:
    """Qualnames of the ``nn.Conv*`` modules that run on ``x`` and whose result the output
    is computed from (in call order, one per call), how many of those calls saw a batch
    other than 1 (a batch-folded input), and how many calls ran for nothing (dead code:
    HVI-CIDNet overwrites one block's result; exporters drop such convs, there is nothing
    to tap)."""
    calls: list[tuple[str, torch.Tensor, bool]] = []
    names = {m: n for n, m in module.named_modules()}

    def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        calls.append((names[mod], out, inp[0].shape[0] != 1))

    hooks = [m.register_forward_hook(hook) for m in module.modules()
             if isinstance(m, nn.modules.conv._ConvNd)]
    flow = _Dataflow()
    try:
        with torch.no_grad(), flow:
            if ca.ARCHS[arch_id].stochastic:
                torch.manual_seed(0)
            outputs = ca._tensors(module(x.clone()) if call is None else call(module, x.clone()))
    finally:
        for h in hooks:
            h.remove()
    used = flow.reaches(outputs)
    live = [(n, f) for n, o, f in calls if id(o) in used]
    return [n for n, _ in live], sum(f for _, f in live), len(calls) - len(live)


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
        if model.conventions.fixed_size is not None:  # the last-resort fixed-size graph
            h, w = model.conventions.fixed_size
        m = int(model.metadata.get("input_multiple") or 1)
        if m > 1:  # a graph valid at multiples only: the size glam's refusal suggests
            h, w = (-(-d // m) * m for d in (h, w))
        x = probe_input(model.conventions.in_channels, h, w)
        eager = ca.build(arch_id)
        if spec.exact_size is None:
            ran, row.folded_eager, row.dead_convs = convs_that_run(
                eager, _eager_input(arch_id, x), arch_id)
        else:  # the raw module takes one size: count through spandrel's own call (IPT's patches)
            import spandrel
            from glam.importers.checkpoint.wrappers import custom_call

            call = custom_call(spandrel.ModelLoader().load_from_file(path))
            ran, row.folded_eager, row.dead_convs = convs_that_run(eager, x, arch_id, call)
        row.convs_run = len(ran)
        tapped = Counter(t.name.split("#")[0] for t in model.taps)
        row.untapped = sorted((Counter(ran) - tapped).elements())
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
    from glam.importers.checkpoint.wrappers import pad_like_spandrel

    spec = ca.ARCHS[arch_id]
    minimum, multiple, square = spec.size_req
    x = pad_like_spandrel(x, multiple, minimum, square)
    if spec.in_channels == 4:
        x = torch.cat([x, torch.full_like(x[:, :1], 15 / 255)], dim=1)
    return x


def _in_subprocess(arch: str, args: argparse.Namespace) -> Row:
    """``run_arch`` in a fresh process with a time limit (an export can take minutes)."""
    import subprocess

    cmd = [sys.executable, __file__, "--one", arch, "--format", args.format,
           "--threads", str(args.threads)] + (["--sanity"] if args.sanity else [])
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return Row(arch=arch, error=f"timeout: over {args.timeout:.0f} s",
                   seconds={"import": time.perf_counter() - t0})
    for line in proc.stdout.splitlines():
        if line.startswith("ROW "):
            return Row(**json.loads(line[4:]))
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return Row(arch=arch, error=f"process exited {proc.returncode}: {tail[:300]}")


def main(argv: list[str] | None = None) -> int:
    """Run the matrix and print the Markdown table (and, with ``--json``, the rows)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archs", nargs="+", default=ca.supported_ids())
    ap.add_argument("--format", default="safetensors", choices=("safetensors", "pth"))
    ap.add_argument("--sanity", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=600,
                    help="seconds per architecture (each runs in its own process)")
    ap.add_argument("--from-json", type=Path,
                    help="print the table of rows saved by an earlier --json run, run nothing")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # the child process: one arch, JSON out
    args = ap.parse_args(argv)
    if args.from_json:
        saved = [Row(**r) for r in json.loads(args.from_json.read_text())]
        print(HEADER)
        for row in saved:
            print(row.markdown())
        return 0
    torch.set_num_threads(args.threads)
    if args.one:
        with tempfile.TemporaryDirectory() as tmp:
            row = run_arch(args.one, Path(tmp), fmt=args.format, sanity=args.sanity)
        print("ROW " + json.dumps(asdict(row)))
        return 0
    rows = []
    print(HEADER, flush=True)
    for arch in args.archs:
        row = _in_subprocess(arch, args)
        rows.append(row)
        print(row.markdown(), flush=True)
        if args.json:
            args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    bad = [r.arch for r in rows if r.error or not r.verify.startswith("passed")]
    print(f"\n{len(rows) - len(bad)}/{len(rows)} passed; failed: {', '.join(bad) or 'none'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
