"""``python -m turborank`` runs the command-line interface (the same as ``turborank``)."""

from turborank.cli import console

console()
