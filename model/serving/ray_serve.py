"""``turborank serve --ray``: the same FastAPI app as a Ray Serve deployment of N replicas behind
Ray Serve's HTTP proxy.

Each replica loads the model and runs the app exactly as ``turborank serve`` does (routes, limits,
errors, metrics, its own batching scheduler); Ray's proxy spreads the requests over the replicas.
On SIGTERM or SIGINT every replica starts answering new requests 503 with Retry-After, as one
process does while draining, and finishes the requests it holds (up to ``drain_timeout_s``); then
the application is deleted (its own shutdown drains each scheduler), a cluster this process started
is stopped, and the process exits 0.

Differences from one process, by construction: ``/metrics`` and ``/info`` answer for the replica
the request landed on; request bodies are read by Ray's proxy, so the body-read timeouts are its
own; ``max_concurrent_requests`` holds per replica.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time

from turborank.serving.settings import ServeSettings

logger = logging.getLogger("turborank.serving")
APP_NAME = "turborank"


@dataclasses.dataclass(frozen=True)
class ReplicaPlan:
    """``address`` None starts a local cluster; else Ray's address ("auto", "ray://host:10001")."""

    address: str | None = None
    replicas: int = 1
    gpus_per_replica: float | None = None  # None: 1 when the cluster has GPUs and the device is not "cpu"
    cpus_per_replica: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.replicas, bool) or not isinstance(self.replicas, int) or self.replicas < 1:
            raise ValueError(f"replicas must be a positive integer, got {self.replicas!r}")
        for name in ("gpus_per_replica", "cpus_per_replica"):
            value = getattr(self, name)
            if value is None and name == "gpus_per_replica":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")


# The app's state in this replica process (each replica is a process of its own).
_REPLICA: dict[str, object] = {}


def _app_builder(load_kwargs: dict, settings: ServeSettings):
    """The function each replica calls to build its app (Ray pickles it with what it closes over)."""

    def build():
        from turborank.reranker import Reranker
        from turborank.serving import ray_serve
        from turborank.serving.app import create_app

        app = create_app(Reranker.from_pretrained(**load_kwargs), settings)
        # Through the imported module: this function travels by value, with a copy of its globals.
        ray_serve._REPLICA["state"] = app.state.turborank
        return app

    return build


class _Replica:
    """The deployment class around the app: HTTP goes to the app; ``drain`` is called on every
    replica through a deployment handle at shutdown."""

    def drain(self) -> int:
        """Answer new requests 503 from now on; returns the requests still in flight."""
        state = _REPLICA["state"]
        state.draining = True
        return state.active


def _drain_replicas(serve, timeout_s: float) -> None:
    """Every replica answers new requests 503 (as one process does when draining) until its requests
    in flight are done, or ``timeout_s`` passes. Needs DeploymentHandle.broadcast (Ray >= 2.5x);
    with an older Ray the proxy answers 404 while the application is deleted."""
    handle = serve.get_deployment_handle(APP_NAME, app_name=APP_NAME)
    if not hasattr(handle, "broadcast"):
        return
    deadline = time.monotonic() + timeout_s
    while True:
        in_flight = sum(handle.broadcast("drain").results())
        if in_flight == 0 or time.monotonic() > deadline:
            return
        time.sleep(0.2)


def serve_on_ray(
    load_kwargs: dict, settings: ServeSettings, plan: ReplicaPlan, host: str = "127.0.0.1", port: int = 8080
) -> None:
    """Deploy, serve until SIGTERM/SIGINT, then drain and stop. ``load_kwargs`` are
    ``Reranker.from_pretrained``'s arguments for each replica."""
    try:
        import ray
        from ray import serve
    except ImportError:
        raise ImportError("turborank serve --ray needs Ray Serve: pip install 'turborank[ray]'") from None

    started = not ray.is_initialized()
    if started:
        if plan.address is None:
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=plan.address, log_to_driver=False)
    gpus = plan.gpus_per_replica
    if gpus is None:
        has_gpus = ray.cluster_resources().get("GPU", 0) >= 1
        gpus = 1.0 if has_gpus and load_kwargs.get("device") != "cpu" else 0.0
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            serve.start(http_options={"host": host, "port": port})
        except Exception as exc:  # Ray wraps the proxy's error in its own task error
            if "Failed to bind" not in str(exc):
                raise
            # Free when the command checked it, taken before Ray's proxy bound it.
            raise OSError(f"--port {port}: Ray Serve's proxy could not listen on {host}:{port}") from None
        deployment = serve.deployment(
            serve.ingress(_app_builder(load_kwargs, settings))(_Replica),
            name=APP_NAME,
            num_replicas=plan.replicas,
            ray_actor_options={"num_gpus": gpus, "num_cpus": plan.cpus_per_replica},
            max_ongoing_requests=settings.max_concurrent_requests,
            graceful_shutdown_timeout_s=settings.drain_timeout_s,
            graceful_shutdown_wait_loop_s=0.5,
        )
        serve.run(deployment.bind(), name=APP_NAME, route_prefix="/", blocking=False)
        logger.info(
            "serving %s on http://%s:%d through Ray Serve: %d replicas, %s GPU and %s CPU each",
            load_kwargs.get("path_or_hub_id"),
            host,
            port,
            plan.replicas,
            gpus,
            plan.cpus_per_replica,
        )
        stop.wait()
        logger.info("draining: new requests get 503 while the replicas finish theirs")
        try:
            _drain_replicas(serve, settings.drain_timeout_s)
        except Exception:  # the graceful delete below still lets the requests in flight finish
            logger.warning("could not set the replicas draining; deleting the application", exc_info=True)
        serve.delete(APP_NAME)
        serve.shutdown()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if started:
            ray.shutdown()
