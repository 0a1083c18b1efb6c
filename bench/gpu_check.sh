#!/usr/bin/env bash
# glam's CUDA check in one run (issue 19): the GPU tests, then the benchmark, then a summary.
#
#   bash bench/gpu_check.sh                  # on the device machine: CUDA, paper-size models
#   bash bench/gpu_check.sh --device cpu     # the same steps on CPU (slow: paper-size models)
#   bash bench/gpu_check.sh --device cpu --quick   # tiny models, one size: tests the logic
#
# Writes into $OUT (a fresh temporary folder when unset): gpu_check.log (everything printed),
# env.json, pytest.xml, bench.json and gpu_check.json (the summary: tests passed/failed/
# skipped with reasons, the benchmark rows, the issue's targets with their values, and a
# Markdown table for docs/performance.md). Five files, one folder: what the device tool brings back.
#
# Wheels: packages the device machine lacks travel with the tree in .whl/ (ignored through
# .git/info/exclude, named in the run's `carry`); they are installed with --no-deps into
# /tmp/glam-site first. glam needs onnx2torch there (pure Python, a few hundred KB):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 -d .whl onnx2torch==1.5.15
# onnxruntime-gpu is far over the 64 MiB a run may carry, so ORT's CUDA provider is only
# tested where the machine has it; the test then reports a skip with the reason.
#
# Shared models: ../shared does not travel. Make an ignored link to it and carry the four
# models tests/test_gpu.py uses through it (a path through a link travels; nothing is copied
# into the repository):
#   echo /.gpu_models >> .git/info/exclude; ln -s ../shared/models .gpu_models
#   carry: .whl .gpu_models/carn_m_x4.onnx .gpu_models/fsrcnn_x2.onnx
#          .gpu_models/imdn_x4.ts.pt .gpu_models/waifu2x_upconv7_anime_x2.onnx
# The script points GLAM_SHARED_MODELS at .gpu_models when it is there.
#
# Time on the H200 (target: under 6 minutes): each step has its own limit
# (GPU_CHECK_PYTEST_S=120, GPU_CHECK_BENCH_S=210 seconds by default), and the benchmark
# writes its JSON after each row, so a step cut short still leaves its results (the 256x256
# rows come last and may be cut; rerun with GPU_CHECK_BENCH_S larger if time allows) and
# the summary is always written. Run it with the device tool's timeout_s at 600.
set -u -o pipefail

DEVICE=cuda
QUICK=0
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE="${2:?--device needs cuda or cpu}"; shift 2 ;;
        --device=*) DEVICE="${1#--device=}"; shift ;;
        --quick) QUICK=1; shift ;;
        -h|--help) sed -n '2,/^set /{/^#/p}' "$0"; exit 0 ;;
        *) echo "gpu_check: unknown argument $1 (use --device cuda|cpu, --quick)" >&2; exit 2 ;;
    esac
done
case "$DEVICE" in
    cuda|cuda:*|cpu) ;;
    *) echo "gpu_check: --device $DEVICE is not cuda or cpu" >&2; exit 2 ;;
esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
LOG="$OUT/gpu_check.log"
PYTEST_S="${GPU_CHECK_PYTEST_S:-120}"
BENCH_S="${GPU_CHECK_BENCH_S:-210}"

if [ "$QUICK" = 1 ]; then
    TESTS=(tests/test_gpu.py)
    BENCH_ARGS=(--preset small --archs rcan --sizes 12 --repeats 1 --lam-fold 2 --inline)
else
    # the files holding the gpu-marked tests (collecting all of tests/ would import
    # packages the device machine may lack, e.g. playwright)
    TESTS=(tests/test_gpu.py tests/test_engine.py)
    # RCAN first: its 64x64 row (256x256 output) carries the issue's targets
    BENCH_ARGS=(--archs rcan,carn,rrdbnet,rnan,san --sizes 64,256 --repeats 3 --lam-batch auto --no-plain-loop)
fi

run() {
    cd "$ROOT" || exit 2
    echo "gpu_check: device $DEVICE, quick $QUICK, out $OUT, $(date -u +%FT%TZ)"
    local site=/tmp/glam-site
    if compgen -G "$ROOT/.whl/*.whl" >/dev/null; then
        echo "gpu_check: installing the carried wheels: $(cd "$ROOT/.whl" && echo *.whl)"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$site" "$ROOT"/.whl/*.whl || echo "gpu_check: wheel install FAILED"
        export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    # the package glam is analyzer/, glam.importers importers/, glam.fixtures fixtures/
    # (pyproject's package-dir; an editable install here). Where glam is not installed, a
    # shim package with that search path stands in for the install.
    if ! "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('glam') is None)" 2>/dev/null; then
        local shim; shim="$(mktemp -d)"
        mkdir "$shim/glam"
        cat > "$shim/glam/__init__.py" <<SHIM
__path__ = ["$ROOT/analyzer", "$ROOT"]
exec(compile(open("$ROOT/analyzer/__init__.py").read(), "$ROOT/analyzer/__init__.py", "exec"))
SHIM
        export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}"
    fi
    if [ -d "$ROOT/.gpu_models" ] && [ -z "${GLAM_SHARED_MODELS:-}" ]; then
        export GLAM_SHARED_MODELS="$ROOT/.gpu_models"
    fi
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    "$PY" -m bench.gpu_summary env > "$OUT/env.json" || echo '{}' > "$OUT/env.json"
    cat "$OUT/env.json"

    local t0 t1 t2 rc_pytest rc_bench
    t0=$(date +%s)
    echo "gpu_check: pytest -m gpu ${TESTS[*]} (limit ${PYTEST_S}s)"
    timeout "$PYTEST_S" "$PY" -m pytest -q -m gpu -rs -p no:cacheprovider \
        --junitxml "$OUT/pytest.xml" "${TESTS[@]}"
    rc_pytest=$?
    t1=$(date +%s)
    echo "gpu_check: python -m bench --device $DEVICE ${BENCH_ARGS[*]} (limit ${BENCH_S}s)"
    timeout "$BENCH_S" "$PY" -m bench --device "$DEVICE" --no-verify "${BENCH_ARGS[@]}" \
        --json "$OUT/bench.json"
    rc_bench=$?
    t2=$(date +%s)
    "$PY" -m bench.gpu_summary summarize --out "$OUT" --device "$DEVICE" \
        --rc "pytest=$rc_pytest" --rc "bench=$rc_bench" \
        --seconds "pytest=$((t1 - t0))" --seconds "bench=$((t2 - t1))"
}

run 2>&1 | tee "$LOG"
