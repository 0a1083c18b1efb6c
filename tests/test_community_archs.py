"""Every SR / restoration architecture of spandrel's registries through glam (issue 26).

A generator over the community's architectures (``fixtures/community_archs.py``: tiny,
seeded configurations that keep each architecture's characteristic parts), each saved as a
checkpoint, re-detected by spandrel and driven through import -> ``analyze --verify`` ->
LAM (``tests/community_matrix.py``). The default suite runs :data:`DEFAULT_ARCHS`, one or
more per failure class and route, within the suite's time budget; ``GLAM_COMMUNITY_FULL=1``
runs all of them, with sanity checks (about 40 minutes on a 2-core machine).

An architecture that is not supported is not skipped silently: its entry states why, and the
test checks the statement. The failure classes of issue 26 each have a test here too: a
mixture-of-experts gate that picks another expert on a second image (run parity refuses),
an exporter-noisy import (stderr holds only glam's lines).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from community_matrix import ca, run_arch

pytest.importorskip("spandrel")

FULL = os.environ.get("GLAM_COMMUNITY_FULL") == "1"
#: the default suite's share of the matrix: each failure class of issue 26 and each route,
#: cheap to import (window transformers' dynamic exports take 15-60 s each; those run in the
#: full matrix, SwinIR and HAT in tests/test_checkpoint_import.py)
DEFAULT_ARCHS = (
    "Compact",   # plain CNN, torch.export
    "DITN",      # windows folded into the batch axis; spandrel multiple of 8 (pad-and-crop)
    "PLKSR",     # partial in-place conv (aten.copy rewritten)
    "SeemoRe",   # mixture of experts: a value-specialised trace
    "MMRealSR",  # several outputs (image + degradation estimates); x4
    "SAFMN",     # adaptive pooling: the trace specialised to sizes, symbolic_trace
    "RCAN",      # channel attention (1x1 taps that do not participate); in-place input scaling
    "DnCNN",     # restoration at x1, BatchNorm (folded normalisation)
    "MoSR",      # a 2025 architecture
)
#: architectures spandrel builds that glam refuses at import, each with the typed error and
#: the reason (the model, not glam, makes GL-AM undefined or untraceable)
REFUSED = {
    # a VQ codebook lookup (argmin) between the encoder and the decoder: no gradient reaches
    # the output from the input, and GL-AM needs one (the import's backward probe says so)
    "FeMaSR": "does not depend differentiably on its input",
    # a GigaGAN upsampler that draws noise in every forward (torch.randn_like) and calls its
    # style-modulated convolutions with a keyword the exporters cannot pass; every route fails
    "AuraSR": "cannot trace the spandrel module",
}
#: architectures that import only in part (a graph valid for some sizes), with what the
#: import records; analysed at such a size by the matrix
PARTIAL = {
    # pads inside each attention block, not at the input: no outer padding reproduces it, and
    # torch.export keeps one branch of the pad (multiples of the window only)
    "FDAT": ("input_multiple", 4),
    # spandrel's call chops the image into 12x12 patches in chunks of 64: every size takes
    # other branches (the patch count // 64), a fixed-size graph; its taps are batch-folded
    "IPT": ("fixed_size", None),
    # its multi-patch stages take int(H / 2) of sizes: every route pins one size
    "MPRNet": ("fixed_size", None),
    # torch.export's symbolic shape reasoning runs past the export budget, its forward takes
    # int(sqrt(L)) of sizes (symbolic_trace and jit.trace specialise): a fixed-size graph
    "Uformer": ("fixed_size", None),
}
ARCH_IDS = [a for a in (ca.supported_ids() if FULL else DEFAULT_ARCHS)
            if a in ca.supported_ids() and a not in REFUSED and (FULL or a not in PARTIAL)]


@pytest.mark.parametrize("arch", ARCH_IDS)
def test_architecture_imports_analyses_and_verifies(arch: str, tmp_path: Path) -> None:
    fmt = "pth" if ARCH_IDS.index(arch) % 2 else "safetensors"
    row = run_arch(arch, tmp_path, fmt=fmt, sanity=FULL)
    assert not row.error, row.error
    assert row.verify.startswith("passed"), row
    # every conv that runs and counts is tapped (one tap per call); a conv the output is not
    # computed from may be dropped by the exporter (dead code) or kept for its shape
    assert not row.untapped, row
    assert row.convs_run <= row.taps <= row.convs_run + row.dead_convs, row
    assert row.folded == row.folded_eager, row
    assert row.participating > 0 and row.parity is not None and row.parity <= 1e-4
    assert row.run_parity is not None and row.run_parity <= 1e-4
    assert row.lam.startswith("DI ")
    if arch in PARTIAL:  # what the import records for a size-limited graph
        kind, m = PARTIAL[arch]
        assert (row.specialised == "size" if kind == "fixed_size"
                else row.route.endswith(f"(multiples of {m})")), row
    else:
        assert row.specialised in ("", "values"), row
    if FULL:
        assert row.sanity == "ok", row


@pytest.mark.parametrize("arch", sorted(REFUSED) if FULL else ["FeMaSR"])
def test_refused_architectures_are_refused_with_their_reason(arch: str, tmp_path: Path) -> None:
    """A typed ConversionError (exit 3 from the CLI) naming the reason, never an unexpected
    error."""
    from glam.cli import cli

    ca.save(arch, tmp_path)
    res = CliRunner().invoke(cli, ["inspect", str(tmp_path / f"{arch}.safetensors")])
    assert res.exit_code == 3, res.output
    assert REFUSED[arch] in res.stderr and "unexpected" not in res.stderr, res.stderr


@pytest.mark.parametrize("arch", ca.unsupported_ids())
def test_unsupported_architectures_say_why(arch: str) -> None:
    """Face restoration and inpainting are out of glam's scope (it refuses them by spandrel's
    purpose); the others cannot be built small. The statement is checked where it is cheap."""
    spec = ca.ARCHS[arch]
    reason = spec.unsupported_reason or ""
    assert reason and len(reason) > 30
    kind = reason.split(":")[0]
    assert kind in {"face restoration", "inpainting", "colorization", "cannot be made small"}, reason
    if kind == "cannot be made small" and FULL:
        model = ca.build(arch, force=True)
        assert sum(p.numel() for p in model.parameters()) > 10_000_000


def _seemore(tmp_path: Path) -> Path:
    ca.save("SeemoRe", tmp_path)
    return tmp_path / "SeemoRe.safetensors"


def _routed_seemore(tmp_path: Path, first: torch.Tensor, second: torch.Tensor) -> Path:
    """A SeemoRe checkpoint whose experts' gate sends ``first`` to expert 0 and ``second`` to
    expert 1. The router scores ``W @ mean(features)`` (no bias); with ``f1``, ``f2`` the
    pooled features of the two inputs, ``u`` the part of ``f1 - f2`` orthogonal to their
    mean and ``W = [u; -u; 0...]``, ``u . f1 > 0 > u . f2``: analytic, not a search."""
    from safetensors.torch import save_file

    model = ca.build("SeemoRe")
    routers = [m for m in model.modules() if type(m).__name__ == "Router"]
    assert routers

    def pooled(x: torch.Tensor) -> list[torch.Tensor]:
        got: list[torch.Tensor] = []
        hooks = [r.register_forward_pre_hook(lambda _m, a: got.append(a[0].mean(dim=(0, 2, 3))))
                 for r in routers]
        with torch.no_grad():
            model(x.clone())
        for h in hooks:
            h.remove()
        return got

    for router, f1, f2 in zip(routers, pooled(first), pooled(second), strict=True):
        d, c = f1 - f2, (f1 + f2) / 2
        u = d - (d @ c) / (c @ c) * c
        linear = router.body[-1]
        w = torch.zeros_like(linear.weight)
        w[0], w[1] = u, -u
        linear.weight.data.copy_(w * 50)
    path = tmp_path / "SeemoRe_routed.safetensors"
    save_file({k: v.contiguous().clone() for k, v in model.state_dict().items()}, str(path))
    return path


def test_value_read_is_located_in_model_code_under_a_directory_named_glam(tmp_path: Path) -> None:
    """The model's own frame is found by the install directories of torch and glam, not by
    a ``/glam/`` substring: a checkout named ``glam`` puts that substring in the path of
    every installed architecture (CI once reported ``<frozen runpy>`` instead of
    ``seemore_arch.py``)."""
    import importlib.util

    from glam.importers.checkpoint.specialisation import eager_value_reads

    src = tmp_path / "glam" / "site-packages" / "gate_arch.py"
    src.parent.mkdir(parents=True)
    src.write_text(
        "import torch\n"
        "class Gate(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        if x.mean() > 0.5:\n"
        "            return x * 2\n"
        "        return x\n"
    )
    spec = importlib.util.spec_from_file_location("gate_arch", src)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    where = eager_value_reads(mod.Gate(), torch.rand(1, 3, 4, 4))
    assert "gate_arch.py:4 in forward" in where, where


def test_moe_gate_choosing_another_expert_is_refused_by_run_parity(tmp_path: Path) -> None:
    """SeemoRe's gate picks its experts by ``topk`` and a Python loop: every route holds the
    choice made at the probe input. An image whose gate picks another expert is refused by
    run parity, naming the cause, and nothing is archived; the probe's own image analyses."""
    import glam
    from glam.cli import cli
    from glam.errors import ParityError
    from glam.importers.probe import probe_input
    from PIL import Image

    probe = probe_input(3, 40, 36)  # what the import traces with
    other = torch.rand(1, 3, 24, 20, generator=torch.Generator().manual_seed(0)) ** 3
    path = _routed_seemore(tmp_path, probe, other)
    model = glam.load(path, input_range=1)
    assert model.metadata["specialised"] == "values"
    assert "seemore_arch.py" in model.metadata["specialised_detail"]
    assert any("holds the branch a tensor value chose" in w for w in model.warnings)
    assert glam.analyze(model, probe, keep_layers=False).run_parity.passed
    with pytest.raises(ParityError, match="data-dependent branch") as info:
        glam.analyze(model, other, keep_layers=False)
    assert "no maps are archived" in str(info.value)
    # through the CLI: exit 3, one line naming the cause, the archive never written
    img = tmp_path / "other.png"
    Image.fromarray((other[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(img)
    archive = tmp_path / "runs.h5"
    res = CliRunner().invoke(cli, ["analyze", str(path), str(img), "-o", str(archive),
                                   "--input-range", "1"])
    assert res.exit_code == 3, res.output
    assert "likely cause" in res.stderr and not archive.exists()
    # every command that analyses goes through the same check: baseline, sanity, check
    for args in (["baseline", path, img, "-o", tmp_path / "base.h5"],
                 ["sanity", path, img, "-o", tmp_path / "sanity.h5"]):
        res = CliRunner().invoke(cli, [str(a) for a in args] + ["--input-range", "1"])
        assert res.exit_code == 3 and "likely cause" in res.stderr, (args[0], res.output)
    # check: a baseline of the seeded (unrouted) SeemoRe on the image analyses; the routed
    # candidate's gate picks another expert there than at the probe, and is refused
    base = tmp_path / "base_seeded.h5"
    res = CliRunner().invoke(cli, ["baseline", str(_seemore(tmp_path)), str(img), "-o", str(base),
                                   "--input-range", "1"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["check", str(path), "--baseline", str(base),
                                   "--input-range", "1"])
    assert res.exit_code == 3 and "likely cause" in res.stderr, res.output


def test_exporter_noise_stays_off_the_terminal(tmp_path: Path) -> None:
    """torch.export prints the whole graph (hundreds of lines) when it meets SeemoRe's
    data-dependent expert choice; ``glam inspect`` shows glam's lines only, the captured
    text is in the model's metadata and, with ``--debug``, on stderr."""
    import glam
    from glam.cli import cli

    path = _seemore(tmp_path)
    res = CliRunner().invoke(cli, ["inspect", str(path)])
    assert res.exit_code == 0, res.output
    noise = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith("glam:")]
    assert not noise, noise[:5]
    model = glam.load(path)
    assert any("symbolic_shapes" in ln or "def forward" in ln for ln in model.metadata["import_log"])
    debug = CliRunner().invoke(cli, ["inspect", "--debug", str(path)])
    assert debug.exit_code == 0
    assert len(debug.stderr.splitlines()) > len(res.stderr.splitlines())
