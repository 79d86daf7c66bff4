"""``turborank serve --ray``: the same FastAPI app as a Ray Serve deployment of N model replicas,
behind this process's own HTTP front (``ray_front``) instead of Ray Serve's proxy.

Each replica loads the model and runs the app exactly as ``turborank serve`` does (routes, limits,
errors, metrics, per-client slots, its own batching scheduler); the front reads each request under
the same connection and body limits and hands it to a replica, to another one when the replica
holding it is lost. On SIGTERM or SIGINT the front answers new requests 503 with Retry-After, as
one process does while draining, until the requests it forwarded are answered (up to
``drain_timeout_s``); then the application is deleted, Serve and a cluster this process started are
stopped, and the process exits 0.

A deploy whose replicas cannot start (a model a node cannot read, a broken install) is torn down
(the application, and Serve itself when this process started it) and reported in one line naming
the replica's error. Each replica runs its torch ops on ``cpus_per_replica`` threads, so the
replicas of a local cluster share the cores instead of each taking all of them.

By construction ``/metrics`` and ``/info`` answer for the replica the request landed on, and
``max_concurrent_requests`` holds per replica.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import signal

from turborank.ray_cluster import import_ray, load_on_node, start_or_join
from turborank.serving.settings import Listener, ServeSettings

logger = logging.getLogger("turborank.serving")
APP_NAME = "turborank"


@dataclasses.dataclass(frozen=True)
class ReplicaPlan:
    """``address`` None starts a local cluster; else Ray's address ("auto", "ray://host:10001")."""

    address: str | None = None
    replicas: int = 1
    gpus_per_replica: float | None = None  # None: 1 when the cluster has GPUs and the device is not "cpu"
    cpus_per_replica: float = 1.0
    timeout_s: float = 30.0  # to reach an address

    def __post_init__(self) -> None:
        if isinstance(self.replicas, bool) or not isinstance(self.replicas, int) or self.replicas < 1:
            raise ValueError(f"replicas must be a positive integer, got {self.replicas!r}")
        for name in ("gpus_per_replica", "cpus_per_replica"):
            value = getattr(self, name)
            if value is None and name == "gpus_per_replica":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")


# The app of this replica process (each replica is a process of its own).
_REPLICA: dict[str, object] = {}


class DeployFailedError(RuntimeError):
    """The replicas could not start; what Serve started for them is gone again."""


def _app_builder(load_kwargs: dict, settings: ServeSettings, threads: int):
    """The function each replica calls to build its app (Ray pickles it with what it closes over)."""

    def build():
        import torch

        from turborank.serving import ray_serve
        from turborank.serving.app import create_app

        torch.set_num_threads(threads)
        app = create_app(load_on_node(**load_kwargs), settings)
        # Through the imported module: this function travels by value, with a copy of its globals.
        ray_serve._REPLICA["app"] = app
        return app

    return build


