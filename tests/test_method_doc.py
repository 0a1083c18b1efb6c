"""docs/method.md's worked example, recomputed from the document's steps.

The network, weights, input and ROI are the ones the document defines; every step (taps,
participation, parents, ``N``, ``R``, ``A`` with the vanishing-weights rule, the texture
objective, the local and global keys, Consensus / Variation / Sum, LAM's blur path, DI and
attributed fraction) is restated here in float64 with plain torch, in the document's
order, independently of glam's engine. The test checks that ``glam.analyze`` (float32)
gives the same maps, and that the numbers the document prints are the ones both compute,
so the document cannot drift from the code.

Tolerances. The engine works in float32 (``eps = 2**-23``), this recomputation in float64.
A Grad-CAM key whose channel weights cancel to a ratio ``r = max|alpha_c| / max mean|g_c|``
is resolved by float32 only to a few ``eps / r`` (``glam.engine.reference.KEY_RESOLUTION``
holds two float32 implementations to 32 eps / r); this recomputation is float64, one
float32 rounding away, so it takes ``8 eps / r``; the example's smallest kept ratio is
0.016, so the bound is ``8 eps / 0.016 = 6.0e-5`` (measured: 2.7e-7). LAM has no cancelling weights (one input
channel) and its ReLU inputs stay 1e-3 from 0 on every path image (checked below), so
float32 resolves it to a few ulps of its depth: ``64 eps = 7.6e-6`` (measured: 8e-8).
Printed numbers are rounded: a printed value must be the computed one to half a unit of
its last digit (plus the tolerance above).

Run ``python tests/test_method_doc.py`` to print the document's blocks.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import glam
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "method.md"
EPS32 = float(np.finfo(np.float32).eps)
KEY_RESOLUTION = 8 * EPS32  # float32 resolution of a Grad-CAM key of weight ratio 1
LAM_TOL = 64 * EPS32
TOP, LEFT, WINDOW = 4, 4, 4  # the ROI of the example
FOLD, SIGMA, KERNEL = 8, 1.2, 9  # LAM's path in the example
VANISHING = 1e-4


# ----------------------------------------------------------------- the example, as defined


def weight(k: int, o: int, i: int, p: int, q: int) -> float:
    """``W_k[o, i, p, q] = ((o + 2i + 3p + 5q + k) mod 7 - 3) / 8``."""
    return ((o + 2 * i + 3 * p + 5 * q + k) % 7 - 3) / 8


def bias(k: int, o: int) -> float:
    """``b_k[o] = ((o + k) mod 3 - 1) / 10 + 1/20``."""
    return ((o + k) % 3 - 1) / 10 + 1 / 20


def example_input() -> torch.Tensor:
    """``x[p, q] = ((5p + 3q + pq) mod 8) / 8``, ``1 x 1 x 6 x 6`` float64."""
    return torch.tensor(
        [[((5 * p + 3 * q + p * q) % 8) / 8 for q in range(6)] for p in range(6)],
        dtype=torch.float64,
    )[None, None]


class Example(nn.Module):
    """shift -> head -> relu -> channel attention (squeeze) -> tail -> pixel shuffle x2."""

    def __init__(self) -> None:
        super().__init__()
        self.shift = nn.Conv2d(1, 1, 1)
        self.head = nn.Conv2d(1, 2, 3, padding=1)
        self.squeeze = nn.Conv2d(2, 2, 1)
        self.tail = nn.Conv2d(2, 4, 3, padding=1)
        with torch.no_grad():
            self.shift.weight.fill_(1.0)
            self.shift.bias.fill_(-0.5)
            for k, conv in ((1, self.head), (2, self.squeeze), (3, self.tail)):
                w = conv.weight
                for idx in np.ndindex(*w.shape):
                    w[idx] = weight(k, *idx)
                for o in range(w.shape[0]):
                    conv.bias[o] = bias(k, o)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.taps(x)[0]

    def taps(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """``y``, the four conv outputs in execution order, and the ReLU's input."""
        f0 = self.shift(x)
        f1 = self.head(f0)
        h = torch.relu(f1)
        f2 = self.squeeze(h.mean(dim=(2, 3), keepdim=True))
        f3 = self.tail(h * torch.sigmoid(f2))
        return F.pixel_shuffle(f3, 2), [f0, f1, f2, f3], f1


