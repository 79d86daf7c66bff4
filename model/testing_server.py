"""`turborank serve` as a child process, for tests, benchmarks and users' own integration tests: a
port to put it on, its command line, and waiting until it answers /ready. Standard library only."""

from __future__ import annotations

import contextlib
import http.client
import random
import resource
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

# Ray hands its workers ports from this range by default; a port picked for a server must avoid it.
RAY_WORKER_PORTS = range(10002, 20000)


def _ephemeral_ports() -> range:
    """The range the kernel picks from for bind(port 0) and outgoing connections (Linux's default
    where /proc does not say)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that is free now and that no other process is likely to take before a
    server binds it.

    Asking the kernel for port 0 and closing the socket is not enough: the port comes from the
    ephemeral range, which every process binding port 0 or connecting out draws from too (a Ray
    cluster starts a dozen such processes between our choice and its proxy's bind). This picks from
    the ports below 32768 outside Ray's worker range and outside the ephemeral range, and checks
    that it binds."""
    ephemeral = _ephemeral_ports()
    candidates = [p for p in range(20000, 32768) if p not in ephemeral and p not in RAY_WORKER_PORTS] or list(
        range(1024, 65536)
    )
    for port in random.SystemRandom().sample(candidates, min(200, len(candidates))):
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise OSError(f"no free TCP port found on {host} outside the ephemeral range")


def serve_command(
    checkpoint: str | Path, port: int, *options: str, device: str = "cpu", entry: str = "turborank.cli"
) -> list[str]:
    """The argv of `turborank serve` on ``checkpoint`` at ``port`` (``entry``: the module run with
    ``python -m``, e.g. ``benchmarks.serve.stand_in`` for the stand-in device)."""
    command = [sys.executable, "-m", entry, "serve", "--model", str(checkpoint), "--device", device]
    return [*command, "--port", str(port), *options]


# A proxy named in the environment must not see loopback probes.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def answers_ready(url: str, timeout_s: float = 5.0) -> bool:
    """Whether ``url``/ready answers 200 now."""
    try:
        with _DIRECT.open(f"{url}/ready", timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, http.client.HTTPException, OSError):
        return False


def wait_until_ready(
    proc: subprocess.Popen, url: str, seconds: float = 120.0, output: Callable[[], str] = lambda: ""
) -> None:
    """Return once ``url``/ready answers 200; raise, with the tail of ``output()``, if the process
    exits first or ``seconds`` pass (then the process is killed, so no server outlives the script)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode}: {output()[-2000:]}")
        if answers_ready(url):
            return
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not become ready in {seconds:.0f} s: {output()[-2000:]}")


@contextlib.contextmanager
def serve_process(
    checkpoint: str | Path,
    log: Path,
    *options: str,
    open_files: int | None = None,
    ready_within_s: float = 300.0,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    **command: str,
) -> Iterator[tuple[subprocess.Popen, str]]:
    """`turborank serve` on a free loopback port, its output in ``log``; yields (process, base url)
    once /ready answers 200 and kills the process on the way out if it still runs (stop it yourself
    first to see how it exits). ``open_files``: its RLIMIT_NOFILE (``ulimit -n``); ``env``, ``cwd``:
    as for Popen; ``command``: ``device`` or ``entry`` for ``serve_command``. Generous default wait:
    on a loaded 2-core machine importing torch alone can take a minute."""
    port = free_port()

    def limit_open_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    with open(log, "w") as out:
        proc = subprocess.Popen(
            serve_command(checkpoint, port, *options, **command),
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=None if open_files is None else limit_open_files,
            env=env,
            cwd=cwd,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(proc, url, ready_within_s, log.read_text)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
