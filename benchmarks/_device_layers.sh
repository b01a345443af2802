#!/bin/bash
# Issue 18's full-width measurements on the 16-core device machine (no network there). What travels: .whl/ from
# benchmarks/_device_wheels.sh (OpenVINO stripped, NNCF, pydot, telemetry) and .whl/llama.cpp-src.tar.xz from
# benchmarks/_llama_cpp_src.sh. Three calls of <= 10 minutes on one warm machine (each starts within the
# machine's 30 s warm period of the last, so /tmp is kept):
#   OUT=... bash benchmarks/_device_llama_cpp.sh    # 1: llama.cpp beside our CSA and HCA 1-layer slices
#   OUT=... bash benchmarks/_device_layers.sh measure  # 2: every layer type (SWA exported here, CSA/HCA reused
#                                                      #    from call 1), decode at 256 and 4,096 tokens, prefill,
#                                                      #    verify, memory, steady-state profiles, projection
#   OUT=... bash benchmarks/_device_layers.sh forms    # 3: the forms (MoE and head alternatives) at full width
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p $OUT /tmp/site /tmp/lt
if [ ! -d /tmp/site/openvino ]; then
  tar xJf .whl/ov-stripped.tar.xz -C /tmp/site
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/nncf-*.whl .whl/pydot-*.whl .whl/openvino_telemetry-*.whl
fi
export PYTHONPATH=/tmp/site:$PWD
lscpu | grep -E 'Model name|^CPU\(s\)'; free -g | head -2; df -h /tmp | tail -1
cp benchmarks/results/v4_flash_projection.json $OUT/v4_flash_projection.json
case "$1" in
measure)
  for r in 4 128; do  # call 1's 1-layer exports (benchmarks/llama_cpp.py) are layer_types' slices
    ir=/tmp/lc/slice-r$r-$r-e256-L1-int4
    if [ -f $ir/openvino_model.xml ] && [ ! -e /tmp/lt/slice-r$r-e256-int4 ]; then
      ln -s $ir /tmp/lt/slice-r$r-e256-int4
      echo "{\"exported_by\": \"benchmarks/llama_cpp.py (1-layer view of a 2-layer slice)\", \"ir\": \"$ir\"}" \
        > /tmp/lt/slice-r$r-e256-int4.export.json
    fi
  done
  python3 benchmarks/layer_types.py --experts 256 --ratios 4 128 0 --workdir /tmp/lt --chunks ${CHUNKS:-128 512} \
    --variants ${VARIANTS:-f32+snippets} --budget-s ${BUDGET_S:-560} --worker-s ${WORKER_S:-90} \
    --json $OUT/layer_types.json --projection $OUT/v4_flash_projection.json 2>&1 | tee $OUT/layer_types.log ;;
forms)
  python3 benchmarks/layer_types.py --experts 256 --ratios --workdir /tmp/lt --forms --forms-s ${FORMS_S:-300} \
    --variants --json $OUT/layer_types-forms.json 2>&1 | tee $OUT/layer_types-forms.log ;;
*) echo "usage: $0 measure|forms"; exit 2 ;;
esac
