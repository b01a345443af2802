#!/bin/bash
# How benchmarks/results/llama_cpp.json is taken on the 16-core device machine (no network there):
#   bash benchmarks/_device_llama_cpp.sh        (OUT=... for the results folder; RATIOS="4 128", BUDGET_S=470)
# Travels under .whl/: ov-stripped.tar.xz + nncf/pydot/openvino_telemetry wheels (as _device_layers.sh),
# llama.cpp-src.tar.xz (benchmarks/_llama_cpp_src.sh), and PyYAML/tqdm wheels used only if the image's
# python3 lacks them (gguf-py needs numpy, pyyaml, tqdm; the converter torch and transformers).
# llama.cpp is built in the background (CPU only, Release, GGML_NATIVE) while the slices are written and our
# exports start; benchmarks/llama_cpp.py waits for it before the first llama-quantize.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
OUT=${OUT:-/tmp/out}; LL=/tmp/llama.cpp; mkdir -p $OUT /tmp/site
T0=$(date +%s)
rm -rf $LL; tar xJf .whl/llama.cpp-src.tar.xz -C /tmp
(
  cd $LL && mkdir -p build && S=$(date +%s)
  if cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF \
       -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
       -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_COMMIT=0c1e570 -DLLAMA_BUILD_NUMBER=0 \
     && nice -n 5 cmake --build build -j16 --target llama-bench llama-quantize; then
    echo "llama.cpp built in $(( $(date +%s) - S ))s"; touch build/DONE
  else
    echo "llama.cpp build FAILED"; touch build/FAILED
  fi
) > $OUT/llama_build.log 2>&1 &
tar xJf .whl/ov-stripped.tar.xz -C /tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/nncf-*.whl .whl/pydot-*.whl .whl/openvino_telemetry-*.whl
python3 -c "import yaml, tqdm" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/[Pp]y[Yy][Aa][Mm][Ll]-*.whl .whl/tqdm-*.whl
export PYTHONPATH=/tmp/site:$PWD
lscpu | grep -E 'Model name|^CPU\(s\)'; free -g | head -2; df -h /tmp | tail -1
echo "setup $(( $(date +%s) - T0 ))s"
timeout $(( 585 - $(date +%s) + T0 )) python3 benchmarks/llama_cpp.py --llama-dir $LL --ratios ${RATIOS:-4 128} --experts 256 --workdir /tmp/lc \
  --threads 16 --repeat ${REPEAT:-3} --budget-s ${BUDGET_S:-470} --json $OUT/llama_cpp.json 2>&1 | tee $OUT/llama_cpp.log
cat $OUT/llama_build.log | tail -3; df -h /tmp | tail -1; echo "total $(( $(date +%s) - T0 ))s"
