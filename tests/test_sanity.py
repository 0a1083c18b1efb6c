"""``glam sanity`` (issue 18): similarity measures against known values, analytic models
(ignored input, identity-like deletion curve, randomization), determinism, the archive's
``sanity`` group, the HTML report section and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import glam
import glam.importers
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from glam.archive.hdf5 import open_archive
from glam.errors import AnalysisError
from glam.sanity_checks import faithfulness as faith
from glam.sanity_checks.randomize import conv_parameters, randomized, tap_blocks
from glam.sanity_checks.similarity import average_ranks, spearman, ssim, topk_overlap
from numerics import EPS64, assert_close
from torch import nn

from tests.conftest import TinySR

#: Two float64 evaluations of one statistic (ours, scipy, a closed form), in float64
#: epsilons of the statistic's scale (correlations: 1): measured 0.5 (Spearman against
#: scipy), x4, rounded up, at least 8 (tests/numerics.py).
ULPS_F64 = 8
#: SSIM filters each statistic with 121 Gaussian weights and combines them in a quotient:
#: measured 644 (flat images against the closed form), 0.5 against scikit-image.
ULPS_SSIM = 4096
#: Deletion / insertion curves at two batch sizes, float32 epsilons of the curve (~1):
#: measured 0 (bit-identical) on every instruction set; the floor of 8.
ULPS_BATCH = 8


def _f64(a: float, b: float, ulps: float = ULPS_F64, label: str = "") -> None:
    assert_close([a], [b], ulps=ulps, scale=max(1.0, abs(b)), eps=EPS64, err_msg=label)


FAST = {"lam_fold": 4, "n_random": 2, "blocks": 3, "max_fraction": 0.2, "step": 0.05}


# ------------------------------------------------------------------------ similarity


def test_spearman_average_ranks_known_case() -> None:
    assert average_ranks(np.array([3.0, 1.0, 2.0, 2.0])).tolist() == [4.0, 1.0, 2.5, 2.5]
    # by hand: ranks (1, 2.5, 2.5, 4) and (1, 3, 2, 4): r = 4.5 / sqrt(4.5 * 5)
    _f64(spearman(np.array([1, 2, 2, 3]), np.array([1, 3, 2, 4])), 4.5 / np.sqrt(22.5))
    a = np.random.default_rng(0).random((9, 9))
    _f64(spearman(a, a**3), 1.0)  # monotone: rank correlation 1
    _f64(spearman(a, -a), -1.0)
    assert spearman(np.zeros((3, 3)), a[:3, :3]) == 0.0  # a constant map has no ranking
    assert spearman(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0
    with pytest.raises(AnalysisError, match="same size"):
        spearman(a, a[:3])


def test_ssim_constants_and_identity() -> None:
    a = np.random.default_rng(1).random((24, 20))
    _f64(ssim(a, a), 1.0)
    # flat images: the structure term is C2/C2 = 1, SSIM = luminance term (Wang et al. eq. 13)
    c1 = (0.01 * 1.0) ** 2
    s = ssim(np.full((16, 16), 0.2), np.full((16, 16), 0.6), scale=False)
    _f64(s, (2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1), ULPS_SSIM, "flat images")
    noisy = a + 0.3 * np.random.default_rng(2).standard_normal(a.shape)
    assert 0.0 < ssim(a, noisy) < 0.9
    _f64(ssim(a, noisy), ssim(noisy, a))  # the same sums, operands swapped
    with pytest.raises(AnalysisError, match="window"):
        ssim(a[:8, :8], a[:8, :8])


def test_topk_overlap() -> None:
    a = np.arange(100.0).reshape(10, 10)
    assert topk_overlap(a, a, 0.1) == 1.0
    assert topk_overlap(a, -a, 0.1) == 0.0
    b = a.copy()
    b.ravel()[-5:] = 0  # 5 of the 10 top pixels lost
    assert topk_overlap(a, b, 0.1) == 0.5


# --------------------------------------------------------------------- analytic models


class HalfBlind(nn.Module):
    """Zeroes the input's columns 8.. before two convolutions (no biases) and a x2 shuffle:
    the output ignores them."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.c2 = nn.Conv2d(8, 12, 3, padding=1, bias=False)
        self.up = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x[..., :8], x[..., 8:] * 0.0], dim=-1)
        return self.up(self.c2(torch.relu(self.c1(x))))


