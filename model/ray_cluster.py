"""Starting or joining the Ray cluster of ``eval --ray`` and ``serve --ray``, with failures a user can
act on, in bounded time.

- ``--ray`` alone (local) always starts a cluster of this machine's own (``ray.init(address="local")``),
  sized to its cores, even on a machine where one already runs (a head node): that one is left
  alone, and the log line says how to use it instead (``--ray auto``).
- An address is checked before Ray is asked to join it, because ``ray.init`` retries an
  unreachable address for minutes and reports a refused authentication token only as "Failed to
  connect": first a TCP connection to it, then (for a cluster's GCS address, ``host:port``) one
  request to its GCS, which tells a refused token apart. Each check waits ``timeout_s`` at most.
- Ray Client addresses (``ray://host:10001``) get the TCP check only: the client protocol is Ray's.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("turborank")
AUTH_HINT = (
    "set RAY_AUTH_MODE=token and the cluster's token in RAY_AUTH_TOKEN (or the file ~/.ray/auth_token "
    "or RAY_AUTH_TOKEN_PATH), as on the cluster's nodes"
)


class RayConnectError(ConnectionError):
    """The cluster could not be started or joined; the message is one line saying why and what to set."""


def load_on_node(**load_kwargs: Any) -> Any:
    """``Reranker.from_pretrained(**load_kwargs)`` in a Ray worker or replica; a model this node
    cannot load is an error naming the node (``node_error``)."""
    from turborank.reranker import Reranker

    try:
        return Reranker.from_pretrained(**load_kwargs)
    except (OSError, ValueError) as exc:
        raise node_error("loading the model", exc) from None


def node_error(what: str, exc: BaseException) -> Exception:
    """``exc``, raised on a Ray node while doing ``what``, as the same kind of error (OSError or
    ValueError, what the CLI reports in one line) naming the node, so that a path only the driver
    can read says where it was missing."""
    node = socket.gethostname()
    try:
        import ray

        node = f"{ray.util.get_node_ip_address()} ({node})"
    except Exception:  # outside a worker, or another Ray: the host name says enough
        pass
    message = f"{what} on Ray node {node}: {exc}; the model must be a hub id or a path every node can read"
    return OSError(message) if isinstance(exc, OSError) else ValueError(message)


def resolve_local_path(model: str) -> str:
    """The model as the workers get it, checked here before any task is sent: a directory of this
    machine as an absolute path (a worker resolves a relative one in its own working directory),
    holding a config.json; a hub id as it is (each node fetches it, or reads its own cache).
    FileNotFoundError / NotADirectoryError for a path that is neither."""
    from pathlib import Path

    from turborank.hub import is_hub_id, resolve_checkpoint

    if is_hub_id(model) and not Path(model).expanduser().exists():
        return model
    directory = resolve_checkpoint(model).resolve()
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{model}: not a checkpoint directory (no config.json in {directory})")
    return str(directory)


def import_ray(command: str) -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError(f"turborank {command} --ray needs Ray: pip install 'turborank[ray]'") from None
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    host, _, port = address.removeprefix("ray://").rpartition(":")
    return (host.strip("[]"), int(port)) if host and port.isdigit() else None


def _in_time(work: Callable[[], object], timeout_s: float) -> tuple[bool, BaseException | None]:
    """``work()`` on a daemon thread: (finished, its error). Ray's native clients cannot be
    cancelled; one that is still waiting is left to end with the process."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # carried back to the caller
            errors.append(exc)

    thread = threading.Thread(target=run, name="turborank-ray-check", daemon=True)
    thread.start()
    thread.join(timeout_s)
    return not thread.is_alive(), errors[0] if errors else None


def check_address(address: str, timeout_s: float) -> None:
    """RayConnectError, within about ``timeout_s`` per check, when nothing answers at ``address``,
    when what answers is not a Ray cluster, or when it refuses this process's authentication."""
    target = _host_port(address)
    if target is None:
        raise RayConnectError(f"--ray {address}: not an address; use host:port, ray://host:10001 or auto")
    host, port = target
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        reason = "no answer" if isinstance(exc, socket.timeout) else exc.strerror or str(exc)
        raise RayConnectError(
            f"--ray {address}: nothing answers at {host}:{port} ({reason}, waited up to {timeout_s:g} s); "
            "start the cluster there (ray start --head) or give its address; --ray-timeout sets the wait"
        ) from None
    if address.startswith("ray://"):
        return
    try:
        from ray._raylet import GcsClient  # private, but the one way to see a refused token
    except ImportError:
        return

    def ask() -> object:
        return GcsClient(address=f"{host}:{port}").internal_kv_get(b"session_name", namespace=None, timeout=5)

    finished, error = _in_time(ask, timeout_s)
    if not finished:
        raise RayConnectError(
            f"--ray {address}: {host}:{port} answers, but not as a Ray cluster's GCS within {timeout_s:g} s "
            "(a Ray Client address is ray://host:10001); --ray-timeout sets the wait"
        )
    if error is not None and "auth" in type(error).__name__.lower() + str(error).lower():
        raise RayConnectError(
            f"--ray {address}: the cluster refused this process's authentication; {AUTH_HINT}"
        )
    if error is not None:
        raise RayConnectError(f"--ray {address}: {host}:{port} is not a usable Ray cluster ({error})")


def start_or_join(command: str, address: str | None, timeout_s: float) -> bool:
    """Start a local cluster (``address`` None) of this machine's cores, or join ``address``;
    returns whether this process connected (and so must ``ray.shutdown()``)."""
    ray = import_ray(command)
    if ray.is_initialized():
        return False
    if address is None:
        running = os.environ.get("RAY_ADDRESS") or _local_cluster_address()
        if running:
            logger.warning(
                "a Ray cluster already runs here (%s); starting another of this process's own "
                "(--ray auto would use that one)",
                running,
            )
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
        return True
    if address != "auto":
        check_address(address, timeout_s)
    try:
        ray.init(address=address, log_to_driver=False)
    except ConnectionError as exc:
        raise RayConnectError(f"--ray {address}: {exc}") from None
    return True


def _local_cluster_address() -> str | None:
    """The address of a cluster started on this machine with ``ray start`` (Ray records it in its
    temporary directory), if its record is there."""
    try:
        from ray._private.utils import read_ray_address  # private; only for the log line

        return read_ray_address()
    except Exception:  # another Ray, no record: nothing to mention
        return None
