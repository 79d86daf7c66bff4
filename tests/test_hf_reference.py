"""Opt-in: the real HF remote code of a reranker snapshot against turborank.

Set TURBORANK_REFERENCE_MODEL to a snapshot directory holding the checkpoint's own modeling_bert.py
(for example a huggingface_hub download of jinaai/jina-reranker-v1-turbo-en) and install a 4.4x
transformers. Skipped otherwise: no hub is reachable from CI.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SNAPSHOT = os.environ.get("TURBORANK_REFERENCE_MODEL")

pytestmark = pytest.mark.skipif(
    not SNAPSHOT or not (Path(SNAPSHOT) / "modeling_bert.py").is_file(),
    reason="TURBORANK_REFERENCE_MODEL does not name a snapshot directory with modeling_bert.py",
)


def test_scores_match_reference_code():
    pytest.importorskip("transformers")
    from turborank.eval.verify import verify_against_reference

    report = verify_against_reference(
        SNAPSHOT, device="cpu", slopes=os.environ.get("TURBORANK_REFERENCE_SLOPES")
    )
    print(report)
    assert report["token_ids_equal"]
    assert report["max_abs_logit_diff"] < 1e-4
    assert report["max_abs_score_diff"] < 1e-5
