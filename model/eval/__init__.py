"""The evaluation application behind ``turborank eval``, ``merge-runs`` and ``verify``: reading BEIR
datasets and TREC runs, a BM25 first stage, reranking a run (in one process or on Ray), metrics, and
the comparison with the checkpoint's own Hugging Face code. Some of these modules import torch, so
the CLI imports them inside its commands, not at start-up."""
