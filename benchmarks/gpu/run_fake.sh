#!/usr/bin/env bash
# Runs check.sh end to end against the fake NVML library (tests/fakes/fake_nvml.c) on a
# machine without a GPU, to prove the check works. Output is labelled FAKE throughout.
#
# How to run (from the repository root, greenml installed, a C compiler on PATH; ~2 min):
#     benchmarks/gpu/run_fake.sh benchmarks/results/gpu-fake [--quick]
set -u
[ $# -ge 1 ] || { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
OUTDIR="$1"; shift
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-python3}"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/greenml-fake-nvml.XXXXXX")" || exit 1
trap 'rm -rf "$TMP"' EXIT
"$PY" "$HERE/fake_nvml_setup.py" "$TMP" >"$TMP/env.sh" || exit 1
# shellcheck disable=SC1091
. "$TMP/env.sh"
export GREENML_NVML_LIBRARY FAKE_NVML_DIR
# The fake's GPUs are different models: greenml's gpu:<i> follows CUDA's numbering, which by
# default puts the fastest first; in PCI bus order every section finds the fake's GPU 0 as gpu:0.
export CUDA_DEVICE_ORDER=PCI_BUS_ID
# Only the fake GPUs: no RAPL or CPU model in greenml's sensors list noise.
"$HERE/check.sh" --no-install "$@" "$OUTDIR"
