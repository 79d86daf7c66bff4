"""Measurement scripts (a plain package, run from the repository root; not installed).

turborank is imported before anything else here, so that every benchmark process starts as the
`turborank` command does: turborank sets its OpenMP spin default before torch loads libgomp
(``turborank.OPENMP_SPIN_COUNT``), which only works if torch is not imported yet.
"""

import turborank  # noqa: F401
