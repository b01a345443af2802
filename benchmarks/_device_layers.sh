#!/bin/bash
# How benchmarks/results/layer_types.json was taken on the 16-core device machine (no network there):
# OpenVINO (stripped), NNCF and their small dependencies travel as files under .whl/ (see _device_mid.sh).
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p $OUT /tmp/site
tar xJf .whl/ov-stripped.tar.xz -C /tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/nncf-*.whl .whl/pydot-*.whl .whl/openvino_telemetry-*.whl
export PYTHONPATH=/tmp/site:$PWD
lscpu | grep -E 'Model name|^CPU\(s\)'; free -g | head -2; df -h /tmp | tail -1
cp benchmarks/results/v4_flash_projection.json $OUT/v4_flash_projection.json
python3 benchmarks/layer_types.py --experts 256 --ratios 4 128 0 --workdir /tmp/lt --forms --forms-s ${FORMS_S:-110} \
  --chunks ${CHUNKS:-128 512 0} --budget-s ${BUDGET_S:-540} --worker-s ${WORKER_S:-45} --json $OUT/layer_types.json --projection $OUT/v4_flash_projection.json 2>&1 | tee $OUT/layer_types.log
