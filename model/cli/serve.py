"""``turborank serve``: the HTTP rerank server (Jina/Cohere /v1/rerank, Cohere /v2/rerank, TEI /rerank),
in this process or as Ray Serve replicas."""

from __future__ import annotations

import argparse
import os

from turborank.cli.common import (
    add_model_options,
    add_ray_option,
    checked,
    fail,
    load_reranker,
    model_options,
    non_negative_number,
    positive_int,
)
from turborank.hub import DEFAULT_MODEL
from turborank.serving.settings import (
    LOG_LEVELS,
    Listener,
    ServeSettings,
    SettingError,
    from_arguments,
    option_name,
)
from turborank.serving.settings import add_arguments as add_setting_arguments

HELP = "HTTP rerank server: Jina/Cohere /v1/rerank, Cohere /v2/rerank, TEI /rerank"
# The --ray options, whose values mean nothing without --ray (a value given is refused without it).
_RAY_ONLY = {"replicas": 2, "gpus_per_replica": None, "cpus_per_replica": 1.0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser, DEFAULT_MODEL)
    parser.add_argument("--host", default=Listener.host, help="address to listen on")
    parser.add_argument("--port", type=int, default=Listener.port, help="TCP port")
    add_setting_arguments(parser, os.environ.get("TURBORANK_API_KEY"))
    parser.add_argument(
        "--log-level", default=Listener.log_level, choices=LOG_LEVELS, help="what the server logs"
    )
    parser.add_argument(
        "--json-logs", action="store_true", help="log JSON lines (one object per record) instead of text"
    )
    parser.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="replay CUDA graphs for small batches (< 128 pairs, <= 4096 tokens; each shape bucket is "
        "captured on first use); needs CUDA and the Triton backend",
    )
    parser.add_argument(
        "--front-ends",
        action=checked(positive_int),
        default=1,
        help="processes that take the HTTP requests and tokenise them, feeding the model in this one "
        "(for a GPU whose forwards outrun one process's host side; the request limits are split "
        "between them)",
    )
    add_ray_option(
        parser, "serve --replicas copies of the app as Ray Serve replicas behind this process's HTTP front"
    )
    parser.add_argument(
        "--replicas",
        action=checked(positive_int),
        default=_RAY_ONLY["replicas"],
        help="with --ray: replicas of the app",
    )
    parser.add_argument(
        "--gpus-per-replica",
        action=checked(non_negative_number),
        default=_RAY_ONLY["gpus_per_replica"],
        help="with --ray: default 1 on CUDA, else 0",
    )
    parser.add_argument(
        "--cpus-per-replica",
        action=checked(non_negative_number),
        default=_RAY_ONLY["cpus_per_replica"],
        help="with --ray: CPU cores per replica",
    )


def run(args: argparse.Namespace) -> int:
    try:  # the serve extra is there (checked before the model is loaded)
        import turborank.serving.server  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"turborank serve needs the serve extra: pip install 'turborank[serve]' ({exc})"
        ) from None
    if not 1 <= args.port <= 65535:
        return fail(f"--port must be a TCP port number (1..65535), got {args.port}")
    if args.front_ends > 1 and args.ray is not None:
        return fail("--front-ends is for one machine's model process; with --ray, use --replicas")
    ray_only = [
        f"--{name.replace('_', '-')}" for name, default in _RAY_ONLY.items() if getattr(args, name) != default
    ]
    if ray_only and args.ray is None:
        return fail(
            f"{', '.join(ray_only)}: options of --ray (replicas on a Ray cluster); without it, one "
            "process serves"
        )
    # Before the model is loaded (minutes for a large one on a GPU), not after, as uvicorn would.
    # With --ray too: this process is the front that listens.
    unbindable = _cannot_bind(args.host, args.port)
    if unbindable:
        return fail(f"--host {args.host} --port {args.port}: {unbindable}")
    try:  # every limit checked before the model is loaded (max_input_length against the model's range)
        settings = from_arguments(args, args.model, max_input_length=ServeSettings.max_input_length)
        from turborank.serving.connections import connection_limit

        connection_limit(settings)
    except SettingError as error:
        return fail(f"{option_name(error.field)} {error.problem}")
    from turborank.serving.logs import serve_logging

    # Before the load, so that its lines are in the chosen format too; put back when serving ends.
    with serve_logging(args.log_level, args.json_logs):
        return _load_and_serve(args)


def _load_and_serve(args: argparse.Namespace) -> int:
    from turborank import Reranker
    from turborank.serving.server import serve

    # From the config and tokenizer alone, before the weights are loaded (the replicas load them
    # with --ray), so every value out of the range gets the same answer at once.
    low, high = Reranker.pair_length_range(args.model, slopes=args.slopes)
    max_input_length = high if args.max_input_length is None else args.max_input_length
    if not low <= max_input_length <= high:
        return fail(
            f"--max-input-length {max_input_length} is outside the model's range ({low}..{high}): a pair "
            f"needs its {low - 1} special tokens and at least one more"
        )
    settings = from_arguments(args, args.model, max_input_length)
    if args.ray is not None:
        return _serve_on_ray(args, settings)
    reranker = load_reranker(args)
    if args.front_ends > 1:
        from turborank.serving.front_ends import serve_with_front_ends

        directory = str(reranker.checkpoint_directory)  # the tokenizer the weights came with
        listener = _listener(args)
        return serve_with_front_ends(reranker, settings, listener, args.front_ends, directory, args.json_logs)
    serve(reranker, settings, _listener(args))
    return 0


def _listener(args: argparse.Namespace) -> Listener:
    return Listener(args.host, args.port, args.log_level)


def _cannot_bind(host: str, port: int) -> str | None:
    """Why the server could not listen on ``host:port`` (in use, not an address of this machine,
    not allowed), or None. As the server will bind: with SO_REUSEADDR, so a port whose last
    connections are in TIME_WAIT counts as free."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        return f"cannot resolve the host ({exc.strerror})"
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            return f"cannot listen there ({exc.strerror})"
    return None


def _serve_on_ray(args: argparse.Namespace, settings: ServeSettings) -> int:
    from turborank.ray_cluster import resolve_local_path
    from turborank.serving.ray_serve import DeployFailedError, ReplicaPlan, serve_on_ray

    if args.cuda_graphs:
        return fail(
            "--cuda-graphs is not available with --ray yet: each replica would capture its own graphs"
        )
    plan = ReplicaPlan(
        address=None if args.ray == "local" else args.ray,
        replicas=args.replicas,
        gpus_per_replica=args.gpus_per_replica,
        cpus_per_replica=args.cpus_per_replica,
        timeout_s=args.ray_timeout,
    )
    load = model_options(args)
    # Resolved and checked here: a replica would read a relative path in its own working directory.
    load["path_or_hub_id"] = resolve_local_path(str(load["path_or_hub_id"]))
    try:
        serve_on_ray(load, settings, plan, _listener(args))
    except DeployFailedError as exc:
        return fail(str(exc))
    return 0
