#!/usr/bin/env bash
# Creates .venv with a Python >= 3.12 and installs hvpose (editable).
#
# Usage: scripts/setup.sh [test]. With `test` (`make setup`, `make test`) it adds the test extra (pytest, the
# reference libraries, ruff); without (`make demo`) only what hvpose itself imports, which installs faster on a
# fresh machine (README, "Set-up"). A venv with the test extra satisfies both.
#
# The interpreter is, in order: $PYTHON if set; python3.12 / python3.13 / python3 on PATH; a pyenv-installed
# 3.12 (newest patch), else 3.13, 3.14 (under $PYENV_ROOT or ~/.pyenv). JAX >= 0.11 needs Python >= 3.12;
# 3.12 comes first because every dependency ships wheels for it and it is what CI tests.
# Re-running is cheap: it installs only when pyproject.toml or this script changed, the venv is missing, or the
# test extra is asked for and not yet there.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

is_suitable() {  # is "$1" a runnable Python >= 3.12 with venv?
  "$1" -c 'import sys, venv; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1
}

find_python() {
  if [ -n "${PYTHON:-}" ]; then
    if is_suitable "$PYTHON"; then echo "$PYTHON"; return 0; fi
    echo "error: PYTHON=$PYTHON is not a Python >= 3.12 with the venv module" >&2; return 1
  fi
  local candidate
  for candidate in python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && is_suitable "$(command -v "$candidate")"; then
      command -v "$candidate"; return 0
    fi
  done
  local root=${PYENV_ROOT:-}
  if [ -z "$root" ] && command -v pyenv >/dev/null 2>&1; then root=$(pyenv root); fi
  root=${root:-$HOME/.pyenv}
  if [ -d "$root/versions" ]; then
    local minor
    for minor in 12 13 14 15; do
      for candidate in $(ls -1 "$root/versions" | grep -E "^3\.$minor\.[0-9]+\$" | sort -t. -k3,3nr); do
        if is_suitable "$root/versions/$candidate/bin/python"; then echo "$root/versions/$candidate/bin/python"; return 0; fi
      done
    done
  fi
  cat >&2 <<'MSG'
error: hvpose needs Python >= 3.12 (JAX requires it) and none was found.
  Install one (e.g. `pyenv install 3.12`, `uv python install 3.12`, or your OS package python3.12)
  and re-run, or point to it: PYTHON=/path/to/python3.12 make setup
MSG
  return 1
}

extra=${1:-}
case "$extra" in
  ""|test) ;;
  *) echo "usage: scripts/setup.sh [test] (got '$extra')" >&2; exit 2 ;;
esac
# The stamp holds the hash of what was installed from and the extra installed with it ("-" for none).
stamp="$VENV/.hvpose-installed"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
read -r have have_extra 2>/dev/null < "$stamp" || true
if [ -x "$VENV/bin/python" ] && is_suitable "$VENV/bin/python" && [ "${have:-}" = "$want" ] \
    && { [ -z "$extra" ] || [ "${have_extra:-}" = "$extra" ]; }; then
  exit 0
fi
python=$(find_python)
echo "hvpose setup: using $python ($("$python" --version 2>&1)) for $VENV" >&2
if ! [ -x "$VENV/bin/python" ] || ! is_suitable "$VENV/bin/python"; then
  rm -rf "$VENV"
  "$python" -m venv "$VENV"
fi
spec=.${extra:+[$extra]}
# The installer: uv (on PATH, or put into the venv by pip) unless HVPOSE_INSTALLER=pip; it is several times faster
# (README, "Set-up", has the times). uv reads its own settings (UV_INDEX_URL, ...), not pip's; should it fail (an
# index only pip is set up for, say), pip installs instead.
installer=${HVPOSE_INSTALLER:-uv}
case "$installer" in
  uv|pip) ;;
  *) echo "error: HVPOSE_INSTALLER=$installer is not uv or pip" >&2; exit 2 ;;
esac
if [ "$installer" = uv ]; then
  uv=$(command -v uv || true)
  if [ -z "$uv" ] && "$VENV/bin/python" -m pip install --quiet uv; then uv="$VENV/bin/uv"; fi
  if [ -z "$uv" ] || ! "$uv" pip install --quiet --python "$VENV/bin/python" -e "$spec"; then
    echo "hvpose setup: uv could not install hvpose (above); installing with pip" >&2
    installer=pip
  fi
fi
if [ "$installer" = pip ]; then
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e "$spec"
fi
# Builds the native CPU voting kernel now rather than on first use (about 5 s; it says why if it cannot).
"$VENV/bin/python" -c 'from hvpose.ops import native; import sys; sys.exit(native.ffi_target("hvpose_hough_vote_cpu") is None)' \
  || echo "hvpose setup: the native voting kernel is unavailable (see above); voting uses the slower XLA scatter" >&2
echo "$want ${extra:--}" > "$stamp"
echo "hvpose setup: done ($("$VENV/bin/python" -c 'import jax, flax; print("jax", jax.__version__, "flax", flax.__version__)'))" >&2
