"""TorchScript import: ts2fx translation, TS2EPConverter fallback, taps vs eager hooks.

Small eager SR nets are traced / scripted, saved and reloaded, then imported through the
full pipeline (``glam.importers.load``). Each import is checked for parity, shape-genericity,
tap count and names (module paths), tap values (pre-activation conv outputs even under
``ReLU(inplace=True)``) and tap gradients against a hook-based reference on the eager
model (import study, section 4).
"""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import glam.importers
import pytest
import torch
import torch.nn.functional as F
from glam.errors import ConventionError, ConversionError, ModelFileError
from glam.importers.torchscript.backend import load_torchscript
from glam.importers.torchscript.ts2fx import TS2FXError, translate
from numerics import assert_close, assert_error_within
from torch import nn

SHARED_MODELS = Path(__file__).resolve().parents[2] / "shared" / "models"
SECOND_SIZE = (27, 33)
#: An imported graph (ts2fx, torch.export, the fallbacks) against the ScriptModule, the
#: program or the eager module: the same operators, possibly through other kernels; float32
#: epsilons of the tensor's largest magnitude: measured 0 (bit-identical) on every
#: instruction set; the floor of 8 (tests/numerics.py). Parity errors are absolute: the test
#: nets' outputs are O(1), so their scale is 1.
ULPS_ROUTE = 8


# ------------------------------------------------------------------------------ test nets


class ResBlock(nn.Module):
    """conv -> ReLU(inplace) -> conv, then the residual ``y += x`` (in place)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(n, n, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(n, n, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.act(self.conv1(x)))
        y += x
        return y


class EDSRLike(nn.Module):
    """Head conv, two residual blocks, a long skip ``r += h`` and a PixelShuffle x2 tail."""

    def __init__(self, n: int = 8) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, n, 3, padding=1)
        self.body = nn.Sequential(ResBlock(n), ResBlock(n))
        self.tail = nn.Sequential(nn.Conv2d(n, 12, 3, padding=1), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(x)
        r = self.body(h)
        r += h
        return self.tail(r)


class MeanShift(nn.Conv2d):
    """EDSR/RCAN's fixed 1x1 colour shift (weights without gradients)."""

    def __init__(self, sign: float) -> None:
        super().__init__(3, 3, 1)
        self.weight.data = torch.eye(3).view(3, 3, 1, 1)
        self.bias.data = sign * torch.tensor([0.4488, 0.4371, 0.4040])
        for p in self.parameters():
            p.requires_grad = False


