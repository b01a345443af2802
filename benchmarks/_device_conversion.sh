#!/bin/bash
# How the conversion figures (benchmarks/results/conversion_memory.json, `conversion_*` of
# v4_flash_projection.json) are taken on the 16-core device machine (no network there): OpenVINO (stripped),
# NNCF and their small dependencies travel as files under .whl/ (see _device_mid.sh); the image's python3 has
# torch. One synthetic release-layout slice of three full-width layers (sliding + hash, CSA, HCA; 256
# experts: ~17 GB of checkpoint, ~18 GB of IR, held twice while stitching: ~55 GB of /tmp at most), exported
# once with the default int4 command and --jobs ${JOBS:-2}; a seed export gives the runtime's footprint.
# Budget: slice written in ~2-3 min, export ~3-4 min, then the quantiser against NNCF on 16 experts (<1 min);
# the timeouts keep it inside 9 minutes.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p $OUT /tmp/site
tar xJf .whl/ov-stripped.tar.xz -C /tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/nncf-*.whl .whl/pydot-*.whl .whl/openvino_telemetry-*.whl
export PYTHONPATH=/tmp/site:$PWD
python3 -c "import openvino, nncf, torch; print(openvino.__version__, nncf.__version__, torch.__version__, torch.get_num_threads())"
lscpu | grep -E 'Model name|^CPU\(s\)'; free -g | head -2; df -h /tmp | tail -1
cp benchmarks/results/v4_flash_projection.json $OUT/v4_flash_projection.json
timeout ${BUDGET_S:-520} python3 benchmarks/conversion_memory.py --experts 256 --ratios 0 4 128 --multi --formats int4 \
  --jobs ${JOBS:-2} --workdir /tmp/cm --json $OUT/conversion_memory.json --projection $OUT/v4_flash_projection.json \
  2>&1 | tee $OUT/conversion_memory.log
df -h /tmp | tail -1
rm -rf /tmp/cm
timeout 60 python3 benchmarks/quantiser_speed.py --experts 16 --json $OUT/quantiser_speed.json 2>&1 | tee $OUT/quantiser_speed.log
