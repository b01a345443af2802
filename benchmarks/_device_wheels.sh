#!/bin/bash
# Builds .whl/ (ignored by git): what the device machine (no network, python3 3.12) needs of our stack,
# small enough to travel with the working tree (64 MiB in all): OpenVINO 2026.4.1 for cp312 without its GPU/NPU
# plugins and unused frontends (ov-stripped.tar.xz, ~21 MB), NNCF, pydot, openvino-telemetry wheels.
#   bash benchmarks/_device_wheels.sh        # then name .whl in the device call's `carry`
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl && tmp=$(mktemp -d) && trap 'rm -rf "$tmp"' EXIT
pip download -q --no-deps --only-binary :all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
  openvino==2026.4.1 nncf==3.4.0 pydot==4.0.1 openvino-telemetry==2025.2.0 -d "$tmp"
mv "$tmp"/nncf-*.whl "$tmp"/pydot-*.whl "$tmp"/openvino_telemetry-*.whl .whl/
mkdir "$tmp/ov" && python3 -m zipfile -e "$tmp"/openvino-*.whl "$tmp/ov"
rm -f "$tmp"/ov/openvino/libs/libopenvino_intel_{gpu,npu}_plugin.so "$tmp"/ov/openvino/libs/cache.json \
  "$tmp"/ov/openvino/libs/libopenvino_{tensorflow,tensorflow_lite,paddle,onnx,jax,gguf}_frontend.so.*
# the Python frontends and openvino.tools (ovc: convert_model) stay: small, imported by convert_model
XZ_OPT="-T0 -4" tar cJf .whl/ov-stripped.tar.xz -C "$tmp/ov" .
ls -la .whl
