"""Starting a `turborank serve` child process and waiting for it to answer /ready (the serving
scripts, the tests)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx


def wait_until_ready(
    proc: subprocess.Popen, url: str, seconds: float = 120.0, output: Callable[[], str] = lambda: ""
) -> None:
    """Return once ``url``/ready answers 200; raise, with the tail of ``output()``, if the process
    exits first or ``seconds`` pass (then the process is killed, so no server outlives the script)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode}: {output()[-2000:]}")
        try:
            if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not become ready in {seconds:.0f} s: {output()[-2000:]}")


def serve_command(
    checkpoint: str | Path, port: int, *options: str, device: str = "cpu", entry: str = "turborank.cli"
) -> list[str]:
    """The argv of `turborank serve` on ``checkpoint`` at ``port`` (``entry``: the module run with
    ``python -m``, e.g. ``benchmarks.serve.stand_in`` for the stand-in device)."""
    return [
        sys.executable,
        "-m",
        entry,
        "serve",
        "--model",
        str(checkpoint),
        "--device",
        device,
        "--port",
        str(port),
        *options,
    ]
