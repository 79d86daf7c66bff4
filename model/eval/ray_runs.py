"""Reranking a first-stage run on a Ray cluster (``turborank eval --ray``).

The judged queries are cut into the very groups a single process would score together
(``rerank_run.query_groups``), and each group runs as a Ray task: one model load per worker process
(kept for the tasks that follow on it), one GPU per task where the cluster has GPUs, CPU cores
otherwise. The inputs travel once through Ray's object store, so the workers need the model (a hub
id or a path every node can read) but not the dataset. Each finished group comes back to the
driver, which writes it as a shard file by an atomic rename, so a shard on disk is always whole; a
worker that dies or is preempted mid-group has its task retried by Ray. At the end the shards are
merged in query order, as ``turborank merge-runs`` does, into the output (again by rename). The
rankings equal the single-process run's: same groups, same batches, same code.
"""

from __future__ import annotations

import dataclasses
import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from turborank.eval.rerank_run import RerankJob, RerankStats, rerank_run
from turborank.eval.trec import Run, merge_runs
from turborank.ray_cluster import load_on_node, start_or_join

# Ray retries a task whose worker died (killed, out of memory, node lost) this many times.
TASK_RETRIES = 3


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """How each worker loads the model (``Reranker.from_pretrained`` arguments)."""

    model: str
    device: str = "auto"
    dtype: str = "auto"
    slopes: str | None = None
    backend: str = "auto"
    linear: str = "auto"


# One model per worker process, kept for every task the worker runs after the first.
_LOADED: dict[ModelSpec, Any] = {}


def _reranker(spec: ModelSpec):
    if spec not in _LOADED:
        options = dataclasses.asdict(spec)
        _LOADED[spec] = load_on_node(path_or_hub_id=options.pop("model"), **options)
    return _LOADED[spec]


def _rerank_group(
    spec: ModelSpec, threads: int, job: RerankJob, qids: list[str]
) -> tuple[str, dict[str, int]]:
    """Runs in a Ray worker: the group ``qids`` of ``job``, returned as TREC text and its statistics."""
    import torch

    torch.set_num_threads(threads)
    out = io.StringIO()
    _, stats = rerank_run(_reranker(spec), dataclasses.replace(job, qids=qids), out)
    return out.getvalue(), dataclasses.asdict(stats)


@dataclasses.dataclass(frozen=True)
class RayPlan:
    """Where and how wide: ``address`` None starts a local cluster of this machine's cores (each
    task takes ``cpus_per_worker`` of them, so tasks never outnumber the cores); else Ray's address
    ("auto", "host:port", "ray://host:10001"), checked within ``timeout_s``."""

    address: str | None = None
    workers: int | None = (
        None  # concurrent groups; default: the cluster's GPUs, else its CPUs / cpus_per_worker
    )
    cpus_per_worker: int = 1
    use_gpus: bool = True  # one GPU per task when the cluster has GPUs
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("workers", "cpus_per_worker"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


def connect(plan: RayPlan) -> bool:
    """Start or join the cluster; returns whether this process connected (and shuts Ray down)."""
    if plan.address is None:
        cores = os.cpu_count() or 1
        if plan.cpus_per_worker > cores:
            raise ValueError(
                f"--ray-cpus-per-worker {plan.cpus_per_worker}: this machine has {cores} cores for the "
                "local cluster"
            )
    return start_or_join("eval", plan.address, plan.timeout_s)


def rerank_run_on_ray(
    spec: ModelSpec,
    plan: RayPlan,
    job: RerankJob,
    output: Path,
    on_progress: Callable[[int], None] = lambda documents: None,
) -> tuple[Run, RerankStats]:
    """Rerank ``job`` on the cluster ``connect`` joined and write the merged run to ``output``.

    Raises ValueError before any work for a first stage naming documents outside the corpus. The
    output is replaced only when every group is done; an interrupted or failed job leaves an earlier
    file of that name as it was.
    """
    import ray

    job.check()
    groups = job.groups()
    top_k, qids = job.options.top_k, job.qids
    needed = {d for q in qids for d, _ in job.first_stage[q][:top_k]}
    # Only what the tasks read travels, once, through the object store.
    shipped = ray.put(
        dataclasses.replace(
            job,
            queries={q: job.queries[q] for q in qids},
            corpus={d: job.corpus[d] for d in needed},
            first_stage={q: job.first_stage[q][:top_k] for q in qids},
        )
    )
    resources = ray.cluster_resources()
    gpus = 1 if plan.use_gpus and resources.get("GPU", 0) >= 1 else 0
    workers = plan.workers or (
        int(resources["GPU"]) if gpus else int(resources.get("CPU", 1) // plan.cpus_per_worker)
    )
    task = ray.remote(_rerank_group).options(
        num_cpus=plan.cpus_per_worker, num_gpus=gpus, max_retries=TASK_RETRIES, name="turborank-group"
    )
    stats = RerankStats()
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.shards-", dir=output.parent) as shard_dir:
        shard_paths = [Path(shard_dir) / f"group{index:06d}.trec" for index in range(len(groups))]
        pending: dict[Any, int] = {}
        waiting = list(range(len(groups)))
        while waiting or pending:
            while waiting and len(pending) < max(1, workers):
                index = waiting.pop(0)
                ref = task.remote(spec, plan.cpus_per_worker, shipped, groups[index])
                pending[ref] = index
            (done,), _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(done)
            try:
                text, counts = ray.get(done)
            except ray.exceptions.RayTaskError as exc:
                # An error of the work itself (a bad model, a bad document), not a lost worker: Ray
                # does not retry it. Stop the rest and raise it as the single process would.
                for ref in pending:
                    ray.cancel(ref)
                cause = getattr(exc, "cause", None)
                raise (cause if isinstance(cause, Exception) else exc) from None
            _write_atomically(shard_paths[index], text)
            for name, value in counts.items():
                setattr(stats, name, getattr(stats, name) + value)
            on_progress(sum(min(top_k, len(job.first_stage[q])) for q in groups[index]))
        merged_path = Path(shard_dir) / "merged.trec"
        reranked = merge_runs(shard_paths, merged_path, tag=job.tag)
        os.replace(merged_path, output)
    return reranked, stats


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
