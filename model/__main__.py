"""``python -m turborank`` runs the command-line interface (the same as ``turborank``)."""

import sys

from turborank.cli import main

sys.exit(main())
