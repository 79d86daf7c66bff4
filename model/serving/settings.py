"""Limits of one server: each written once here, with its command-line flag, help and check.

``turborank serve`` builds its options from these fields (``add_arguments``) and its settings from
the parsed options (``from_arguments``), so a default or a range lives in one place and ``--help``
shows it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any

POSITIVE_INT = "a positive integer"
NON_NEGATIVE_INT = "a non-negative integer"
POSITIVE_SECONDS = "a positive number of seconds"


def _setting(default: Any, help: str, check: str | None = None, flag: str | None = None) -> Any:
    return dataclasses.field(default=default, metadata={"help": help, "check": check, "flag": flag})


class SettingError(ValueError):
    """A setting out of range; ``field`` names the ServeSettings field, ``problem`` what is wrong."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field, self.problem = field, problem


LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


@dataclasses.dataclass(frozen=True)
class Listener:
    """Where a server listens, and uvicorn's log level; ``turborank serve``'s ``--host``, ``--port``
    and ``--log-level`` take their defaults from here."""

    host: str = "127.0.0.1"
    port: int = 8080
    log_level: str = "info"


@dataclasses.dataclass(frozen=True)
class ServeSettings:
    """Limits of one server; the defaults follow text-embeddings-inference where it has one.

    A request body must keep arriving: no gap of more than ``body_timeout_s`` between two reads,
    and, once ``body_timeout_s`` has passed, at least ``min_body_rate`` bytes per second on average
    (the rule of Apache's mod_reqtimeout; 0 turns it off). Otherwise 408, and the request's slot
    is free again: a stalled upload holds a slot for ``body_timeout_s``, a trickling one for at most
    ``body_timeout_s + max_body_bytes / min_body_rate``. A request's headers must be complete
    ``header_timeout_s`` after its connection opened or its first byte arrived (else 408 and the
    connection closes), so a connection that never finishes them holds a file descriptor for
    seconds, not forever.
    """

    model_name: str
    max_batch_tokens: int = _setting(16384, "token budget of one forward", POSITIVE_INT)
    # Documents per request: TEI's limit on its routes, the hosted APIs' on the Jina/Cohere routes.
    max_client_batch_size: int = _setting(32, "documents per request on the TEI routes", POSITIVE_INT)
    max_documents: int = _setting(
        1000, "documents per request on the Jina/Cohere routes (/v1/rerank, /v2/rerank)", POSITIVE_INT
    )
    max_concurrent_requests: int = _setting(
        512,
        "request slots; when all are taken a client holding fewer than the busiest one takes a slot "
        "from that client's slowest upload, else 429",
        POSITIVE_INT,
    )
    max_requests_per_client: int | None = _setting(
        None,
        "request slots one client (its address, or X-Forwarded-For from --forwarded-allow-ips) may "
        "hold; beyond it 429 (default: no cap of its own)",
        POSITIVE_INT,
    )
    max_input_length: int = _setting(8192, "tokens per pair (default: the model's longest)", POSITIVE_INT)
    # TEI routes: truncate when the request does not say (TEI's --auto-truncate).
    auto_truncate: bool = _setting(
        False, "TEI routes: truncate long inputs when the request does not say (else 422)"
    )
    # Jina/Cohere routes truncate, as the hosted APIs do, unless this is set (then 422).
    strict_input_length: bool = _setting(
        False, "Jina/Cohere routes: refuse (422) a pair over --max-input-length instead of truncating it"
    )
    # When set, every route but health, readiness, metrics and the API docs needs "Bearer <key>".
    api_key: str | None = dataclasses.field(
        default=None,
        repr=False,
        metadata={
            "help": "require 'Authorization: Bearer KEY' on the scoring routes, /info and the model "
            "routes (default: $TURBORANK_API_KEY; health, ready, metrics and docs stay open)",
            "check": None,
            "flag": None,
        },
    )
    max_body_bytes: int = _setting(16 * 1024 * 1024, "request body bytes; beyond it 413", POSITIVE_INT)
    body_timeout_s: float = _setting(
        5.0,
        "seconds a request body may stall before 408 (the slot is freed)",
        POSITIVE_SECONDS,
    )
    min_body_rate: int = _setting(
        64 * 1024,
        "bytes/s a request body must average after --body-timeout, else 408 (0: no minimum)",
        NON_NEGATIVE_INT,
    )
    header_timeout_s: float = _setting(
        5.0,
        "seconds from a connection's opening (or a request's first byte) to the end of its headers; "
        "then 408 and the connection closes",
        POSITIVE_SECONDS,
    )
    write_timeout_s: float = _setting(
        30.0,
        "seconds an answer may wait for its client to read any of it (the socket's buffer full); "
        "then the connection closes",
        POSITIVE_SECONDS,
    )
    max_connections: int | None = _setting(
        None,
        "open connections; a new one beyond it closes the oldest one that is idle or still sending "
        "headers, or is refused with 503 (default: the open-file limit less 64)",
        POSITIVE_INT,
    )
    forwarded_allow_ips: str | None = _setting(
        None,
        "comma-separated proxy addresses (or *) whose X-Forwarded-For names the client for the "
        "per-client limits and logs (default: $FORWARDED_ALLOW_IPS, else 127.0.0.1)",
    )
    tokenizer_threads: int = _setting(
        2, "threads that decode and tokenise requests", POSITIVE_INT, "--tokenization-workers"
    )
    ready_max_age_s: float = dataclasses.field(default=30.0, metadata={"check": POSITIVE_SECONDS})
    drain_timeout_s: float = _setting(60.0, "seconds SIGTERM waits for in-flight requests", POSITIVE_SECONDS)

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            check = field.metadata.get("check")
            value = getattr(self, field.name)
            if check is None or (value is None and field.default is None):
                continue
            if not _passes(check, value):
                raise SettingError(field.name, f"must be {check}, got {value!r}")
        if self.api_key is not None and (not isinstance(self.api_key, str) or not _usable_key(self.api_key)):
            raise SettingError("api_key", "must be a non-empty string of printable ASCII without spaces")