class CALayer(nn.Module):
    """Channel attention: global average pool -> 1x1 conv -> ReLU -> 1x1 conv -> sigmoid."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_du = nn.Sequential(
            nn.Conv2d(n, n // 4, 1), nn.ReLU(inplace=True), nn.Conv2d(n // 4, n, 1), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.conv_du(self.avg_pool(x))


class RCAB(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(n, n, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(n, n, 3, padding=1),
            CALayer(n),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = self.body(x)
        res += x
        return res


class RCANLike(nn.Module):
    """MeanShift, head, two RCABs with channel attention, PixelShuffle tail, MeanShift."""

    def __init__(self, n: int = 8) -> None:
        super().__init__()
        self.sub_mean = MeanShift(-1.0)
        self.head = nn.Conv2d(3, n, 3, padding=1)
        self.body = nn.Sequential(RCAB(n), RCAB(n), nn.Conv2d(n, n, 3, padding=1))
        self.tail = nn.Sequential(nn.Conv2d(n, 12, 3, padding=1), nn.PixelShuffle(2))
        self.add_mean = MeanShift(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(self.sub_mean(x))
        r = self.body(h)
        r += h
        return self.add_mean(self.tail(r))


class InterpNet(nn.Module):
    """Nearest x2.0 upsampling of features, a bicubic x2.0 global residual, and a bilinear
    resize to a size computed from ``x.shape`` (shape arithmetic in the graph)."""

    def __init__(self, n: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, n, 3, padding=1)
        self.conv2 = nn.Conv2d(n, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = F.leaky_relu(self.conv1(x), 0.2)
        up = F.interpolate(f, scale_factor=2.0, mode="nearest")
        base = F.interpolate(x, scale_factor=2.0, mode="bicubic", align_corners=False)
        h, w = x.shape[2], x.shape[3]
        lin = F.interpolate(x, size=[h * 2, w * 2], mode="bilinear", align_corners=False)
        return self.conv2(up) + base + 0.5 * lin


class Ctrl(nn.Module):
    """``if self.training``, an Optional attribute, a ModuleList loop, a range loop,
    ``clamp_`` and a tuple output."""

    def __init__(self, n: int = 8) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, n, 3, padding=1)
        self.blocks = nn.ModuleList([nn.Conv2d(n, n, 3, padding=1) for _ in range(3)])
        self.extra = None  # an optional submodule that is absent: `is not None` is static
        self.tail = nn.Conv2d(n, 12, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.head(x)
        if self.training:
            h = h * 0.5
        for block in self.blocks:
            h = F.relu(block(h))
        for i in range(2):
            h = h + 0.1 * i
        if self.extra is not None:
            h = self.extra(h)
        y = self.shuffle(self.tail(h)).clamp_(0.0, 1.0)
        return y, h


class DataDep(nn.Module):
    """Data-dependent control flow: ``if y.mean() > 0``."""

    def __init__(self, n: int = 8) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, n, 3, padding=1)
        self.c2 = nn.Conv2d(n, 12, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c1(x)
        if y.mean() > 0:
            y = y * 2.0
        else:
            y = y - 1.0
        return self.shuffle(self.c2(y))


class SliceWrite(nn.Module):
    """An in-place write into a slice (a view): ts2fx writes it back with ``slice_scatter``."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 12, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c1(x)
        y[:, :3] = y[:, :3] * 2.0
        return self.shuffle(y)


class LiveViewWrite(nn.Module):
    """A write into a slice while another view of the same tensor is still used: refused."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 12, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c1(x)
        v = y[:, :3]
        y[:, 3:6] = 0.5
        return self.shuffle(torch.cat([y[:, 3:], v * 2.0], 1))


class GrayOrRGB(nn.Module):
    """A branch on the input's channel count (a shape-dependent ``if``)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 12, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.size(1) == 1:
            x = x.repeat(1, 3, 1, 1)
        return self.shuffle(self.c1(x))


