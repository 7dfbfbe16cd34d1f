#!/usr/bin/env bash
# Install the pinned stack into the active virtual environment, or into
# ./.venv of the checkout when none is active.
#
# mmcv 2.1.0 has no wheel for this platform and compiling its ops takes a long
# time, so the built wheel is cached outside the checkout
# (REGPROXY_WHEEL_CACHE, default ~/.cache/regproxy/wheels) and reused.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

if [[ -n "${VIRTUAL_ENV:-}" ]]; then
    venv="$VIRTUAL_ENV"
else
    venv="$repo/.venv"
    [[ -x "$venv/bin/python" ]] || "${PYTHON:-python3}" -m venv "$venv"
fi
py="$venv/bin/python"
pip=("$py" -m pip --disable-pip-version-check)
echo "[install] environment: $venv"

pin() { grep -E "^$1==" "$repo/requirements.txt" | head -n1; }

"${pip[@]}" install -q "setuptools<70" wheel
"${pip[@]}" install -q "$(pin torch)" "$(pin torchvision)" "$(pin numpy)"

torch_version="$("$py" -c 'import torch; print(torch.__version__.split("+")[0])')"
py_tag="$("$py" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
cache="${REGPROXY_WHEEL_CACHE:-$HOME/.cache/regproxy/wheels}/torch-$torch_version"
mkdir -p "$cache"
wheel="$(ls "$cache"/mmcv-2.1.0-"$py_tag"-*.whl 2>/dev/null | head -n1 || true)"
if [[ -z "$wheel" ]]; then
    echo "[install] building mmcv 2.1.0 with its ops against torch $torch_version (once; cached in $cache)"
    tmp="$(mktemp -d)"
    MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
        "${pip[@]}" wheel --no-build-isolation --no-deps -w "$tmp" "$(pin mmcv)"
    # Move into place only once complete, so an interrupted build leaves no wheel.
    mv "$tmp"/mmcv-*.whl "$cache"/
    rm -rf "$tmp"
    wheel="$(ls "$cache"/mmcv-2.1.0-"$py_tag"-*.whl | head -n1)"
fi
echo "[install] mmcv wheel: $wheel"
"${pip[@]}" install -q --no-deps "$wheel"

"${pip[@]}" install -q -r "$repo/requirements.txt" "$wheel"
"${pip[@]}" install -q --no-deps --no-build-isolation -e "$repo"
"$py" -c 'import mmcv.ops, mmseg, regproxy; print("[install] ok: mmcv", mmcv.__version__, "mmseg", mmseg.__version__)'
