#!/usr/bin/env python3
"""Static-file throughput: one big file from ``trio_rack.static.Files``, beside nginx and a generator.

    python3 bench/static_bench.py                 # 256 MiB, 7 downloads each, plain HTTP
    python3 bench/static_bench.py --size-mib 64 --runs 2

Three servers on 127.0.0.1, each started here and stopped by PID:

* **nginx** with ``sendfile on`` serving the file: the practical ceiling on this machine;
* **trio-rack ``Files``**: the file as a ``FileBody`` (``os.sendfile`` once the HTTP/1 driver
  has that path; until then read in 1 MiB slices in a worker thread);
* **trio-rack generator body**: the same number of bytes from a sync generator yielding one
  preallocated 1 MiB ``bytes`` object (no disk at all: the cost of the copying write path).

Each is downloaded ``--runs`` times with ``curl -o /dev/null`` (curl's own ``speed_download``,
bytes/s), round-robin so that a noisy moment on the shared machine hits all three alike; the
table gives the median and best MB/s (10^6) and the ratio of medians to nginx.  Every download
is checked for its full size.  The client runs on the same 2 cores as the server, so absolute
numbers are low; the ratios are the point.  On loopback ``sendfile`` still copies (page cache
to socket buffers), so nginx's ``sendfile on`` is not far above a good copying path here; on a
real NIC it avoids the copy.  Traffic stays on loopback; every curl has a ``--max-time``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from _procs import free_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
CURL = shutil.which("curl") or "/usr/bin/curl"
MIB = 1024 * 1024

APP = '''
from trio_rack.static import Files

FILES = Files({root!r})
CHUNK = b"x" * (1024 * 1024)
SIZE = {size}


def chunks():
    for _ in range(SIZE // len(CHUNK)):
        yield CHUNK


async def app(env):
    if env["PATH_INFO"] == "/gen":
        return 200, {{"content-type": "application/octet-stream", "content-length": str(SIZE)}}, chunks()
    return await FILES(env)
'''

NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    types {{ application/octet-stream bin; }}
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


class StaticError(Exception):
    """One server failed to start or to serve the file whole; ``who`` names it."""

    def __init__(self, who: str, message: str) -> None:
        super().__init__(message)
        self.who = who


def wait_ready(port: int, proc: subprocess.Popen[bytes], who: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StaticError(who, f"static_bench: {who} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise StaticError(who, f"static_bench: {who} did not start listening on {port}")


def download(url: str, size: int, who: str, client: Sequence[str] = ()) -> float:
    """One download with curl (run under the ``client`` prefix, e.g. a taskset); its bytes per second."""
    out = subprocess.run(
        [*client, CURL, "-q", "-sS", "--noproxy", "*", "--max-time", "120", "-o", "/dev/null",
         "-w", "%{size_download} %{speed_download} %{http_code}", url],
        capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
    )
    if out.returncode != 0:
        raise StaticError(who, f"static_bench: curl {url} failed: {out.stderr.strip()}")
    got, speed, status = out.stdout.split()
    if int(got) != size or status != "200":
        raise StaticError(who, f"static_bench: {url} gave {status} with {got} bytes, expected {size}")
    return float(speed)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


NGINX_LABEL, FILES_LABEL, GENERATOR_LABEL = (
    "nginx (sendfile on)", "trio-rack Files (FileBody)", "trio-rack generator body",
)


def measure(
    size_mib: int, runs: int, *, server: Sequence[str] = (), client: Sequence[str] = ()
) -> dict[str, list[float]]:
    """Every download's bytes/s, by label: nginx, trio-rack's ``Files``, the generator body.

    ``server`` and ``client`` prefix the servers' and curl's command lines (``bench/run`` pins
    them to their cores with ``taskset``).  The file lives in a temporary directory this call
    creates and removes; both servers are started and stopped (by PID) here.  A failure raises
    :class:`StaticError` naming the server at fault (``"nginx"`` or ``"trio-rack"``).
    """
    size = size_mib * MIB
    with tempfile.TemporaryDirectory(prefix="trio-rack-static-bench-") as tmp:
        directory = Path(tmp)
        os.chmod(directory, 0o755)
        root = directory / "root"
        root.mkdir()
        block = os.urandom(MIB)
        with open(root / "big.bin", "wb") as f:
            for _ in range(size_mib):
                f.write(block)
        (directory / "app.py").write_text(APP.format(root=str(root), size=size))
        rack_port, nginx_port = free_port(), free_port()
        conf = directory / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=directory, port=nginx_port, root=root))
        procs: list[subprocess.Popen[bytes]] = []
        try:
            env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
            rack = subprocess.Popen(
                [*server, sys.executable, "-m", "trio_rack", "serve", str(directory / "app.py"), "-b",
                 f"http://127.0.0.1:{rack_port}", "--no-access-log", "--log-level", "warning"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env,
            )
            procs.append(rack)
            nginx = subprocess.Popen(
                [*server, NGINX, "-p", str(directory), "-c", str(conf), "-e", str(directory / "error.log")],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            procs.append(nginx)
            wait_ready(rack_port, rack, "trio-rack")
            wait_ready(nginx_port, nginx, "nginx")
            cases = [
                (NGINX_LABEL, "nginx", f"http://127.0.0.1:{nginx_port}/big.bin"),
                (FILES_LABEL, "trio-rack", f"http://127.0.0.1:{rack_port}/big.bin"),
                (GENERATOR_LABEL, "trio-rack", f"http://127.0.0.1:{rack_port}/gen"),
            ]
            download(cases[0][2], size, "nginx", client)  # warm the page cache
            speeds: dict[str, list[float]] = {label: [] for label, _, _ in cases}
            for _ in range(runs):  # round-robin: a noisy moment hits every server alike
                for label, who, url in cases:
                    speeds[label].append(download(url, size, who, client))
            return speeds
        finally:
            for proc in procs:
                stop(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    try:
        speeds = measure(args.size_mib, args.runs)
    except StaticError as exc:
        raise SystemExit(str(exc)) from None
    results = {label: statistics.median(values) for label, values in speeds.items()}
    best = {label: max(values) for label, values in speeds.items()}
    ceiling = results[NGINX_LABEL]
    print(f"static file, {args.size_mib} MiB over plain HTTP on 127.0.0.1, {args.runs} curl downloads each")
    print()
    print("| server | MB/s (median) | MB/s (best) | ratio to nginx (medians) |")
    print("|---|---:|---:|---:|")
    for label, speed in results.items():
        print(f"| {label} | {speed / 1e6:,.0f} | {best[label] / 1e6:,.0f} | {speed / ceiling:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
