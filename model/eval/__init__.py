"""The evaluation application behind ``turborank eval``, ``merge-runs`` and ``verify``: reading BEIR
datasets and TREC runs, a BM25 first stage, reranking a run (in one process or on Ray), metrics, and
the comparison with the checkpoint's own Hugging Face code. Imports torch and the eval extras only
where they are used, so the CLI can import these modules before it needs them."""
