"""``python -m turborank.cli``: the same as the ``turborank`` console script."""

from turborank.cli import console

console()
