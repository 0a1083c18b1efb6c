"""The import pass that makes hard-coded ``device=`` arguments follow the input's device."""

from __future__ import annotations

import glam.importers
import torch
from glam.importers.device_pass import constant_devices, follow_input_device
from torch import fx, nn


class MaskNet(nn.Module):
    """Builds a tensor on a hard-coded device, as exported attention masks do."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = torch.ones(1, 1, x.shape[2], x.shape[3], device=torch.device("cpu"))
        zero = torch.zeros(1, 1, x.shape[2], 1, device="cpu")
        return self.shuffle(self.conv(x) * mask + zero)


def test_constant_device_arguments_follow_the_input() -> None:
    torch.manual_seed(0)
    net = MaskNet().eval()
    gm = fx.symbolic_trace(net)
    assert len(constant_devices(gm)) == 2
    assert follow_input_device(gm) == 2
    assert constant_devices(gm) == [] and follow_input_device(gm) == 0
    x = torch.rand(1, 3, 10, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(gm(x), net(x))  # the same operators: bit for bit
        gm.to("meta")
        y = gm(x.to("meta"))  # with the constant 'cpu' it fails: a device mismatch
    assert y.device.type == "meta" and y.shape == (1, 3, 20, 24)


def test_imported_model_moves_to_another_device() -> None:
    """``ImportedModel.to(dev)`` is enough: the import ran the pass."""
    torch.manual_seed(0)
    m = glam.importers.from_module(MaskNet().eval())
    assert m.metadata["device_args_rewritten"] == 2
    y, taps = m.to("meta")(torch.rand(1, 3, 8, 8).to("meta"))
    assert y.device.type == "meta" and taps[0].device.type == "meta"
