"""A generator of small SR-like networks for property-based differential tests.

:func:`build` turns a :class:`Spec` (drawn by :func:`specs`, a hypothesis strategy) into an
eval-mode ``nn.Module`` that every export route can take (``torch.jit.script`` included):
a head conv, a trunk of blocks and an upsampling tail. The block kinds cover the graph
shapes that have broken attribution engines: residual trunks and multi-consumer values,
``split`` with sizes from shape arithmetic on an activation, ``chunk`` and ``cat``,
channel attention with 1x1 squeezes (non-participating taps), in-place activations,
inference BatchNorm after a conv (GLAM.md "Folded normalisation"), depthwise convs,
dense concatenation; tails by PixelShuffle, ConvTranspose or interpolation; 1- or
3-channel inputs. Weights are seeded by the spec, so a failing example shrinks to a
minimal, reproducible graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

BLOCKS = ("residual", "split", "chunk", "attention", "batchnorm", "depthwise", "dense")
TAILS = ("pixelshuffle", "convtranspose", "interpolate")


@dataclass(frozen=True)
class Spec:
    """One generated network."""

    in_channels: int
    feats: int
    blocks: tuple[str, ...]
    tail: str
    scale: int
    inplace: bool
    seed: int

    def __str__(self) -> str:
        return (
            f"Spec(in={self.in_channels}, feats={self.feats}, blocks={list(self.blocks)}, "
            f"tail={self.tail}, x{self.scale}, inplace={self.inplace}, seed={self.seed})"
        )


def specs() -> st.SearchStrategy[Spec]:
    """Hypothesis strategy over :class:`Spec` (shrinks towards short, plain networks)."""
    return st.builds(
        Spec,
        in_channels=st.sampled_from([3, 1]),
        feats=st.sampled_from([6, 8]),
        blocks=st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=4).map(tuple),
        tail=st.sampled_from(TAILS),
        scale=st.sampled_from([2, 1, 3]),
        inplace=st.booleans(),
        seed=st.integers(min_value=0, max_value=2**16),
    )


def _act(inplace: bool) -> nn.Module:
    return nn.LeakyReLU(0.1, inplace=inplace)


class Residual(nn.Module):
    def __init__(self, c: int, inplace: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.act = _act(inplace)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act(self.conv1(x)))


class SplitBlock(nn.Module):
    """IMDN's distillation: split sizes from shape arithmetic on an activation."""

    def __init__(self, c: int, inplace: bool) -> None:
        super().__init__()
        self.d = c // 3
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.act = _act(inplace)
        self.conv2 = nn.Conv2d(c - self.d, c - self.d, 3, padding=1)
        self.fuse = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.act(self.conv1(x))
        a, b = torch.split(t, [self.d, t.shape[1] - self.d], dim=1)
        return self.fuse(torch.cat([a, self.conv2(b)], dim=1)) + x


class ChunkBlock(nn.Module):
    def __init__(self, c: int, inplace: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c // 2, c // 2, 3, padding=1)
        self.act = _act(inplace)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.chunk(self.conv1(x), 2, dim=1)
        return torch.cat([self.act(self.conv2(a)), b], dim=1) + x


class Attention(nn.Module):
    """RCAN-style channel attention: 1x1 squeeze/excite convs on a 1x1 map."""

    def __init__(self, c: int, inplace: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.squeeze = nn.Conv2d(c, 2, 1)
        self.act = nn.ReLU(inplace=inplace)
        self.excite = nn.Conv2d(2, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.conv(x)
        w = torch.sigmoid(self.excite(self.act(self.squeeze(f.mean(dim=(2, 3), keepdim=True)))))
        return x + f * w


class BatchNormBlock(nn.Module):
    def __init__(self, c: int, inplace: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.act = nn.ReLU(inplace=inplace)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x))) + x


class Depthwise(nn.Module):
    def __init__(self, c: int, inplace: bool) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.act = _act(inplace)
        self.pw = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.act(self.dw(x)))


class Dense(nn.Module):
    """A value read by three consumers, concatenated (RRDB's dense connections)."""

    def __init__(self, c: int, inplace: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.act = _act(inplace)
        self.conv2 = nn.Conv2d(2 * c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act(self.conv1(x))
        return self.conv2(torch.cat([x, a], dim=1)) * 0.5 + x


_BLOCK_CLASSES: dict[str, type[nn.Module]] = {
    "residual": Residual,
    "split": SplitBlock,
    "chunk": ChunkBlock,
    "attention": Attention,
    "batchnorm": BatchNormBlock,
    "depthwise": Depthwise,
    "dense": Dense,
}


class Interpolate(nn.Module):
    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.scale, mode="nearest")


class Net(nn.Module):
    """Head conv, trunk of blocks with a global skip, tail to ``out_channels``."""

    def __init__(self, spec: Spec) -> None:
        super().__init__()
        c, s, out = spec.feats, spec.scale, spec.in_channels
        self.head = nn.Conv2d(spec.in_channels, c, 3, padding=1)
        self.trunk = nn.Sequential(*[_BLOCK_CLASSES[b](c, spec.inplace) for b in spec.blocks])
        if spec.tail == "pixelshuffle":
            self.tail = nn.Sequential(nn.Conv2d(c, out * s * s, 3, padding=1), nn.PixelShuffle(s))
        elif spec.tail == "convtranspose":
            k, p = (s, 0) if s > 1 else (3, 1)
            self.tail = nn.Sequential(
                nn.ConvTranspose2d(c, c, kernel_size=k, stride=s, padding=p),
                nn.Conv2d(c, out, 3, padding=1),
            )
        else:
            self.tail = nn.Sequential(Interpolate(s), nn.Conv2d(c, out, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(x)
        return self.tail(self.trunk(h) + h)


def build(spec: Spec) -> nn.Module:
    """The eval-mode network of ``spec``, seeded weights and BatchNorm statistics."""
    gen = torch.Generator().manual_seed(spec.seed)
    torch.manual_seed(spec.seed)
    net = Net(spec)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=gen) * 0.4 - 0.2)
    return net.eval()


def example(spec: Spec, size: tuple[int, int] = (14, 12), seed: int = 0) -> torch.Tensor:
    """A seeded, smooth-ish input in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, spec.in_channels, size[0] // 2, size[1] // 2, generator=g)
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return (x + 0.2 * torch.rand(1, spec.in_channels, *size, generator=g)).clamp(0, 1)
