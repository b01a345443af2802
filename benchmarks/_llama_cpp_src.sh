#!/bin/bash
# A stripped llama.cpp source tarball for benchmarks/llama_cpp.py on the device machine (no network there;
# everything that travels must fit 64 MiB with OpenVINO's ~21 MB):
#
#   bash benchmarks/_llama_cpp_src.sh [SDIST]      # -> .whl/llama.cpp-src.tar.xz (+ .whl/llama.cpp-src.txt)
#
# The source is the llama.cpp that the llama-cpp-python 0.3.36 sdist vendors (ggml-org/llama.cpp 0c1e57098,
# with DeepSeek-V4: src/models/deepseek4.cpp, conversion/deepseek.py). SDIST defaults to
# /tmp/lcp/llama_cpp_python-0.3.36.tar.gz, downloaded with
#   pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d /tmp/lcp
# (pip prepares the sdist's metadata: with --no-build-isolation it needs scikit-build-core installed).
#
# Kept: what a CPU-only cmake build of llama-bench, llama-quantize, llama-perplexity and llama-completion
# needs (ggml with its CPU backend only, src/, include/, common/, the vendored headers common uses) and the
# python converter (convert_hf_to_gguf.py, conversion/, gguf-py/gguf, the DeepSeek-V4 chat templates).
# Dropped: tests, examples, docs, model vocab files, media, the web UI, server/mtmd/tts tools, every non-CPU
# backend (CUDA, Vulkan, Metal, SYCL, OpenCL, ...), the ARM KleidiAI and RISC-V SpacemiT kernels.
# Two build files are replaced by shorter ones (tools/CMakeLists.txt: the four tools above;
# vendor/CMakeLists.txt: nlohmann, sheredom, cpp-httplib); nothing else is changed.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SDIST=${1:-/tmp/lcp/llama_cpp_python-0.3.36.tar.gz}
VERSION=0.3.36
COMMIT=0c1e57098
OUTDIR=$ROOT/.whl
OUT=$OUTDIR/llama.cpp-src.tar.xz
[ -f "$SDIST" ] || { echo "no sdist at $SDIST (pip download --no-deps --no-binary :all: llama-cpp-python==$VERSION -d $(dirname "$SDIST"))"; exit 1; }
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
tar xzf "$SDIST" -C "$TMP"
SRC=$(echo "$TMP"/llama_cpp_python-*/vendor/llama.cpp)
HEAD=$(cat "$TMP"/llama_cpp_python-*/.git/modules/vendor/llama.cpp/HEAD 2>/dev/null || echo unknown)
case "$HEAD" in $COMMIT*) ;; *) echo "note: vendored llama.cpp is $HEAD, not $COMMIT";; esac
[ -f "$SRC/src/models/deepseek4.cpp" ] || { echo "no src/models/deepseek4.cpp in this llama.cpp"; exit 1; }
D=$TMP/llama.cpp
mkdir -p "$D"
cd "$SRC"
cp -a CMakeLists.txt LICENSE cmake include src common convert_hf_to_gguf.py conversion "$D"/
mkdir -p "$D/ggml/src" "$D/gguf-py" "$D/tools" "$D/vendor" "$D/models/templates"
cp -a ggml/CMakeLists.txt ggml/cmake ggml/include "$D/ggml/"
find ggml/src -maxdepth 1 -type f -exec cp -a {} "$D/ggml/src/" \;
cp -a ggml/src/ggml-cpu "$D/ggml/src/"
rm -rf "$D/ggml/src/ggml-cpu/kleidiai" "$D/ggml/src/ggml-cpu/spacemit"
cp -a gguf-py/gguf gguf-py/LICENSE gguf-py/pyproject.toml "$D/gguf-py/"
cp -a models/templates/deepseek-ai-DeepSeek-V4*.jinja "$D/models/templates/" 2>/dev/null || true
for t in llama-bench quantize perplexity completion; do cp -a "tools/$t" "$D/tools/"; done
for v in nlohmann sheredom cpp-httplib; do cp -a "vendor/$v" "$D/vendor/"; done
cat > "$D/tools/CMakeLists.txt" <<'EOF'
# stripped (benchmarks/_llama_cpp_src.sh): the tools benchmarks/llama_cpp.py uses
find_package(Threads REQUIRED)
llama_add_compile_flags()
add_subdirectory(llama-bench)
add_subdirectory(quantize)
add_subdirectory(perplexity)
add_subdirectory(completion)
EOF
cat > "$D/vendor/CMakeLists.txt" <<'EOF'
# stripped (benchmarks/_llama_cpp_src.sh): what common/ links
add_subdirectory(nlohmann)
add_subdirectory(sheredom)
if (LLAMA_BUILD_COMMON)
    add_subdirectory(cpp-httplib)
endif()
EOF
find "$D" -name '__pycache__' -prune -exec rm -rf {} +
printf 'llama-cpp-python %s sdist, vendor/llama.cpp at %s\n' "$VERSION" "$HEAD" > "$D/SOURCE.txt"
mkdir -p "$OUTDIR"
tar cf - -C "$TMP" llama.cpp | xz -9e -T0 > "$OUT"
cp "$D/SOURCE.txt" "$OUTDIR/llama.cpp-src.txt"
echo "$OUT: $(du -k "$OUT" | cut -f1) KiB ($(du -sk "$D" | cut -f1) KiB unpacked); $(cat "$D/SOURCE.txt")"
