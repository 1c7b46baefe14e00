#!/usr/bin/env bash
# Installs what the server's GPU checks need besides torch and numpy (aiohttp, sphn, soundfile) into .gpu_deps, a
# git-ignored folder to carry to the device machine, which reaches no package registry. numpy is left to the device
# machine's own install; sphn's library is stripped of its symbols to fit the carry limit (80 MB -> under 5 MB).
#     bash bench/gpu_deps.sh        # then carry .gpu_deps; bench/gpu_checks.sh puts it on PYTHONPATH
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .gpu_deps
"${PYTHON:-python3}" -m pip install --quiet --target .gpu_deps 'aiohttp>=3.9' 'sphn>=0.2,<0.3' soundfile
rm -rf .gpu_deps/numpy .gpu_deps/numpy-* .gpu_deps/numpy.libs .gpu_deps/bin
strip --strip-unneeded .gpu_deps/sphn/*.so
du -sh .gpu_deps
