#!/bin/bash
# How the `mid` figures were taken on the 16-core device machine (no network there): OpenVINO (stripped of
# GPU/NPU plugins and unused frontends), NNCF and transformers 5.23 travel as files under .whl/; the image's
# python3 has torch 2.11 and transformers 5.17 (which the port runs with). Phase 1: export int4, the
# runtimes rows, the bandwidth bound. Phase 2: int8 + prefill-only rows.
set -x
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
OUT=${OUT:-/tmp/out}; W=/tmp/b; mkdir -p $OUT $W
if [ ! -d /tmp/site/openvino ]; then
  mkdir -p /tmp/site /tmp/site-ref
  tar xJf .whl/ov-stripped.tar.xz -C /tmp/site
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/nncf-*.whl .whl/pydot-*.whl .whl/openvino_telemetry-*.whl
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site-ref .whl/transformers-5.23*.whl
fi
export PYTHONPATH=/tmp/site:$PWD
python3 -c "import openvino, nncf, torch, transformers, numpy; print(openvino.__version__, nncf.__version__, torch.__version__, transformers.__version__, numpy.__version__)"
lscpu | head -20; free -g
REF="env PYTHONPATH=/tmp/site-ref python3"
if [ "$1" = 1 ]; then
  python3 benchmarks/export_cost.py --preset mid --toy-format bf16 --formats int4 --kinds stateful --keep --workdir $W --json $OUT/export_cost-mid.json 2>&1 | tee $OUT/export_cost-mid.log
  python3 benchmarks/bandwidth.py --ir $W/mid-bf16-ov-int4 --gib 4 --hints default f32 --json $OUT/bandwidth-mid.json 2>&1 | tee $OUT/bandwidth-mid.log
  python3 benchmarks/runtimes.py --preset mid --toy-format bf16 --formats int4 --prefill-formats --workdir $W --ref-cmd "$REF" --json $OUT/runtimes-mid.json 2>&1 | tee $OUT/runtimes-mid.log
else
  python3 -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; from _common import ensure_toy; ensure_toy(Path('$W'), 'mid', 'bf16')"
  python3 benchmarks/export_cost.py --preset mid --toy-format bf16 --formats int4 --kinds stateful --keep --workdir $W > $OUT/x-int4.log 2>&1 &
  python3 benchmarks/export_cost.py --preset mid --toy-format bf16 --formats int4 --kinds prefill-only --keep --workdir $W > $OUT/x-int4p.log 2>&1 &
  python3 benchmarks/export_cost.py --preset mid --toy-format bf16 --formats int8 --kinds stateful --keep --workdir $W > $OUT/x-int8.log 2>&1 &
  wait; tail -3 $OUT/x-*.log
  timeout 330 python3 benchmarks/runtimes.py --preset mid --toy-format bf16 --formats int4 int8 --prefill-formats int4 --prefill-hints default --prefill-new 4 --repeats 2 --skip native --workdir $W --json $OUT/runtimes-mid-2.json 2>&1 | tee $OUT/runtimes-mid-2.log
  python3 benchmarks/bandwidth.py --ir $W/mid-bf16-ov-int4 --gib 4 --runtimes-json $OUT/runtimes-mid-2.json --json $OUT/bandwidth-mid.json 2>&1 | tee $OUT/bandwidth-mid.log
fi
