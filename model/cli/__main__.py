"""``python -m turborank.cli``: the same as the ``turborank`` console script."""

import sys

from turborank.cli import main

sys.exit(main())
