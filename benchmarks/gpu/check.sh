#!/usr/bin/env bash
# greenml GPU check: build + install greenml from this checkout, then measure NVML and greenml
# on this machine's GPU (no network needed). Writes results.json, sensors.txt, summary.txt,
# check.log (and install.log) into OUTDIR, and the power-limit sweep into OUTDIR/powercap/.
#
# How to run (from anywhere; ~5 minutes, --quick ~2.5; the power-limit sweep needs root):
#     benchmarks/gpu/check.sh OUTDIR                 # pip install --no-build-isolation --no-deps .
#     benchmarks/gpu/check.sh --no-install OUTDIR    # greenml already installed
#     benchmarks/gpu/check.sh --quick OUTDIR         # shorter runs
#     benchmarks/gpu/check.sh --gpu 1 OUTDIR         # load CUDA device 1 (default 0)
# Environment: PYTHON (interpreter, default python3), GREENML_NVML_LIBRARY (default
# libnvidia-ml.so.1). Against the fake NVML library (no GPU): benchmarks/gpu/run_fake.sh.
set -u

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

INSTALL=1
PASS=()
OUTDIR=""
while [ $# -gt 0 ]; do
  case "$1" in
    --no-install) INSTALL=0 ;;
    --quick) PASS+=("--quick") ;;
    --gpu) shift; [ $# -gt 0 ] || usage; PASS+=("--gpu" "$1") ;;
    -h|--help) usage ;;
    -*) echo "check.sh: unknown option $1" >&2; usage ;;
    *) [ -z "$OUTDIR" ] || usage; OUTDIR="$1" ;;
  esac
  shift
done
[ -n "$OUTDIR" ] || usage

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${PYTHON:-python3}"
mkdir -p "$OUTDIR" || exit 1
OUTDIR="$(cd "$OUTDIR" && pwd)"

if [ "$INSTALL" = 1 ]; then
  echo "installing greenml from $REPO with $PY (log: $OUTDIR/install.log) ..."
  if ! (cd "$REPO" && "$PY" -m pip install --no-build-isolation --no-deps .) \
      >"$OUTDIR/install.log" 2>&1; then
    echo "check.sh: installing greenml failed; the end of $OUTDIR/install.log:" >&2
    tail -n 30 "$OUTDIR/install.log" >&2
    echo "(the build needs a C++17 compiler, cmake, scikit-build-core and pybind11 already" \
         "installed, since there is no network; or install greenml yourself and pass" \
         "--no-install)" >&2
    exit 1
  fi
fi

# Run from OUTDIR so the checkout's python/ directory cannot shadow the installed package.
cd "$OUTDIR" || exit 1
"$PY" -c "import greenml, sys; print('greenml', greenml.__version__, 'from', greenml.__file__)" \
  || { echo "check.sh: greenml is not importable with $PY" >&2; exit 1; }
"$PY" -u "$REPO/benchmarks/gpu/check.py" "$OUTDIR" ${PASS[@]+"${PASS[@]}"} 2>&1 \
  | tee "$OUTDIR/check.log"
exit "${PIPESTATUS[0]}"
