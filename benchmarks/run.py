"""The benchmark suite: turborank against the HF reference code and its own PyTorch path, one command.

    python -m benchmarks.run [--device cpu|cuda] [--quick] [--reference-code DIR --hf-python PY]

Checkpoints are synthetic (real formats, random weights) with the turbo and tiny-en shapes. The HF
reference engine runs a snapshot's own ``modeling_bert.py`` through transformers' remote code:
``--reference-code`` names a folder holding ``modeling_bert.py`` and ``configuration_bert.py`` (the
real snapshot's, or the public JinaBERT code in a scratch folder; never committed here), copied next
to the synthetic weights in a temporary directory; ``--hf-python`` is a Python with a 4.4x
transformers. Every (model, engine, workload) runs in a fresh process (``benchmarks.measure``).
Writes ``<out>/<device>_<date>.json``, ``.md`` and ``.png``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.report import machine_info, markdown_table

ROOT = Path(__file__).resolve().parents[1]
# (workload, repeats): the model-card example for latency percentiles, then throughput cases.
CASES = [("card", 30), ("10x512", 5), ("mixed:64:30-2000", 2), ("1x8192", 2)]
QUICK_CASES = [("card", 20), ("10x512", 3), ("mixed:16:30-1000", 2)]
# The throughput-vs-length sweep for the plot: about 8k tokens per call at every length.
SWEEP = [("64x128", 3), ("16x512", 3), ("4x2048", 2), ("1x8192", 2)]
QUICK_SWEEP = [("64x128", 2), ("16x512", 2), ("4x2048", 2)]


def _run_measure(
    python: str,
    checkpoint: Path,
    engine: str,
    workload: str,
    repeats: int,
    device: str,
    dtype: str,
    threads: int | None,
) -> dict:
    cmd = [
        python,
        "-W",
        "ignore",
        "-m",
        "benchmarks.measure",
        str(checkpoint),
        "--engine",
        engine,
        "--workload",
        workload,
        "--repeats",
        str(repeats),
        "--device",
        device,
        "--dtype",
        dtype,
    ]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        return {"engine": engine, "workload": workload, "error": proc.stderr.strip().splitlines()[-1][:300]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _checkpoints(models: list[str], reference_code: Path | None, root: Path) -> dict[str, Path]:
    from turborank.testing import make_checkpoint

    out = {}
    for model in models:
        directory = make_checkpoint(root / model, model, seed=0)
        if reference_code is not None:
            for name in ("modeling_bert.py", "configuration_bert.py"):
                shutil.copy(reference_code / name, directory / name)
        out[model] = directory
    return out


def _ratios(rows: list[dict]) -> list[str]:
    lines = []
    by_key = {(r["model"], r["workload"], r["engine"]): r for r in rows if "error" not in r}
    for (model, workload, engine), row in sorted(by_key.items()):
        ref = by_key.get((model, workload, "hf"))
        if engine == "hf" or ref is None:
            continue
        line = (
            f"{model} {workload}: {engine} {row['pairs_per_s'] / ref['pairs_per_s']:.2f}x the reference's "
            f"pairs/s"
        )
        if workload.endswith("x8192"):
            line += f", {row['peak_rss_mib'] / ref['peak_rss_mib']:.3f}x its peak RSS"
        lines.append(line)
    return lines


def _plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 5), gridspec_kw={"width_ratios": [2, 1, 1]})
    series: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        if "error" in r or r["workload"] not in {w for w, _ in SWEEP}:
            continue
        length = int(r["workload"].split("x")[1])
        series.setdefault(f"{r['engine']} ({r['model']})", []).append((length, r["tokens_per_s"]))
    for label, points in sorted(series.items()):
        points.sort()
        axes[0].plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    axes[0].set(
        xscale="log",
        yscale="log",
        xlabel="tokens per pair",
        ylabel="tokens / s",
        title="Throughput vs sequence length (~8k tokens per call)",
    )
    axes[0].legend(fontsize=8)
    for ax, workload, name in (
        (axes[1], "card", "model-card example (10 docs)"),
        (axes[2], "1x8192", "one 8k document"),
    ):
        bars = [r for r in rows if "error" not in r and r["workload"] == workload]
        values = [r["median_s"] * 1e3 for r in bars]
        ax.bar(
            range(len(bars)), values, color=["tab:gray" if r["engine"] == "hf" else "tab:blue" for r in bars]
        )
        ax.set_xticks(
            range(len(bars)), [f"{r['engine']}\n{r['model']}" for r in bars], rotation=60, fontsize=7
        )
        for i, value in enumerate(values):
            ax.annotate(f"{value:.3g}", (i, value), ha="center", va="bottom", fontsize=7)
        ax.set(ylabel="median latency (ms)", title=name)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="fewer and smaller cases (minutes, not tens)")
    parser.add_argument(
        "--models", default=None, help="comma list of presets (default turbo,tiny-en; quick: turbo)"
    )
    parser.add_argument("--reference-code", type=Path, default=None)
    parser.add_argument("--hf-python", default=sys.executable)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    models = (args.models or ("turbo" if args.quick else "turbo,tiny-en")).split(",")
    dtype = "bfloat16" if args.device == "cuda" else "float32"
    engines = [("turborank", sys.executable)]
    if args.device == "cuda":
        engines.append(("turborank-torch", sys.executable))
    if args.reference_code is not None:
        engines.append(("hf", args.hf_python))
    cases = (QUICK_CASES + QUICK_SWEEP) if args.quick else (CASES + SWEEP)
    cases = list(dict.fromkeys(cases))  # 1x8192 appears in both lists

    planned = len(models) * len(cases) * len(engines)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for model, checkpoint in _checkpoints(models, args.reference_code, Path(tmp)).items():
            for workload, repeats in cases:
                for engine, python in engines:
                    row = _run_measure(
                        python, checkpoint, engine, workload, repeats, args.device, dtype, args.threads
                    )
                    row["model"] = model
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    # After every case: a run stopped at its time limit keeps what it measured.
                    _write_report(args, models, dtype, rows, planned)
    body = _write_report(args, models, dtype, rows, planned)
    _plot(rows, _stem(args).with_suffix(".png"), body.splitlines()[2])
    print(body)


def _stem(args: argparse.Namespace) -> Path:
    date = datetime.date.today().isoformat()
    return args.out / f"{args.device}_{date}{'_quick' if args.quick else ''}"


def _write_report(
    args: argparse.Namespace, models: list[str], dtype: str, rows: list[dict], planned: int
) -> str:
    """Write <stem>.json and .md for the rows so far; returns the markdown."""
    info = machine_info()
    info["reference"] = next(
        (r["versions"] for r in rows if r.get("engine") == "hf" and "versions" in r), None
    )
    stem = _stem(args)
    args.out.mkdir(parents=True, exist_ok=True)
    notes = _ratios(rows)
    done = f"{len(rows)} of {planned} cases" + ("" if len(rows) == planned else " (incomplete)")
    report = {
        "machine": info,
        "dtype": dtype,
        "models": models,
        "cases_done": done,
        "rows": rows,
        "ratios": notes,
        "command": " ".join(sys.argv),
    }
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    columns = [
        "model",
        "workload",
        "engine",
        "pairs",
        "tokens",
        "median_s",
        "p99_s",
        "pairs_per_s",
        "tokens_per_s",
        "peak_rss_mib",
        "forward_peak_over_resident_mib",
        "error",
    ]
    if args.device == "cuda":
        columns[-3:-1] = ["gpu_allocated_before_mib", "gpu_forward_peak_mib"]
    title = f"{args.device}, {dtype}, {info['date']}: " + ", ".join(
        f"{k} {v}" for k, v in info.items() if k != "date"
    )
    body = f"# turborank benchmarks\n\n{title}\n\n{done}\n\n{markdown_table(rows, columns)}\n\n" + "".join(
        f"- {line}\n" for line in notes
    )
    stem.with_suffix(".md").write_text(body)
    return body


if __name__ == "__main__":
    main()
