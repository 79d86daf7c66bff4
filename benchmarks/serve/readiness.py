"""Waiting for a `turborank serve` child process to answer /ready (the serving scripts, the tests)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

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
