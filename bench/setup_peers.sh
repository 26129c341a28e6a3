#!/usr/bin/env bash
# Create (or reuse) the peers' virtualenv: Hypercorn with its trio worker, Uvicorn (h11, and
# httptools + uvloop), Granian.  Usage: bench/setup_peers.sh   (venv: $BENCH_VENV, default
# /tmp/trio-rack-bench-venv; interpreter: $PYTHON, default python3)
#
# Idempotent: a peer that already imports is skipped, so a second run costs about a second.
# Never fatal: a peer that cannot be installed (no network, no wheel) is reported on stderr and
# left out, and the runner benchmarks the peers it finds.  Exits 0 unless the venv itself cannot
# be made.  Writes the installed versions to $BENCH_VENV/versions.json and prints them.
set -uo pipefail
VENV="${BENCH_VENV:-/tmp/trio-rack-bench-venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV" || { echo "setup_peers: cannot create $VENV" >&2; exit 1; }
fi
PY="$VENV/bin/python"

# ensure "MODULES-TO-IMPORT" PIP-SPEC...: install unless the modules import already
ensure() {
  local modules="$1"; shift
  "$PY" -c "import $modules" 2>/dev/null && return 0
  timeout 240 "$PY" -m pip install -q --disable-pip-version-check "$@" 2>&1 \
    | grep -v "^WARNING: Location" >&2
  "$PY" -c "import $modules" 2>/dev/null || echo "setup_peers: could not install $* (that peer is skipped)" >&2
}

ensure "hypercorn, trio" "hypercorn[trio]"
ensure "uvicorn, h11" uvicorn
ensure httptools httptools
ensure uvloop uvloop
ensure granian granian
ensure "fastapi, flask" fastapi flask   # the frameworks scenario (bench/frameworks.py)

"$PY" - > "$VENV/versions.json" <<'EOF'
import importlib.metadata as md
import json
versions = {}
for name in ["hypercorn", "trio", "uvicorn", "h11", "httptools", "uvloop", "granian", "fastapi", "flask"]:
    try:
        versions[name] = md.version(name)
    except md.PackageNotFoundError:
        pass
print(json.dumps(versions))
EOF
cat "$VENV/versions.json"
