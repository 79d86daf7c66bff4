"""``turborank --version``: the package version and the stack it runs on."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any


def version_text() -> str:
    """turborank's version (from the installed package metadata) and the stack it runs on."""
    import torch

    from turborank import __version__

    parts = [f"turborank {__version__}", f"torch {torch.__version__}"]
    try:
        import triton

        parts.append(f"triton {triton.__version__}")
    except ImportError:
        parts.append("triton not installed")
    parts.append(f"CUDA {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "no CUDA device")
    return ", ".join(parts)


class VersionAction(argparse.Action):
    """--version, computed only when asked (it imports torch and triton)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        from turborank.cpu_features import cpu_bf16_support, cpu_identity

        print(version_text())
        # Whether dtype="bfloat16" pays on this CPU (it is never chosen for the caller).
        print(f"cpu: {cpu_bf16_support().describe()}")
        print(f"cpu model: {cpu_identity().describe()}")
        parser.exit()