class Aliases(nn.Module):
    """In-place ops the translator must get right: a tensor kept in a list and then
    mutated (the list sees the mutation), and ``relu_`` on a view whose base is dead."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = nn.Conv2d(3, 6, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c1(x)
        keep = [h]
        h.relu_()
        v = self.c2(x).permute(0, 1, 3, 2)
        v.relu_()
        return self.shuffle(torch.cat(keep + [v.permute(0, 1, 3, 2)], 1))


class Promote(nn.Module):
    """``y.add_(float64 buffer)``: the in-place op keeps ``y`` float32."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 3, 1)
        self.register_buffer("offset", torch.full((1, 3, 1, 1), 0.25, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c1(x)
        y.add_(self.offset)
        return y


class DefaultArgs(nn.Module):
    """``forward`` with defaulted non-tensor arguments (bound as constants)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor, scale: float = 2.0, mode: str = "nearest") -> torch.Tensor:
        return F.interpolate(self.c1(x), scale_factor=scale, mode=mode)


NETS: dict[str, Callable[[], nn.Module]] = {
    "edsr": EDSRLike,
    "rcan": RCANLike,
    "interp": InterpNet,
    "ctrl": Ctrl,
}


def make_net(name: str) -> nn.Module:
    """A seeded, eval-mode instance of test net ``name``."""
    torch.manual_seed(sum(map(ord, name)))
    extra = {
        "datadep": DataDep,
        "slicewrite": SliceWrite,
        "liveview": LiveViewWrite,
        "gray": GrayOrRGB,
        "aliases": Aliases,
        "defaults": DefaultArgs,
        "promote": Promote,
    }
    factory = {**NETS, **extra}[name]
    return factory().eval()


def example(h: int = 20, w: int = 24) -> torch.Tensor:
    """A seeded canonical input in [0, 1]."""
    g = torch.Generator().manual_seed(h * 1000 + w)
    return torch.rand(1, 3, h, w, generator=g)


def first(out: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


# ------------------------------------------------------------------- hook-based reference


def conv_hook_reference(
    model: nn.Module, x: torch.Tensor
) -> tuple[list[str], list[torch.Tensor], list[torch.Tensor]]:
    """Conv calls of an eager model, their (pre-activation) outputs and ``dS/d eps_i``.

    A forward hook adds a zero leaf ``eps_i`` to the output of every conv call;
    ``S = (y ** 2).sum()`` of the first output. Independent of the tap pass.

    Returns
    -------
    tuple
        ``(module_paths, conv_outputs, grads)`` in call order.
    """
    names = {m: n for n, m in model.named_modules()}
    records: list[tuple[str, torch.Tensor, torch.Tensor]] = []

    def hook(mod: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
        eps = torch.zeros_like(out, requires_grad=True)
        records.append((names[mod], eps, out.detach().clone()))
        return out + eps

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.modules.conv._ConvNd)
    ]
    try:
        y = first(model(x.clone()))
        grads = torch.autograd.grad((y**2).sum(), [r[1] for r in records], allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    grads_out = [
        torch.zeros_like(r[1]) if g is None else g for r, g in zip(records, grads, strict=True)
    ]
    return [r[0] for r in records], [r[2] for r in records], grads_out


def tap_values_and_grads(
    model: glam.importers.ImportedModel, x: torch.Tensor
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Tap values and ``dS/df_i`` from the imported, tapped graph (one forward/backward)."""
    xg = x.clone().requires_grad_(True)
    y, taps = model.graph(xg)
    grads = torch.autograd.grad((y**2).sum(), list(taps), allow_unused=True)
    return (
        [t.detach() for t in taps],
        [torch.zeros_like(t) if g is None else g for t, g in zip(taps, grads, strict=True)],
    )


def assert_close_list(a: list[torch.Tensor], b: list[torch.Tensor], what: str) -> None:
    assert len(a) == len(b), f"{what}: {len(a)} vs {len(b)}"
    for i, (u, v) in enumerate(zip(a, b, strict=True)):
        assert u.shape == v.shape, f"{what} {i}: shape {tuple(u.shape)} vs {tuple(v.shape)}"
        assert_close(u, v, ulps=ULPS_ROUTE, err_msg=f"{what} {i}")


# ------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Small graphs run faster on one thread on a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def save_torchscript(model: nn.Module, how: str, path: Path) -> Path:
    """Trace or script ``model``, save it and return the path."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sm = torch.jit.trace(model, example()) if how == "trace" else torch.jit.script(model)
        torch.jit.save(sm, str(path))
    return path


def jit_load(path: Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path)).eval()


@pytest.fixture(scope="module")
def ts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("torchscript")


CASES = [(net, how) for net in NETS for how in ("trace", "script")] + [("datadep", "script")]


@pytest.fixture(scope="module", params=CASES, ids=[f"{n}-{h}" for n, h in CASES])
def imported(
    request: pytest.FixtureRequest, ts_dir: Path
) -> tuple[str, nn.Module, Path, glam.importers.ImportedModel]:
    """``(net name, eager model, .pt path, glam.importers.load result)``, imported once."""
    net, how = request.param
    model = make_net(net)
    path = save_torchscript(model, how, ts_dir / f"{net}_{how}.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return net, model, path, glam.importers.load(path, input_range=1)


# ---------------------------------------------------------------------------------- tests


@pytest.mark.numerics
def test_parity_and_route(imported: tuple[str, nn.Module, Path, glam.importers.ImportedModel]) -> None:
    net, _, _, m = imported
    assert m.format == "torchscript"
    assert m.parity.passed
    assert_error_within(m.parity.max_abs_error, ulps=ULPS_ROUTE, label="parity")
    assert m.parity.reference == "TorchScript ScriptModule"
    expected_route = "TS2EPConverter" if net == "datadep" else "ts2fx"
    assert m.metadata["route"] == expected_route
    assert m.conventions.scale == 2
    if net == "datadep":
        assert any("specialised" in w for w in m.warnings)


@pytest.mark.numerics
def test_shape_generic(imported: tuple[str, nn.Module, Path, glam.importers.ImportedModel]) -> None:
    _, _, path, m = imported
    x = example(*SECOND_SIZE)
    with torch.no_grad():
        y, _ = m.graph(x)
        ref = first(jit_load(path)(x.clone()))
    assert y.shape == ref.shape == (1, 3, 2 * SECOND_SIZE[0], 2 * SECOND_SIZE[1])
    assert_close(y, ref, ulps=ULPS_ROUTE, err_msg="second size")


def assert_taps_match_eager_hooks(model: nn.Module, m: glam.importers.ImportedModel) -> None:
    """Tap count, names (module paths), values and gradients equal the hook reference."""
    x = example(*SECOND_SIZE)
    names, values, grads = conv_hook_reference(model, x)
    assert m.n_taps == len(names)
    assert [t.name for t in m.taps] == names
    tap_values, tap_grads = tap_values_and_grads(m, x)
    assert_close_list(tap_values, values, "tap value")
    assert_close_list(tap_grads, grads, "tap gradient")


@pytest.mark.numerics
def test_taps_match_eager_hooks(
    imported: tuple[str, nn.Module, Path, glam.importers.ImportedModel],
) -> None:
    """Tap count, names, values (pre-activation) and gradients equal the hook reference."""
    _, model, _, m = imported
    assert_taps_match_eager_hooks(model, m)


def assert_tap_is_pre_activation(
    model: nn.Module, m: glam.importers.ImportedModel, x: torch.Tensor
) -> None:
    """The tap of ``body.0.conv1`` (followed by ``ReLU(inplace=True)``) equals the conv's own
    output, negative values included, as a forward hook on the eager model captures it."""
    captured: list[torch.Tensor] = []
    handle = model.body[0].conv1.register_forward_hook(
        lambda mod, inp, out: captured.append(out.detach().clone())
    )
    try:
        with torch.no_grad():
            model(x.clone())
    finally:
        handle.remove()
    idx = [t.name for t in m.taps].index("body.0.conv1")
    with torch.no_grad():
        _, taps = m.graph(x)
    assert (captured[0] < 0).any()
    assert_close(taps[idx], captured[0], ulps=ULPS_ROUTE, err_msg="pre-activation tap")


def test_inplace_relu_tap_is_pre_activation(ts_dir: Path) -> None:
    """EDSR's ``ReLU(inplace=True)`` after conv1: the tap keeps the negative values."""
    model = make_net("edsr")
    path = save_torchscript(model, "trace", ts_dir / "edsr_relu.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = glam.importers.load(path, input_range=1)
    x = example()
    assert_tap_is_pre_activation(model, m, x)


def test_translate_direct_traced_and_scripted(ts_dir: Path) -> None:
    """ts2fx alone: exact, aten overloads, canonical convolution, shared parameters."""
    model = make_net("rcan")
    for how in ("trace", "script"):
        sm = jit_load(save_torchscript(model, how, ts_dir / f"rcan_direct_{how}.pt"))
        gm, names = translate(sm, (example(),))
        assert names == ["x"]
        with torch.no_grad():
            for size in ((20, 24), SECOND_SIZE):
                x = example(*size)
                assert torch.equal(gm(x.clone()), sm(x.clone()))
        targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
        assert all(
            isinstance(t, torch._ops.OpOverload) or t.__name__ == "_getitem" for t in targets
        )
        assert not any(t._schema.name.endswith("_") for t in targets if hasattr(t, "_schema"))
        convs = [n for n in gm.graph.nodes if n.op == "call_function" and "conv" in str(n.target)]
        if how == "trace":
            assert {n.target for n in convs} == {torch.ops.aten.convolution.default}
        assert convs[1].meta["glam_name"] == "head"
        w_gm = dict(gm.named_parameters())["head.weight"]
        assert w_gm.data_ptr() == sm.head.weight.data_ptr()


def test_sizes_stay_symbolic(ts_dir: Path) -> None:
    """``x.shape`` arithmetic becomes ``aten.size.int`` nodes, not constants."""
    for how in ("trace", "script"):
        sm = jit_load(save_torchscript(make_net("interp"), how, ts_dir / f"interp_sym_{how}.pt"))
        gm, _ = translate(sm, (example(),))
        assert any(n.target is torch.ops.aten.size.int for n in gm.graph.nodes)


def test_data_dependent_branch_raises_ts2fx_error(ts_dir: Path) -> None:
    sm = jit_load(save_torchscript(make_net("datadep"), "script", ts_dir / "dd.pt"))
    with pytest.raises(TS2FXError, match="depends on the input's values"):
        translate(sm, (example(),))
    assert issubclass(TS2FXError, ConversionError)


def test_inplace_write_into_slice_is_written_back(ts_dir: Path) -> None:
    """``y[:, :3] = ...`` (``copy_`` into a view) becomes ``slice_scatter`` into ``y``: exact."""
    model = make_net("slicewrite")
    for how in ("trace", "script"):
        sm = jit_load(save_torchscript(model, how, ts_dir / f"slice_{how}.pt"))
        gm, _ = translate(sm, (example(),))
        assert any(n.target is torch.ops.aten.slice_scatter.default for n in gm.graph.nodes)
        x = example(*SECOND_SIZE)
        with torch.no_grad():
            assert torch.equal(gm(x.clone()), model(x.clone()))


@pytest.mark.numerics
def test_inplace_write_into_slice_with_a_live_view_is_refused(ts_dir: Path) -> None:
    """Another view of the written tensor is used later: ts2fx refuses; the fallback is exact."""
    model = make_net("liveview")
    for how in ("trace", "script"):
        path = save_torchscript(model, how, ts_dir / f"liveview_{how}.pt")
        with pytest.raises(TS2FXError, match="views"):
            translate(jit_load(path), (example(),))
        raw = load_torchscript(path)
        assert raw.metadata["route"] == "TS2EPConverter"
        assert "views" in raw.metadata["ts2fx_error"]
        x = example(40, 36)
        with torch.no_grad():
            ref = raw.reference([x.numpy()])[0]
            out = first(raw.gm(x.clone())).numpy()
        assert_close(out, ref, ulps=ULPS_ROUTE, err_msg=f"{how} fallback")
        assert_close(ref, model(x), ulps=ULPS_ROUTE, err_msg=f"{how} eager")


def test_inplace_on_aliases_is_exact(ts_dir: Path) -> None:
    model = make_net("aliases")
    for how in ("trace", "script"):
        sm = jit_load(save_torchscript(model, how, ts_dir / f"aliases_{how}.pt"))
        gm, _ = translate(sm, (example(),))
        with torch.no_grad():
            x = example(*SECOND_SIZE)
            assert torch.equal(gm(x.clone()), sm(x.clone()))
            assert torch.equal(gm(x.clone()), model(x.clone()))


def test_inplace_keeps_target_dtype(ts_dir: Path) -> None:
    for how in ("trace", "script"):
        sm = jit_load(save_torchscript(make_net("promote"), how, ts_dir / f"promote_{how}.pt"))
        gm, _ = translate(sm, (example(),))
        with torch.no_grad():
            out, ref = gm(example(*SECOND_SIZE)), sm(example(*SECOND_SIZE))
        assert out.dtype == ref.dtype == torch.float32
        assert torch.equal(out, ref)


def test_shape_dependent_branch_is_guarded(ts_dir: Path) -> None:
    """``if x.size(1) == 1`` is fixed to the example's branch behind a runtime guard."""
    path = save_torchscript(make_net("gray"), "script", ts_dir / "gray.pt")
    sm = jit_load(path)
    gm, _ = translate(sm, (example(),))
    assert any("shape" in w for w in gm.meta["ts2fx_warnings"])
    with torch.no_grad():
        x = example(*SECOND_SIZE)
        assert torch.equal(gm(x.clone()), sm(x.clone()))
        with pytest.raises(RuntimeError, match="branch"):
            gm(x[:, :1].clone())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = glam.importers.load(path, input_range=1)
    assert m.metadata["route"] == "ts2fx"
    assert any("shape" in w for w in m.warnings)


@pytest.mark.numerics
def test_defaulted_forward_arguments(ts_dir: Path) -> None:
    path = save_torchscript(make_net("defaults"), "script", ts_dir / "defaults.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = glam.importers.load(path, input_range=1)
    assert m.metadata["route"] == "ts2fx"
    assert m.input_names == ["x"]
    assert m.conventions.scale == 2
    assert_error_within(m.parity.max_abs_error, ulps=ULPS_ROUTE, label="parity")


def test_both_routes_failing_is_conversion_error(
    ts_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import glam.importers.torchscript.backend as backend

    def broken(*args: object) -> None:
        raise RuntimeError("converter exploded")

    monkeypatch.setattr(backend, "_ts2ep", broken)
    path = save_torchscript(make_net("datadep"), "script", ts_dir / "dd_both.pt")
    with pytest.raises(ConversionError, match="ts2fx: control flow.*TS2EPConverter: converter exploded"):
        load_torchscript(path)


def test_raw_graph_contract(ts_dir: Path) -> None:
    path = save_torchscript(make_net("ctrl"), "script", ts_dir / "ctrl_raw.pt")
    raw = load_torchscript(path)
    assert raw.format == "torchscript"
    assert raw.input_names == ["x"]
    assert raw.output_names == ["output_0", "output_1"]
    assert raw.input_shape == (1, 3, None, None)
    assert raw.metadata["torchscript"] == "scripted"
    assert raw.reference_name == "TorchScript ScriptModule"
    x = example(40, 36)
    before = x.clone()
    outs = raw.reference([x.numpy()])
    assert len(outs) == 2 and torch.equal(x, before)
    traced = load_torchscript(save_torchscript(make_net("edsr"), "trace", ts_dir / "edsr_raw.pt"))
    assert traced.metadata["torchscript"] == "traced"


def test_channels_argument(ts_dir: Path) -> None:
    path = save_torchscript(make_net("edsr"), "trace", ts_dir / "edsr_ch.pt")
    assert load_torchscript(path, channels=3).input_shape == (1, 3, None, None)
    with pytest.raises(ConventionError, match="1-channel"):
        load_torchscript(path, channels=1)


def test_corrupt_torchscript_is_model_file_error(ts_dir: Path, tmp_path: Path) -> None:
    path = save_torchscript(make_net("edsr"), "trace", ts_dir / "edsr_corrupt_src.pt")
    data = bytearray(path.read_bytes())
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(ModelFileError):
        glam.importers.load(truncated)
    # A well-formed zip whose archived code is garbage: detected as TorchScript, fails to load.
    corrupt = tmp_path / "corrupt.pt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(corrupt, "w") as dst:
        for info in src.infolist():
            payload = src.read(info)
            if "/code/" in info.filename and info.filename.endswith(".py"):
                payload = b"def forward(self, x:\n  this is not TorchScript )(\n"
            dst.writestr(info, payload)
    with pytest.raises(ModelFileError):
        load_torchscript(corrupt)
    with pytest.raises(ModelFileError):
        glam.importers.load(corrupt)


# ----------------------------------------------------------------- third-party models


SHARED_FILES = sorted(SHARED_MODELS.glob("*.ts.pt")) if SHARED_MODELS.is_dir() else []


@pytest.mark.shared
@pytest.mark.skipif(not SHARED_FILES, reason="../shared/models not available")
@pytest.mark.parametrize("path", SHARED_FILES, ids=[p.name for p in SHARED_FILES])
def test_shared_torchscript_models(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = glam.importers.load(path)
    assert m.parity.passed  # glam's parity tolerance, 1e-4 (real models)
    assert m.metadata["route"] == "ts2fx"
    graph = jit_load(path).inlined_graph
    n_convs = sum(len(graph.findAllNodes(k)) for k in ("aten::_convolution", "aten::conv2d"))
    assert m.n_taps == n_convs > 0
    assert all(not t.name.startswith(("convolution", "conv2d")) for t in m.taps)