class Nearest2(nn.Module):
    """Nearest-neighbour x2 upscaling as a 1x1 conv and a pixel shuffle."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 12, 1, bias=False)
        w = torch.zeros(12, 3, 1, 1)
        for c in range(3):
            w[4 * c : 4 * c + 4, c] = 1.0
        self.c.weight.data.copy_(w)
        self.up = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.c(x))


@pytest.fixture(scope="module")
def tiny() -> glam.importers.ImportedModel:
    torch.manual_seed(0)
    return glam.importers.from_module(TinySR().eval())


def test_ignored_input_gets_no_mass() -> None:
    torch.manual_seed(0)
    model = glam.importers.from_module(HalfBlind().eval())
    x = torch.rand(1, 3, 16, 24)
    res = glam.sanity(model, x, roi=(12, 8), window=8, variants=(), **FAST)
    # LR columns >= 8 are multiplied by 0: input-level maps are exactly 0 there
    assert res.saliency[:, 8:].max() == 0.0 and res.saliency[:, :8].max() == 1.0
    assert res.result.lam.map[:, 8:].max() == 0.0
    # the GL-AM maps at output size: beyond the receptive field of the unmasked pixels
    # (two 3x3 convs: LR column 10, x2, plus the bicubic resize's 2-pixel reach) they are 0
    for m in (res.result.local["sum"], res.result.global_["sum"]):
        assert m[:, 26:].max() == 0.0 and m[:, :16].max() > 0.1  # resize weights there are 0


@pytest.mark.numerics
def test_identity_like_model_deletion_is_linear() -> None:
    model = glam.importers.from_module(Nearest2().eval())
    x = torch.zeros(1, 3, 48, 48)
    x[..., 1::3, 1::3] = 1.0  # 256 isolated spikes: each adds the same texture
    base = torch.zeros_like(x)
    roi, window = (0, 0), 95  # T_ROI over the whole output
    rng = np.random.default_rng(0)
    dele, ins = [], []
    for _ in range(5):
        d, i = faith.curves(model, x, rng.permutation(48 * 48), roi, window, base, batch=16)
        dele.append(d.values)
        ins.append(i.values)
    f = d.fractions
    # not float tolerances: the last step is rounded to whole pixels of 2304, and 5 random
    # orders average to the straight line only to about 0.05
    assert f[0] == 0.0 and f[-1] == pytest.approx(0.5, abs=1e-3) and len(f) == 51
    assert np.abs(np.mean(dele, axis=0) - (1 - f)).max() < 0.05
    assert np.abs(np.mean(ins, axis=0) - f).max() < 0.05
    _f64(faith.auc(f, 1 - f), 1 - f[-1] / 2, label="auc")  # a trapezoid is exact on a line
    # batching over steps changes nothing
    order = np.random.default_rng(1).permutation(48 * 48)
    d5, i5 = faith.curves(model, x, order, roi, window, base, batch=5)
    d51, i51 = faith.curves(model, x, order, roi, window, base, batch=51)
    # other batch sizes run other convolution kernels: float32 rounding of T_ROI ratios (~1)
    assert_close(d5.values, d51.values, ulps=ULPS_BATCH, scale=1.0, err_msg="deletion")
    assert_close(i5.values, i51.values, ulps=ULPS_BATCH, scale=1.0, err_msg="insertion")
    assert d5.values[0] == 1.0  # T_ROI(x) / T_ROI(x)
    # not a float tolerance: T_ROI of the all-zero baseline is sqrt(1e-12) per pixel
    assert i5.values[0] == pytest.approx(0.0, abs=1e-4)


def test_randomization_restores_weights_and_blocks(tiny: glam.importers.ImportedModel) -> None:
    x = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    y0 = tiny(x)[0].detach().clone()
    params = conv_parameters(tiny)
    assert len(params) == tiny.n_taps and all(params)
    with pytest.raises(RuntimeError, match="boom"), randomized(tiny, [0, 4], seed=1):
        assert not torch.allclose(tiny(x)[0], y0)
        raise RuntimeError("boom")
    assert torch.equal(tiny(x)[0], y0)  # restored, also after the error
    assert tap_blocks(5, 2) == [[0, 1, 2], [3, 4]] or tap_blocks(5, 2) == [[0, 1], [2, 3, 4]]
    assert tap_blocks(5, None) == [[0], [1], [2], [3], [4]]
    with pytest.raises(AnalysisError):
        tap_blocks(5, 0)


def test_randomized_model_drops_correlation_and_is_deterministic(
    tiny: glam.importers.ImportedModel,
) -> None:
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    kw = dict(FAST, methods=("local", "global", "saliency"), blocks=None)
    a = glam.sanity(tiny, x, **kw)
    b = glam.sanity(tiny, x, **kw)
    ra, rb = a.record.randomization, b.record.randomization
    for v in ("cascading", "independent"):
        for m in ("local", "global", "saliency"):
            for metric in ("spearman", "ssim", "topk"):
                assert np.array_equal(ra[v].similarity[m][metric], rb[v].similarity[m][metric])
    assert a.summary()["faithfulness"] == b.summary()["faithfulness"]
    casc = ra["cascading"]
    assert casc.taps_randomized.tolist() == [1, 2, 3, 4, 5]
    assert casc.block_start.tolist() == [4, 3, 2, 1, 0]  # from the output end
    # with every conv re-initialised, the global map no longer matches the trained one
    assert casc.similarity["global"]["spearman"][-1] < 0.5
    assert casc.first_below("global") >= 0
    # ... and a different seed gives different random weights
    c = glam.sanity(tiny, x, **dict(kw, seed=1, variants=("cascading",)))
    assert not np.array_equal(c.record.randomization["cascading"].similarity["global"]["spearman"],
                              casc.similarity["global"]["spearman"])
    ind = a.record.indicators
    assert 0 <= ind["erf_r50"] <= ind["erf_r90"]
    assert 0 < ind["textured_fraction"] < 1
    assert len(a.record.layers["layer_di_local"]) == sum(t.participating for t in tiny.taps)


def test_sanity_rejects_bad_arguments(tiny: glam.importers.ImportedModel) -> None:
    x = torch.rand(1, 3, 12, 12)
    with pytest.raises(AnalysisError, match="unknown sanity method"):
        glam.sanity(tiny, x, methods=("local", "gradcam"))
    with pytest.raises(AnalysisError, match="variant"):
        glam.sanity(tiny, x, variants=("sideways",))
    with pytest.raises(AnalysisError, match="baseline"):
        faith.baseline_image(x, "noise")


# ------------------------------------------------------------------- archive, report, CLI


def test_cli_sanity_archive_report_json(tiny_model: Path, lr_image: Path, tmp_path: Path) -> None:
    from glam.cli import cli

    out, fig = tmp_path / "s.h5", tmp_path / "s.png"
    args = ["sanity", str(tiny_model), str(lr_image), "-o", str(out), "--blocks", "2",
            "--lam-fold", "4", "--figure", str(fig), "--run", "r"]
    res = CliRunner().invoke(cli, [*args, "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert set(summary["faithfulness"]) == {"local", "lam", "saliency", "random"}
    assert summary["randomization"]["cascading"]["steps"] == 2
    assert fig.is_file() and fig.stat().st_size > 5000
    with open_archive(out) as ar:
        assert ar.runs() == ["r"]
        rec = ar.sanity("r")
        assert ar.verify_run("r") > 0
    assert rec is not None and rec.n_taps == 5
    assert rec.auc("local", "deletion") == summary["faithfulness"]["local"]["deletion_auc"]
    assert len(rec.fractions) == 51
    # the run exists now: a second run of the same name is refused before the work (exit 2)
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 2 and "already exists" in res.stderr
    res = CliRunner().invoke(cli, [*args[:-2], "--run", "q", "--methods", "local,nope"],
                             catch_exceptions=False)
    assert res.exit_code == 2 and "unknown sanity method" in res.stderr
    html = tmp_path / "r.html"
    assert CliRunner().invoke(cli, ["report", str(out), "-o", str(html)]).exit_code == 0
    page = html.read_text()
    assert 'data-section="sanity"' in page and "deletion AUC" in page


def test_cli_sanity_refuses_bad_options_before_the_model_load(tmp_path: Path,
                                                              lr_image: Path) -> None:
    from glam.cli import cli

    missing_model = tmp_path / "absent.onnx"  # never loaded: the options fail first
    for extra, msg in ((["--crop", "1"], "--crop 1"), (["--lam-fold", "0"], "--lam-fold 0"),
                       (["--methods", "local,gradcam"], "unknown sanity method"),
                       (["--variants", "sideways"], "unknown randomization variant"),
                       (["--topk", "0"], "--topk 0"), (["--n-random", "0"], "--n-random 0"),
                       (["--step", "0.6"], "steps of 0.6 up to 0.5"),
                       (["--curve-batch", "0"], "--curve-batch 0"),
                       (["--lam-batch", "0"], "--lam-batch 0")):
        res = CliRunner().invoke(cli, ["sanity", str(missing_model), str(lr_image), "-o",
                                       str(tmp_path / "s.h5"), *extra], catch_exceptions=False)
        assert res.exit_code == 2 and msg in res.stderr, (extra, res.stderr)
    assert not (tmp_path / "s.h5").exists()


@pytest.mark.numerics
def test_cli_sanity_settings_reach_the_record(tiny_model: Path, lr_image: Path,
                                              tmp_path: Path) -> None:
    """The curve, top-k and randomization settings are CLI options, recorded in sanity/."""
    from glam.cli import cli

    out = tmp_path / "s.h5"
    res = CliRunner().invoke(cli, [
        "sanity", str(tiny_model), str(lr_image), "-o", str(out), "--run", "r", "--json",
        "--blocks", "2", "--methods", "local,saliency", "--variants", "cascading",
        "--topk", "0.1", "--step", "0.05", "--max-fraction", "0.3", "--n-random", "2",
        "--curve-batch", "3", "--lam-batch", "2"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert set(summary["randomization"]) == {"cascading"}
    with open_archive(out) as ar:
        rec = ar.sanity("r")
    assert rec is not None
    assert_close(rec.fractions, np.arange(7) * 0.05, ulps=ULPS_F64, eps=EPS64)
    s = rec.settings
    assert (s["topk"], s["step"], s["max_fraction"], s["n_random"]) == (0.1, 0.05, 0.3, 2)
    assert list(s["variants"]) == ["cascading"]


# --------------------------------------------- differential: scipy and scikit-image


def test_spearman_equals_scipy_with_ties() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(7)
    for _ in range(20):
        a = rng.integers(0, 6, size=(9, 11)).astype(np.float64)  # many ties
        b = a + rng.normal(0, 2.0, size=a.shape)
        b[rng.random(b.shape) < 0.3] = 0.0  # ties in the other map too
        ref = stats.spearmanr(a.ravel(), b.ravel()).statistic
        _f64(spearman(a, b), ref, label="spearman vs scipy")


def test_ssim_equals_scikit_image_gaussian_ssim() -> None:
    """Wang et al.'s settings in scikit-image: Gaussian weights (sigma 1.5, 11x11 window),
    population covariance, L = 1, mean over the windows inside the image."""
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(11)
    for shape in ((32, 32), (24, 40)):
        a = rng.random(shape)
        b = np.clip(a + rng.normal(0, 0.2, size=shape), 0, 1)
        ref = metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
                                            use_sample_covariance=False, data_range=1.0)
        _f64(ssim(a, b, scale=False), ref, ULPS_SSIM, label="ssim vs scikit-image")


# ------------------------------------------------- a real pretrained model (../shared)

SHARED = Path(__file__).resolve().parents[2] / "shared"
CARN_M = SHARED / "models" / "carn_m_x4.onnx"
URBAN = SHARED / "data" / "Urban100" / "image_SRF_4" / "img_001_SRF_4_LR.png"


@pytest.mark.shared
@pytest.mark.skipif(not (CARN_M.is_file() and URBAN.is_file()),
                    reason="no ../shared CARN-M x4 model or Urban100 image")
def test_sanity_on_pretrained_carn_m_matches_the_readme_table(tmp_path: Path) -> None:
    """docs/sanity.md's finding on CARN-M x4 / Urban100 img_001 (reduced settings: 24x24 LR crop,
    3 blocks, LAM fold 4, 5 % steps): the real orderings beat random deletion and insertion
    by a wide margin, the global Sum decorrelates once every tap is random, the local Sum
    does not."""
    from glam.sanity_checks.runner import SanityOptions, run_sanity

    model = glam.importers.load(CARN_M)
    opts = SanityOptions(crop=24, blocks=3, lam_fold=4, seed=0, device="cpu", step=0.05,
                         n_random=3, variants=("cascading",))
    res = run_sanity(model, URBAN, tmp_path / "s.h5", "carn", opts)
    s = res.summary()
    f = s["faithfulness"]
    for m in ("local", "lam", "saliency"):
        assert f[m]["deletion_auc"] < f["random"]["deletion_auc"] - 0.2, (m, f)
        assert f[m]["insertion_auc"] > f["random"]["insertion_auc"] + 0.1, (m, f)
    cascade = s["randomization"]["cascading"]["methods"]
    assert cascade["global"]["spearman"]["taps_randomized"] == model.n_taps
    assert cascade["local"]["spearman"]["taps_randomized"] is None
    assert cascade["local"]["spearman"]["final"] > 0.8


@torch.fx.wrap
def _only_batch_one(x: torch.Tensor) -> torch.Tensor:
    if x.shape[0] != 1:  # a graph traced at batch 1 (torch.export's x.size()[0] == 1 guard)
        raise RuntimeError("the input violates the exported program's shape constraints")
    return x


class _Batch1SR(nn.Module):
    """An SR net traced at batch 1: ``mixes`` adds ``y[0] - mean(y)`` over the batch (zero
    for one image, another image's values for several: a window reshape with batch 1 baked
    in), ``refuses`` raises on a batch (a guard)."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.mode = mode
        self.conv = nn.Conv2d(3, 12, 3, padding=1)
        self.conv.weight.data = torch.randn(self.conv.weight.shape, generator=g) * 0.3
        self.up = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x if self.mode == "mixes" else _only_batch_one(x))
        if self.mode == "mixes":
            y = y + (y[0:1] - y.mean(dim=0, keepdim=True))
        return self.up(y)


@pytest.mark.parametrize("mode", ["mixes", "refuses"])
def test_curves_of_a_batch_1_graph_are_taken_image_by_image(mode: str) -> None:
    """Deletion / insertion batch their steps; a graph traced at batch 1 (10 of 12 community
    architectures in the sanity matrix: window reshapes, batch guards) refused the batch
    (ModelError) or would mix its images. Such a model is run image by image: the curves are
    the batch-1 curves, bit for bit (the same calls)."""
    model = glam.importers.from_module(_Batch1SR(mode).eval())
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    base = faith.baseline_image(x)
    order = np.random.default_rng(2).permutation(16 * 16)
    assert not faith.runs_batched(model, torch.cat([x, x.flip(-1), 0.5 * x]))
    d8, i8 = faith.curves(model, x, order, (4, 4), 16, base, batch=8)
    d1, i1 = faith.curves(model, x, order, (4, 4), 16, base, batch=1)
    np.testing.assert_array_equal(d8.values, d1.values)
    np.testing.assert_array_equal(i8.values, i1.values)