def _passes(check: str, value: Any) -> bool:
    if check == POSITIVE_SECONDS:
        number = not isinstance(value, bool) and isinstance(value, (int, float))
        return number and math.isfinite(value) and value > 0
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    return value >= (0 if check == NON_NEGATIVE_INT else 1)


def _usable_key(key: str) -> bool:
    # It travels in an HTTP header: visible ASCII only, or no client could send it.
    return bool(key) and all("!" <= c <= "~" for c in key)


def flag_of(field: dataclasses.Field) -> str:
    """The command-line option of a field: its own, or the field name with dashes (less ``_s``)."""
    name = field.name[:-2] if field.name.endswith("_s") else field.name
    return field.metadata.get("flag") or "--" + name.replace("_", "-")


def command_line_fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(ServeSettings) if "help" in f.metadata]


def add_arguments(parser: argparse.ArgumentParser, environment_api_key: str | None) -> None:
    """One option per setting, its default and help taken from the field."""
    for field in command_line_fields():
        flag = flag_of(field)
        default = environment_api_key if field.name == "api_key" else field.default
        if field.name == "max_input_length":
            default = None  # the model's longest, known once it is loaded
        if field.type == "bool":
            parser.add_argument(flag, dest=field.name, action="store_true", help=field.metadata["help"])
            continue
        kind = float if "float" in field.type else int if "int" in field.type else str
        help = field.metadata["help"]  # the parser's formatter adds the default
        metavar = "SECONDS" if kind is float else "N" if kind is int else field.name.split("_")[-1].upper()
        parser.add_argument(flag, dest=field.name, type=kind, default=default, metavar=metavar, help=help)


def from_arguments(
    args: argparse.Namespace, model_name: str, max_input_length: int | None = None
) -> ServeSettings:
    """The settings the options ask for (SettingError as the dataclass raises it).
    ``max_input_length`` replaces the option's (which may be None: the model's longest)."""
    values = {f.name: getattr(args, f.name) for f in command_line_fields()}
    if max_input_length is not None:
        values["max_input_length"] = max_input_length
    elif values["max_input_length"] is None:
        del values["max_input_length"]
    return ServeSettings(model_name=model_name, **values)


def option_name(field_name: str) -> str:
    """``--body-timeout`` for ``body_timeout_s``: how a command-line user knows the setting."""
    return flag_of(next(f for f in dataclasses.fields(ServeSettings) if f.name == field_name))
