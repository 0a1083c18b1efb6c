"""Shared test fixtures: tiny ONNX SR models exported once per session, small test images."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from glam.importers.torchscript.jit_builtin_ids import keep_retired_ops_alive
from PIL import Image
from torch import nn

# Before any test module is collected: torch.export and torch.jit.script share this process
# (glam.importers.torchscript.jit_builtin_ids explains the reused-id failure this prevents).
keep_retired_ops_alive()

# glam's default thread count is the CPUs free when a command starts (issue 23); the suite's
# commands use a fixed count instead (the affinity set, glam's default before), so that
# results that depend on it (LAM's float sums) do not change with the machine's load between
# two commands of one test. tests/test_progress.py tests the free-CPU default without it.
os.environ.setdefault("GLAM_THREADS", str(len(os.sched_getaffinity(0)))
                      if hasattr(os, "sched_getaffinity") else "1")

ROOT = Path(__file__).resolve().parent.parent
ASTRONAUT = ROOT / "fixtures" / "images" / "astronaut_hr.png"


class TinySR(nn.Module):
    """conv -> ReLU -> conv (+ channel attention with a 1x1-output squeeze conv) -> conv ->
    PixelShuffle x2: five taps, one of them not participating."""

    def __init__(self, channels: int = 3, feats: int = 8) -> None:
        super().__init__()
        self.head = nn.Conv2d(channels, feats, 3, padding=1)
        self.body = nn.Conv2d(feats, feats, 3, padding=1)
        self.squeeze = nn.Conv2d(feats, 2, 1)
        self.excite = nn.Conv2d(2, feats, 1)
        self.tail = nn.Conv2d(feats, channels * 4, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.relu(self.head(x))
        b = torch.relu(self.body(f))
        w = torch.sigmoid(self.excite(torch.relu(self.squeeze(b.mean(dim=(2, 3), keepdim=True)))))
        return self.shuffle(self.tail(b * w + f))


def export_onnx(module: nn.Module, path: Path, channels: int) -> Path:
    """Legacy (TorchScript-based) ONNX export with dynamic height/width."""
    module.eval()
    x = torch.rand(1, channels, 16, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (x,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {2: "h", 3: "w"}, "output": {2: "H", 3: "W"}},
        )
    return path


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with ``tiny_x2.onnx`` (RGB), ``tiny_y_x2.onnx`` (Y), ``broken.onnx``
    (corrupt) and ``unsupported.onnx`` (an operator no converter knows)."""
    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    export_onnx(TinySR(3), d / "tiny_x2.onnx", 3)
    torch.manual_seed(1)
    export_onnx(TinySR(1), d / "tiny_y_x2.onnx", 1)
    (d / "broken.onnx").write_bytes(b"\x08\x07garbage that is not a protobuf model" * 3)
    _unsupported_onnx(d / "unsupported.onnx")
    return d


def _unsupported_onnx(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((12, 3, 3, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("FancyActivation", ["c"], ["a"], domain="com.example", name="fancy"),
        helper.make_node("DepthToSpace", ["a"], ["output"], blocksize=2, mode="CRD"),
    ]
    graph = helper.make_graph(
        nodes,
        "unsupported",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, "H", "W"])],
        initializer=[w],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)],
    )
    onnx.save(model, str(path))


@pytest.fixture(scope="session")
def tiny_model(models_dir: Path) -> Path:
    """The RGB x2 test model."""
    return models_dir / "tiny_x2.onnx"


@pytest.fixture(scope="session")
def tiny_y_model(models_dir: Path) -> Path:
    """The 1-channel (Y) x2 test model."""
    return models_dir / "tiny_y_x2.onnx"


@pytest.fixture(scope="session")
def images_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small natural test images: ``a_hr.png`` (48x40 HR), ``b.png``, ``c.png`` (LR crops)."""
    d = tmp_path_factory.mktemp("images")
    src = Image.open(ASTRONAUT).convert("RGB")
    src.crop((60, 40, 100, 88)).save(d / "a_hr.png")
    src.resize((24, 20), Image.BICUBIC).save(d / "b.png")
    src.crop((100, 100, 124, 124)).save(d / "c.png")
    return d


@pytest.fixture(scope="session")
def lr_image(images_dir: Path) -> Path:
    """One LR image (24x20 pixels)."""
    return images_dir / "b.png"


@pytest.fixture(scope="session")
def hr_image(images_dir: Path) -> Path:
    """One HR image (40 wide, 48 high)."""
    return images_dir / "a_hr.png"


@pytest.fixture(scope="session")
def imported_tiny(tiny_model: Path):  # type: ignore[no-untyped-def]
    """``glam.importers.load`` of the RGB test model (loaded once)."""
    import glam.importers

    return glam.importers.load(tiny_model)


@pytest.fixture()
def cached_model_load(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """Memoise successful ``glam.importers.load`` calls per (path, options) within one test module.

    Every command under test still imports a real model file through ``glam.importers.load`` the
    first time; errors are never cached. Keeps the CLI test modules fast on a 2-core machine.
    """
    import glam.importers

    real = getattr(glam.importers.load, "__wrapped_real__", glam.importers.load)
    cache: dict[tuple, object] = request.module.__dict__.setdefault("_MODEL_CACHE", {})

    def load(path, **kw):  # type: ignore[no-untyped-def]
        key = (str(Path(path).resolve()), tuple(sorted(kw.items())))
        if key not in cache:
            cache[key] = real(path, **kw)
        return cache[key]

    load.__wrapped_real__ = real  # type: ignore[attr-defined]
    monkeypatch.setattr(glam.importers, "load", load)


# ------------------------------------------------------------------ hypothesis profiles
# "ci" (the default): a bounded, derandomised number of examples, so the suite is
# deterministic and fits CI; "thorough": many more, by hand
# (pytest tests/test_route_invariance.py --hypothesis-profile=thorough; 200 examples, or
# GLAM_HYPOTHESIS_EXAMPLES).
try:
    from hypothesis import HealthCheck, settings

    _common = dict(
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        print_blob=True,
    )
    settings.register_profile("ci", max_examples=6, derandomize=True, **_common)
    import os as _os

    settings.register_profile(
        "thorough", max_examples=int(_os.environ.get("GLAM_HYPOTHESIS_EXAMPLES", "200")), **_common
    )
    settings.load_profile("ci")
except ImportError:  # pragma: no cover - hypothesis is a dev dependency
    pass


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``slow`` tests of the hostile-input suite (``tests/hostile/``, the 30-kill campaign)
    run only with ``-m slow`` or ``GLAM_SLOW_TESTS=1``; their short variants always run."""
    import os

    if "slow" in (config.getoption("-m") or "") or os.environ.get("GLAM_SLOW_TESTS") == "1":
        return
    hostile = Path(__file__).resolve().parent / "hostile"
    skip = pytest.mark.skip(reason="slow; run with -m slow or GLAM_SLOW_TESTS=1")
    for item in items:
        if "slow" in item.keywords and hostile in Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)
