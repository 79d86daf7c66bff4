import pytest


@pytest.fixture(scope="session")
def small_reranker(tmp_path_factory):
    from turborank import Reranker
    from turborank.testing import make_checkpoint

    return Reranker.from_pretrained(make_checkpoint(tmp_path_factory.mktemp("bench"), "small"), device="cpu")