class _Replica:
    """The model deployment around the app: the front's requests go to the app in process."""

    async def handle_http(self, scope: dict, body: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        from turborank.serving.ray_front import call_app

        return await call_app(_REPLICA["app"], scope, body)


def serve_on_ray(
    load_kwargs: dict,
    settings: ServeSettings,
    plan: ReplicaPlan,
    listener: Listener | None = None,
) -> None:
    """Deploy, serve until SIGTERM/SIGINT, then drain and stop. ``load_kwargs`` are
    ``Reranker.from_pretrained``'s arguments for each replica."""
    listener = listener or Listener()
    ray = import_ray("serve")
    from ray import serve

    from turborank.serving.ray_front import RayFront
    from turborank.serving.server import DrainingServer, front_config

    if plan.address is None:
        check_local_fit(plan)
    started = start_or_join("serve", plan.address, plan.timeout_s)
    serve_was_running = _serve_running(ray)
    gpus = plan.gpus_per_replica
    if gpus is None:
        has_gpus = ray.cluster_resources().get("GPU", 0) >= 1
        gpus = 1.0 if has_gpus and load_kwargs.get("device") != "cpu" else 0.0
    # Until the front runs (it handles them itself), a signal stops the deploy with the teardown.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            # No Ray proxy: this process is the front, so no request meets Ray's plain-text 500.
            serve.start(proxy_location="Disabled")
            threads = max(1, math.floor(plan.cpus_per_replica))
            deployment = serve.deployment(
                serve.ingress(_app_builder(load_kwargs, settings, threads))(_Replica),
                name=APP_NAME,
                num_replicas=plan.replicas,
                ray_actor_options={"num_gpus": gpus, "num_cpus": plan.cpus_per_replica},
                # A full replica is passed over (Serve's router samples two: room past the limit
                # would let it take, and refuse, requests another replica had slots for). What
                # finds every replica full waits, as many as all replicas' slots (fewer would
                # refuse a burst the router is still placing), and past that is a 429 at the front.
                max_ongoing_requests=settings.max_concurrent_requests,
                max_queued_requests=settings.max_concurrent_requests * plan.replicas,
                graceful_shutdown_timeout_s=settings.drain_timeout_s,
                graceful_shutdown_wait_loop_s=0.5,
            )
            try:
                handle = serve.run(deployment.bind(), name=APP_NAME, route_prefix=None, blocking=False)
            except Exception as exc:  # Ray reports a failed replica as its own error with the traceback
                detail = _deploy_error(serve) or str(exc)
                replicas = "the replica" if plan.replicas == 1 else f"the {plan.replicas} replicas"
                raise DeployFailedError(f"{replicas} could not start: {_last_error_line(detail)}") from None
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        front = RayFront(handle, settings)
        logger.info(
            "serving %s on http://%s:%d through Ray Serve: %d replicas, %s GPU and %s CPU each",
            load_kwargs.get("path_or_hub_id"),
            listener.host,
            listener.port,
            plan.replicas,
            gpus,
            plan.cpus_per_replica,
        )
        DrainingServer(front_config(front, listener), front).run_as_the_process()
    finally:
        _tear_down(serve, serve_was_running)
        if started:
            ray.shutdown()


def check_local_fit(plan: ReplicaPlan) -> None:
    """ValueError when the replicas' CPU shares do not fit this machine's cores: a local cluster has
    exactly its cores, and Ray would wait for the rest forever instead of overloading them."""
    cores = os.cpu_count() or 1
    wanted = plan.replicas * plan.cpus_per_replica
    if wanted > cores:
        raise ValueError(
            f"--replicas {plan.replicas} x --cpus-per-replica {plan.cpus_per_replica:g} = {wanted:g} cores; "
            f"this machine has {cores} for the local cluster"
        )


def _interrupt(sig: int, frame) -> None:
    raise KeyboardInterrupt


def _serve_running(ray) -> bool:
    """Whether Ray Serve already runs on the cluster (another application's): then only ours is
    deleted at the end, not Serve."""
    try:
        ray.get_actor("SERVE_CONTROLLER_ACTOR", namespace="serve")
    except ValueError:
        return False
    return True


def _tear_down(serve, keep_serve: bool) -> None:
    try:
        serve.delete(APP_NAME)
    except Exception:  # never deployed far enough to be deleted: Serve's shutdown removes the rest
        logger.debug("deleting the application failed", exc_info=True)
    if not keep_serve:
        serve.shutdown()


def _deploy_error(serve) -> str | None:
    """What Serve recorded of the replicas' failure (their traceback), while it is still there."""
    try:
        status = serve.status().applications.get(APP_NAME)
        return "\n".join(d.message for d in status.deployments.values() if d.message) or status.message
    except Exception:  # an older Serve, or none left to ask
        return None


def _last_error_line(message: str) -> str:
    """The line of Ray's deploy error that names the replica's exception (``SomeError: ...``)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[\w.]*(Error|Exception)\b.*:", line)]
    return (errors or lines or ["unknown error"])[-1]
