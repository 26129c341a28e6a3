#!/usr/bin/env bash
# Instructions per hello request through the real server (HTTP/1 keep-alive, one connection),
# for two git refs: deterministic (valgrind's callgrind counts instructions, not seconds), so an
# A/B on a busy machine still means something.  Kernel time is not counted; syscalls per request
# can be compared with `strace -c` separately.
#
#   bench/ab_instructions.sh A_REF B_REF [N1 N2]     (defaults: 300 and 1300 requests)
#
# Each ref's src/ is exported with git archive; the server runs under callgrind twice, serving
# N1 and N2 sequential requests from a tiny keep-alive client; (I(N2) - I(N1)) / (N2 - N1) is the
# per-request count, start-up and shutdown cancelling out.  Needs valgrind (Debian) and python3.11.
set -euo pipefail
cd "$(dirname "$0")/.."
A=$1; B=$2; N1=${3:-300}; N2=${4:-1300}
PY=$(python3 -c 'import sys; print(sys.executable)')
PY=$(readlink -f "$PY")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
count() {  # src n -> instructions
  local src=$1 n=$2 port out
  port=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
  out="$work/cg.$RANDOM"
  PYTHONPATH=$src valgrind --tool=callgrind --callgrind-out-file="$out" "$PY" -m trio_rack serve \
    bench/rack_app.py -b "http://127.0.0.1:$port" --no-access-log --log-level warning >"$out.log" 2>&1 &
  local pid=$!
  python3 - "$port" "$n" <<'PYCLIENT'
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
deadline = time.monotonic() + 120
while True:
    try:
        s = socket.create_connection(("127.0.0.1", port))
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.1)
request = b"GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: ab\r\n\r\n"
for _ in range(n):
    s.sendall(request)
    buf = b""
    while b"Hello" not in buf:
        buf += s.recv(65536)
s.close()
PYCLIENT
  kill -TERM "$pid"
  wait "$pid" || true
  sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$out.log"
}
for label in A B; do
  ref=${!label}
  mkdir -p "$work/$label"
  git archive "$ref" src | tar -x -C "$work/$label"
  i1=$(count "$work/$label/src" "$N1")
  i2=$(count "$work/$label/src" "$N2")
  per=$(( (i2 - i1) / (N2 - N1) ))
  echo "$label $ref: $per instructions per request"
  eval "per_$label=$per"
done
python3 -c "print(f'B/A = {$per_B / $per_A:.4f}')"
