"""Differentiable by construction (glam.importers.differentiable): traced ops without a
derivative are rewritten to differentiable ops of the same value, and an import whose
graph still has no backward pass is refused at import, naming the op, node and location.

The partial in-place conv (``x[:, :k] = conv(x[:, :k])``, PLKSR / RealPLKSR / FasterNet's
PConv) traces through ``torch.export`` to ``slice_scatter(x, aten.copy(slice, conv))``;
before the rewrite the import passed and ``analyze`` died with "derivative for aten::copy
is not implemented".
"""

from __future__ import annotations

import pytest
import torch
from glam import analyze, from_module, load
from glam.engine.texture import texture_roi
from glam.errors import ConversionError
from glam.importers.differentiable import make_differentiable, node_location
from torch import fx, nn


def _copy_graph(dst_shape: tuple[int, ...], src_shape: tuple[int, ...]) -> fx.GraphModule:
    """``out = aten.copy(dst, src) * 2`` as an FX graph (what functionalisation emits)."""
    g = fx.Graph()
    dst, src = g.placeholder("dst"), g.placeholder("src")
    c = g.call_function(torch.ops.aten.copy.default, (dst, src))
    g.output(g.call_function(torch.ops.aten.mul.Tensor, (c, 2.0)))
    return fx.GraphModule(nn.Module(), g)


@pytest.mark.parametrize("dst_shape, src_shape, dtype", [
    ((2, 3, 4, 5), (2, 3, 4, 5), torch.float32),
    ((2, 3, 4, 5), (1, 3, 1, 5), torch.float32),   # copy broadcasts src to dst's shape
    ((2, 3, 4, 5), (2, 3, 4, 5), torch.float64),   # and converts to dst's dtype
])
def test_copy_rewrite_keeps_the_value_and_gains_the_derivative(dst_shape, src_shape, dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    dst = torch.rand(dst_shape, generator=gen)
    src = torch.rand(src_shape, generator=gen, dtype=dtype, requires_grad=True)
    gm = _copy_graph(dst_shape, src_shape)
    before = gm(dst, src.detach())
    with pytest.raises(RuntimeError, match="derivative for aten::copy is not implemented"):
        torch.autograd.grad(gm(dst, src).sum(), src)
    done = make_differentiable(gm)
    assert len(done) == 1 and "aten.copy.default" in done[0]
    after = gm(dst, src)
    assert after.dtype == dst.dtype and torch.equal(after.detach(), before)  # same value, bit for bit
    (grad,) = torch.autograd.grad(after.sum(), src)
    # d(sum 2 * broadcast(src))/d src = 2 * (number of copies of each element): exact in float
    copies = torch.tensor(dst.numel() / src.numel(), dtype=dtype)
    assert torch.equal(grad, torch.full_like(src, 2.0) * copies)
    assert not any(n.target is torch.ops.aten.copy.default for n in gm.graph.nodes)


def _plksr():  # type: ignore[no-untyped-def]
    pytest.importorskip("spandrel")
    from spandrel.architectures.PLKSR.__arch.PLKSR import PLKSR

    torch.manual_seed(0)
    return PLKSR(dim=8, n_blocks=2, upscaling_factor=2, kernel_size=5).eval()


def test_partial_inplace_conv_checkpoint_imports_differentiably(tmp_path) -> None:
    """A PLKSR checkpoint (partial in-place conv) imports with the rewrite recorded, analyses
    with --verify, and its input gradient equals the eager module's."""
    from safetensors.torch import save_file

    net = _plksr()
    path = tmp_path / "plksr.safetensors"
    save_file({k: v.contiguous().clone() for k, v in net.state_dict().items()}, str(path))
    model = load(path)
    assert any("aten.copy.default" in r and "lk" in r for r in model.metadata["rewritten_ops"])
    x = torch.rand(1, 3, 20, 18, generator=torch.Generator().manual_seed(1))
    res = analyze(model, x, roi=(10, 8), window=12, verify=True)
    assert res.engine_parity is not None and res.engine_parity.passed
    # differential: d T_ROI(y)/dx through the imported graph vs the eager module. Eager
    # autograd cannot differentiate the in-place write either (it overwrites a tensor the
    # conv saved); PLKConv2d's training branch computes the same function with split + cat,
    # so the reference runs those modules in that branch. Different computations of the
    # same function in float32: compared relative to the gradient's scale.
    xi = x.clone().requires_grad_(True)
    y, _ = model.graph(xi)
    (g_graph,) = torch.autograd.grad(texture_roi(y, 10, 8, 12).sum(), xi)
    for m in net.modules():
        if type(m).__name__ == "PLKConv2d":
            m.train()
    xe = x.clone().requires_grad_(True)
    y_eager = net(xe)
    assert float((y_eager - y).abs().max()) <= 1e-5 * float(y_eager.abs().max())
    (g_eager,) = torch.autograd.grad(texture_roi(y_eager, 10, 8, 12).sum(), xe)
    scale = float(g_eager.abs().max())
    assert scale > 0
    assert float((g_graph - g_eager).abs().max()) <= 1e-5 * scale


class _Gamma(nn.Module):
    """A conv plus a regularised incomplete gamma of the input: autograd has no derivative
    of ``igamma`` with respect to its first argument."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 12, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x) + torch.igamma(x + 1.0, x + 1.0).mean())


def test_op_without_derivative_is_refused_at_import_naming_op_node_and_location() -> None:
    with pytest.raises(ConversionError) as info:
        from_module(_Gamma())
    msg = str(info.value)
    assert info.value.exit_code == 3 and "\n" not in msg
    assert "no backward pass at node igamma" in msg
    assert "derivative for 'igamma: input' is not implemented" in msg


def test_node_location_reads_the_tracers_metadata() -> None:
    g = fx.Graph()
    n = g.call_function(torch.relu, (g.placeholder("x"),))
    assert node_location(n) == ""
    n.meta["nn_module_stack"] = {"a": ("body.0.lk", "pkg.PLKConv2d")}
    assert node_location(n) == " in module body.0.lk (PLKConv2d)"
    n.meta = {"module_path": "body.3"}
    assert node_location(n) == " in module body.3"
