#!/usr/bin/env bash
# One-command set-up: a virtual environment in .venv with nsfwlab and everything its tests need.
#   bash setup.sh            # CPU build of PyTorch (default)
#   TORCH_SPEC=torch bash setup.sh   # let pip choose (a CUDA build on Linux x86_64)
# Also installs Debian's chromium (for the browser tests) when it is missing and we are root.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip 2>/dev/null || true
# torch first, so that the project's "torch>=2.3" is already satisfied by the chosen build.
.venv/bin/python -m pip install -q "$TORCH_SPEC"
.venv/bin/python -m pip install -q -e '.[dev]'
# Bytecode for the editable source, as pip writes it for an ordinary install: where Python may not
# write it (PYTHONDONTWRITEBYTECODE), every command would otherwise compile nsfwlab's ~100 modules
# again, at every start.
.venv/bin/python -m compileall -q src >/dev/null

if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian's chromium for the browser tests" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: chromium not found; browser tests will be skipped (sudo apt-get install chromium)" >&2
  fi
fi
# The model zoo's freely licensed weights (nsfwjs 4.4.0, MIT) through npm's own client (`npm pack`),
# sha256-verified and converted into the cache (NSFWLAB_HOME, default ~/.cache/nsfwlab), so that the
# zoo's tests run offline. Without npm they are skipped with a reason; `nsfwlab models import` serves
# machines with no network.
if command -v npm >/dev/null 2>&1; then
  for id in nsfwjs-mobilenetv2 nsfwjs-mobilenetv2-mid nsfwjs-inceptionv3; do
    .venv/bin/nsfwlab models fetch "$id" || echo "setup: could not fetch $id; its tests will be skipped" >&2
  done
else
  echo "setup: npm not found; the nsfwjs models are not fetched and their tests will be skipped" >&2
fi
# Opt-in, for the test environment only: NudeNet 3.4.2 (the `nudenet` extra; it pulls opencv-python-headless), so
# that tests/test_zoo_nudenet.py checks our port of NudeDetector.detect against the real package. Its wheel's LICENSE
# file is AGPL-3.0: installing it into this dev venv to verify the port is fine; nsfwlab never bundles or vendors it.
# Skip with NSFWLAB_SKIP_NUDENET=1; without it the parity tests are skipped with a reason.
if [ "${NSFWLAB_SKIP_NUDENET:-0}" != 1 ]; then
  .venv/bin/python -m pip install -q -e '.[nudenet]' || echo "setup: could not install nudenet; its tests will be skipped" >&2
fi
.venv/bin/nsfwlab --version