NAMES = ["shift", "head", "squeeze", "tail"]
#: graph ancestors of each tap among the taps (read off the network above)
ANCESTORS = {0: [], 1: [0], 2: [0, 1], 3: [0, 1, 2]}


# ------------------------------------------------------------- the document's steps, float64


def participation(shape: tuple[int, ...]) -> str:
    """"" when the tap participates, else the document's reason."""
    if len(shape) != 4:
        return "not 4-D"
    if shape[0] != 1:
        return "batch-folded"
    if shape[2] <= 1 or shape[3] <= 1:
        return "no spatial extent"
    return ""


def N(z: torch.Tensor) -> torch.Tensor:
    z = z.clamp(min=0)
    m = z.max()
    return z / m if m > 0 else torch.zeros_like(z)


def R(z: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(z.shape) == tuple(size):
        return z
    return F.interpolate(z[None, None], size=size, mode="bicubic", align_corners=False)[0, 0]


def weight_ratio(g: torch.Tensor) -> float:
    magnitude = float(g.abs().mean(dim=(1, 2)).max())
    return float(g.mean(dim=(1, 2)).abs().max()) / magnitude if magnitude > 0 else 0.0


def A(g: torch.Tensor) -> torch.Tensor:
    """The Grad-CAM key, exactly 0 when the weights vanish."""
    alpha = g.mean(dim=(1, 2))
    magnitude = g.abs().mean(dim=(1, 2)).max()
    if magnitude == 0 or alpha.abs().max() <= VANISHING * magnitude:
        return torch.zeros_like(g[0])
    return (alpha[:, None, None] * g).sum(dim=0).abs()


def grad_mag(t: torch.Tensor) -> torch.Tensor:
    dv = t[:, :, :-1, :-1] - t[:, :, 1:, :-1]
    dh = t[:, :, :-1, :-1] - t[:, :, :-1, 1:]
    return torch.sqrt(dv**2 + dh**2 + 1e-12)


def T_roi(t: torch.Tensor) -> torch.Tensor:
    return grad_mag(t)[:, :, TOP : TOP + WINDOW, LEFT : LEFT + WINDOW].sum()


def T_all(t: torch.Tensor) -> torch.Tensor:
    return grad_mag(t).sum()


def combine(keys: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    consensus = N(sum(keys))
    variation = N(sum((keys[i] - keys[i - 1]).abs() for i in range(1, len(keys))))
    return {"consensus": consensus, "variation": variation, "sum": N(consensus + variation)}


def gini(m: np.ndarray) -> float:
    a = np.asarray(m, dtype=np.float64).ravel()
    if a.min() < 0:
        a = a - a.min()
    a = np.sort(a + 1e-7)
    n = a.size
    k = np.arange(1, n + 1)
    return float(((2 * k - n - 1) * a).sum() / (n * a.sum()))


def DI(m: np.ndarray) -> float:
    return (1 - gini(m)) * 100


def attributed(m: np.ndarray) -> int:
    """Pixels above the map's mean (the attributed fraction's numerator)."""
    return int((m > m.mean()).sum())


def blur_kernel(sigma: float) -> torch.Tensor:
    ax = np.arange((-KERNEL) // 2 + 1.0, KERNEL // 2 + 1.0)
    xx, yy = np.meshgrid(ax, ax)
    k = np.exp(-(xx**2 + yy**2) / (2 * (sigma + 1e-5) ** 2))
    return torch.from_numpy(k / k.sum())


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    pad = (-((-KERNEL) // 2 + 1), KERNEL // 2) * 2
    return F.conv2d(F.pad(x, pad, mode="reflect"), blur_kernel(sigma)[None, None])


@dataclass
class Steps:
    """Everything the document's steps give for the example."""

    reasons: list[str]
    parents: list[int]
    local_ratio: dict[int, float]
    global_ratio: dict[int, float]
    local_layers: dict[int, np.ndarray]  # N(A(g_i)), native size
    global_layers: dict[int, np.ndarray]  # N(m_j), native size
    local: dict[str, np.ndarray]
    global_: dict[str, np.ndarray]
    lam: np.ndarray
    lam_output: np.ndarray
    relu_margin: float  # min |ReLU input| over the input and every LAM path image


def recompute() -> Steps:
    net = Example().double().eval()
    x = example_input().requires_grad_(True)
    y, f, relu_in = net.taps(x)
    H, W = int(y.shape[-2]), int(y.shape[-1])
    reasons = [participation(tuple(t.shape)) for t in f]
    part = [i for i, r in enumerate(reasons) if not r]
    parents = [max([a for a in ANCESTORS[j] if not reasons[a]], default=-1) for j in range(4)]
    margin = float(relu_in.detach().abs().min())
    # local: one backward pass of T_ROI(y) to every participating tap
    g = torch.autograd.grad(T_roi(y), [f[i] for i in part], retain_graph=True)
    local_ratio, local_layers, local_keys = {}, {}, []
    for i, gi in zip(part, g, strict=True):
        local_ratio[i] = weight_ratio(gi[0])
        local_layers[i] = N(A(gi[0])).detach().numpy()
        local_keys.append(N(R(N(A(gi[0])), (H, W))))
    # global: each tap's whole-image texture against its parent
    global_ratio, global_layers, global_keys = {}, {}, []
    for j in part:
        src = x if parents[j] < 0 else f[parents[j]]
        (G,) = torch.autograd.grad(T_all(f[j]), [src], retain_graph=True)
        global_ratio[j] = weight_ratio(G[0])
        energy = f[j][0].abs().mean(dim=0)
        m = N(R(N(A(G[0])), tuple(f[j].shape[-2:]))) * N(energy)
        global_layers[j] = N(m).detach().numpy()
        global_keys.append(N(R(N(m), (H, W))))
    # LAM along the blur path
    x0 = example_input()
    sigmas = np.linspace(SIGMA, 0.0, FOLD + 1)
    gamma = [blur(x0, float(s)) for s in sigmas]
    attr = torch.zeros_like(x0)
    for k in range(FOLD):
        z = gamma[k + 1].clone().requires_grad_(True)
        yz, _, relu_z = net.taps(z)
        margin = min(margin, float(relu_z.detach().abs().min()))
        (d,) = torch.autograd.grad(T_roi(yz), [z])
        attr += d * (gamma[k + 1] - gamma[k]) * FOLD
    attr /= FOLD
    summed = attr[0].sum(dim=0).abs()
    lam = (summed / summed.max()).detach()
    return Steps(
        reasons=reasons, parents=parents, local_ratio=local_ratio, global_ratio=global_ratio,
        local_layers=local_layers, global_layers=global_layers,
        local={k: v.detach().numpy() for k, v in combine(local_keys).items()},
        global_={k: v.detach().numpy() for k, v in combine(global_keys).items()},
        lam=lam.numpy(), lam_output=R(lam, (H, W)).numpy(), relu_margin=margin,
    )


def engine_result() -> glam.Result:
    model = glam.from_module(Example().eval(), in_channels=1, name="method-example")
    return glam.analyze(model, example_input().float(), roi=(TOP, LEFT), window=WINDOW,
                        lam=True, lam_fold=FOLD, lam_sigma=SIGMA, lam_kernel=KERNEL,
                        device="cpu")


# ------------------------------------------------------------------ what the document prints


def _fmt_row(values: np.ndarray | list[float], digits: int) -> str:
    return " ".join(f"{v:.{digits}f}" for v in values)


def _ratio(r: float) -> str:
    return "0" if r == 0 else f"{r:.3g}" if r < 1 else f"{r:.2f}"


def doc_blocks(steps: Steps) -> dict[str, str]:
    """The text of each marked block of the document's worked example."""
    net = Example()
    head = []
    for o in range(2):
        w = net.head.weight[o, 0].detach().numpy()
        rows = ", ".join("[" + ", ".join(f"{v:.3f}" for v in r) + "]" for r in w)
        head.append(f"W_1[{o}, 0] = [{rows}]   b_1[{o}] = {bias(1, o):.3f}")
    taps = ["| tap | name | output | participates | parent | local ratio | local key | "
            "global ratio | global key |", "|---|---|---|---|---|---|---|---|---|"]
    shapes = ["1×1×6×6", "1×2×6×6", "1×2×1×1", "1×4×6×6"]
    for i in range(4):
        parent = str(steps.parents[i]).replace("-", "−")
        if steps.reasons[i]:
            taps.append(f"| {i} | {NAMES[i]} | {shapes[i]} | no: {steps.reasons[i]} | "
                        f"{parent} | – | – | – | – |")
            continue
        lr, gr = steps.local_ratio[i], steps.global_ratio[i]
        taps.append(
            f"| {i} | {NAMES[i]} | {shapes[i]} | yes | {parent} | {_ratio(lr)} | "
            f"{'vanishes' if lr <= VANISHING else 'kept'} | {_ratio(gr)} | "
            f"{'vanishes' if gr <= VANISHING else 'kept'} |"
        )
    metrics = [
        f"di_local                    {DI(steps.local['sum']):.2f}",
        f"di_global                   {DI(steps.global_['sum']):.2f}",
        f"di_lam                      {DI(steps.lam):.2f}",
        f"di_lam_output               {DI(steps.lam_output):.2f}",
        f"attributed_fraction_local   {attributed(steps.local['sum'])}/144",
        f"attributed_fraction_global  {attributed(steps.global_['sum'])}/144",
        f"attributed_fraction_lam     {attributed(steps.lam_output)}/144",
    ]
    return {
        "head-weights": "\n".join(head),
        "input": "\n".join(_fmt_row(r, 3) for r in example_input()[0, 0].numpy()),
        "taps": "\n".join(taps),
        "metrics": "\n".join(metrics),
        "lam": "\n".join(_fmt_row(r, 2) for r in steps.lam),
    }


def printed(name: str) -> str:
    """The block after ``<!-- example:NAME -->`` in docs/method.md (fence stripped)."""
    text = DOC.read_text()
    m = re.search(rf"<!-- example:{re.escape(name)} -->\n(.*?)\n\n", text + "\n\n", flags=re.S)
    assert m, f"docs/method.md has no block marked example:{name}"
    block = m.group(1).strip()
    if block.startswith("```"):
        block = block.split("\n", 1)[1].rsplit("```", 1)[0]
    return block.strip()


# -------------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def steps() -> Steps:
    return recompute()


@pytest.fixture(scope="module")
def result() -> glam.Result:
    return engine_result()


def test_example_model_imports_as_the_doc_says() -> None:
    model = glam.from_module(Example().eval(), in_channels=1, name="method-example")
    c = model.conventions
    assert (c.scale, c.offset, c.in_channels, c.out_channels) == (2, (0, 0), 1, 1)
    assert model.parity.passed  # import parity against the eager module


def _numbers(text: str) -> np.ndarray:
    return np.array([float(v) for v in re.findall(r"-?\d+\.\d+|-?\d+", text)])


def test_doc_defines_the_example_the_test_builds(steps: Steps) -> None:
    want = doc_blocks(steps)
    for name in ("head-weights", "input"):
        assert printed(name) == want[name], f"docs/method.md example:{name} is stale"


def test_doc_tap_table_is_what_the_rules_give(steps: Steps, result: glam.Result) -> None:
    assert printed("taps") == doc_blocks(steps)["taps"]
    assert [t.name for t in result.taps] == NAMES
    assert [t.parent for t in result.taps] == steps.parents
    assert [t.participating for t in result.taps] == [not r for r in steps.reasons]
    kept = [r for r in (*steps.local_ratio.values(), *steps.global_ratio.values()) if r > VANISHING]
    assert min(kept) > 1e-2  # far from the threshold: the vanishing decisions are robust
    for rec in result.layers:
        if rec.participating:
            assert rec.local_vanished == (steps.local_ratio[rec.index] <= VANISHING)
            assert rec.global_vanished == (steps.global_ratio[rec.index] <= VANISHING)
    assert result.metrics["di_local"] > 0 and result.lam is not None


def test_engine_maps_equal_the_doc_steps(steps: Steps, result: glam.Result) -> None:
    kept = [r for r in (*steps.local_ratio.values(), *steps.global_ratio.values()) if r > VANISHING]
    tol = KEY_RESOLUTION / min(kept)  # 6.0e-5 for this example
    assert tol < 1e-4  # within the specification's float32 tolerance
    for family, ours, theirs in (("local", steps.local, result.local),
                                 ("global", steps.global_, result.global_)):
        for k in ("consensus", "variation", "sum"):
            err = float(np.abs(ours[k] - theirs[k]).max())
            assert err <= tol, f"{family}/{k}: engine differs from the doc's steps by {err:.3g}"
    for rec in result.layers:
        if not rec.participating:
            continue
        local = np.asarray(N(torch.from_numpy(rec.local_map).double()))
        assert np.abs(local - steps.local_layers[rec.index]).max() <= tol, rec.name
        glob = np.asarray(N(torch.from_numpy(rec.global_map).double()))
        assert np.abs(glob - steps.global_layers[rec.index]).max() <= tol, rec.name
    assert steps.relu_margin > 1e-3  # float32 takes the ReLU branch float64 takes
    assert result.lam is not None
    assert np.abs(result.lam.map - steps.lam).max() <= LAM_TOL
    assert np.abs(result.lam.map_output - steps.lam_output).max() <= LAM_TOL


def test_doc_numbers_are_the_computed_numbers(steps: Steps, result: glam.Result) -> None:
    doc = dict(line.split() for line in printed("metrics").splitlines())
    # DI moves by at most 200 * tol / mean(map) when every pixel moves by tol (Gini is a
    # ratio of sums of |differences|); 0.005 is half the printed last digit
    for key, ours in (("di_local", DI(steps.local["sum"])), ("di_global", DI(steps.global_["sum"])),
                      ("di_lam", DI(steps.lam)), ("di_lam_output", DI(steps.lam_output))):
        shown = float(doc[key])
        assert abs(shown - ours) <= 0.005 + 1e-9, f"{key}: doc {shown}, doc's steps {ours:.4f}"
        assert abs(shown - result.metrics[key]) <= 0.005 + 1e-3, f"{key}: engine {result.metrics[key]:.4f}"
    for key, ours in (("attributed_fraction_local", attributed(steps.local["sum"])),
                      ("attributed_fraction_global", attributed(steps.global_["sum"])),
                      ("attributed_fraction_lam", attributed(steps.lam_output))):
        count, total = (int(v) for v in doc[key].split("/"))
        assert (count, total) == (ours, 144), key
        assert math.isclose(result.metrics[key], count / total), key
    lam_doc = _numbers(printed("lam")).reshape(6, 6)
    assert np.abs(lam_doc - steps.lam).max() <= 0.005 + LAM_TOL
    assert np.abs(lam_doc - result.lam.map).max() <= 0.005 + LAM_TOL


def test_engine_modules_point_to_the_method() -> None:
    import ast

    for name in ("glam", "reference", "lam", "metrics", "maps"):
        path = ROOT / "analyzer" / "engine" / f"{name}.py"
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert "docs/method.md" in doc, f"glam.engine.{name}'s docstring does not point to docs/method.md"
    assert "](docs/method.md)" in (ROOT / "README.md").read_text()


if __name__ == "__main__":  # print the document's blocks
    for name, text in doc_blocks(recompute()).items():
        print(f"<!-- example:{name} -->\n```\n{text}\n```\n" if name != "taps" else
              f"<!-- example:{name} -->\n{text}\n")
