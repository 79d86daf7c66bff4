"""The benchmark suite: turborank against the peers a user would pick instead, one command.

    python -m benchmarks.cpu.run [--device cpu|cuda] [--quick] [--reference-code DIR --hf-python PY]
        [--onnx] [--rounds N] [--threads N]

Checkpoints are synthetic (real formats, random weights) with the turbo and tiny-en shapes. The HF
reference engine runs a snapshot's own ``modeling_bert.py`` through transformers' remote code:
``--reference-code`` names a folder holding ``modeling_bert.py`` and ``configuration_bert.py`` (the
real snapshot's, or the public JinaBERT code in a scratch folder; never committed here), copied next
to the synthetic weights in a temporary directory; ``--hf-python`` is a Python with a 4.4x
transformers. With the reference code the peers are that code fed batches in input order ("hf") and
length-sorted ("hf-sorted"); ``--onnx`` adds ONNX Runtime on the reference exported to ONNX, fp32 and
dynamic int8 ("ort-fp32", "ort-int8"; exported once per checkpoint by ``benchmarks.cpu.onnx_export`` and
cached outside the repository). On CPU turborank also runs in bf16 ("turborank-bf16", opt-in there).

Every (model, engine, workload) runs in a fresh process (``benchmarks.cpu.measure``); the engines of a
case take turns, ``--rounds`` times, so that the load of a shared machine falls on all of them alike.
A row gives the best time of all rounds (min_s), the median of the per-round medians, and the largest
peak RSS of any round. Each engine's logits are compared with the reference's fp32 logits (turborank's
fp32 ones when the reference is not run): the largest |difference| and the share of document pairs
ranked in the same order. Writes ``<out>/<device>_<date>.json``, ``.md`` and ``.png``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.report import machine_info, markdown_table

ROOT = Path(__file__).resolve().parents[2]
# (workload, repeats): the model-card example for latency percentiles, then throughput cases.
CASES = [("card", 30), ("10x512", 5), ("mixed:64:30-2000", 2), ("1x8192", 2)]
# Engines that take minutes per call on the long cases time one call there (after the warm-up).
SLOW_PEERS = ("hf", "hf-sorted", "ort-fp32", "ort-int8")
LONG_CASES = ("mixed:64:30-2000", "1x8192")
# The peers: what a CPU user would run instead of turborank.
PEERS = ("ort-fp32", "ort-int8", "hf-sorted", "hf")
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
    slopes: str | None = None,
    batch_size: int | None = None,
    busy: int = 0,
) -> dict:
    cmd = [
        python,
        "-W",
        "ignore",
        "-m",
        "benchmarks.cpu.measure",
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
    if slopes and engine.startswith("turborank"):
        cmd += ["--slopes", slopes]
    if batch_size and not engine.startswith("turborank"):
        cmd += ["--batch-size", str(batch_size)]
    proc = _run_beside_busy_loops(cmd, busy)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        # A process killed by a signal (the kernel's OOM killer: SIGKILL) leaves no message of its
        # own; the last line of stderr is then some earlier warning.
        if proc.returncode < 0 or not lines:
            why = f"killed by signal {-proc.returncode} (the kernel's OOM killer sends 9)"
        else:
            why = lines[-1][:300]
        return {"engine": engine, "workload": workload, "error": why}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _run_beside_busy_loops(cmd: list[str], busy: int) -> subprocess.CompletedProcess:
    """``cmd`` from the repository root, with ``busy`` processes spinning on the CPU meanwhile: a
    machine whose cores are shared (``--busy``)."""
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


def _gemm_rates(threads: int | None, model: str) -> dict:
    """The CPU's GEMM ceiling at the model's shapes (``benchmarks.cpu.gemm_rates``), in a fresh
    process with the engines' thread count."""
    cmd = [sys.executable, "-W", "ignore", "-m", "benchmarks.cpu.gemm_rates", "--model", model]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]}
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


def _aggregate(runs: list[dict]) -> dict:
    """One row from the rounds of an (engine, case): best time, median of the round medians,
    largest peak RSS; failed rounds are counted, and a case whose every round failed is an error."""
    good = [r for r in runs if "error" not in r]
    if len(good) <= 1:
        return {**(good or runs)[-1], "rounds": len(good), "failed_rounds": len(runs) - len(good)}
    row = dict(good[-1])
    row["rounds"] = len(good)
    row["failed_rounds"] = len(runs) - len(good)
    row["min_s"] = min(r["min_s"] for r in good)
    row["median_s"] = statistics.median(r["median_s"] for r in good)
    row["p99_s"] = max(r["p99_s"] for r in good)
    row["pairs_per_s"] = row["pairs"] / row["median_s"]
    row["tokens_per_s"] = row["tokens"] / row["median_s"]
    if "forward_gflop" in row:
        row["gflop_per_s"] = row["forward_gflop"] / row["median_s"]
    row["peak_rss_mib"] = max(r["peak_rss_mib"] for r in good)
    row["load_avg_1min"] = [r.get("load_avg_1min") for r in good]
    return row


def _agreement(rows: list[dict]) -> None:
    """Add, per row, the largest |logit - baseline logit| and the share of document pairs ranked
    in the same order; the baseline is the reference code in fp32 ("hf", else "hf-sorted"), else
    turborank fp32."""
    by_key = {(r["model"], r["workload"], r["engine"]): r for r in rows if "logits" in r}
    for row in rows:
        if "logits" not in row:
            continue
        case = (row["model"], row["workload"])
        base = next(
            (by_key[(*case, e)] for e in ("hf", "hf-sorted", "turborank") if (*case, e) in by_key), None
        )
        for field in ("logit_error_vs", "max_abs_logit_diff", "rank_agreement"):
            row.pop(field, None)  # from an earlier baseline
        if base is None or base is row:
            continue
        got, want = row["logits"], base["logits"]
        row["logit_error_vs"] = base["engine"]
        row["max_abs_logit_diff"] = max(abs(a - b) for a, b in zip(got, want, strict=True))
        pairs = [(i, j) for i in range(len(got)) for j in range(i + 1, len(got)) if want[i] != want[j]]
        same = sum((got[i] - got[j]) * (want[i] - want[j]) > 0 for i, j in pairs)
        row["rank_agreement"] = same / len(pairs) if pairs else 1.0


def _ceiling_shares(rows: list[dict], gemm: dict[str, dict[str, dict]]) -> None:
    """Per turborank row, its forward's GFLOP/s as a share of the CPU's GEMM ceiling in its dtype
    (the best of the before and after measurements: the ceiling is the best the CPU did)."""
    for row in rows:
        rates = gemm.get(row.get("model"), {})
        label = {"float32": "fp32", "bfloat16": "bf16"}.get(row.get("dtype"))
        ceilings = [r.get(f"best_{label}") for r in rates.values() if r.get(f"best_{label}")]
        row.pop("share_of_gemm_ceiling", None)
        if row.get("engine", "").startswith("turborank") and ceilings and "gflop_per_s" in row:
            row["gemm_ceiling_gflop_per_s"] = max(ceilings)
            row["share_of_gemm_ceiling"] = row["gflop_per_s"] / max(ceilings)


def _slowdowns(rows: list[dict], idle_rows: list[dict], notes: list[str]) -> None:
    """Each row's median over the same (model, workload, engine) of an idle run: how much a machine
    whose cores are shared slows each engine down."""
    idle = {(r["model"], r["workload"], r["engine"]): r for r in idle_rows if "error" not in r}
    for row in rows:
        base = idle.get((row.get("model"), row.get("workload"), row.get("engine")))
        if base is not None and "median_s" in row:
            row["slowdown_vs_idle"] = row["median_s"] / base["median_s"]
            notes.append(
                f"{row['model']} {row['workload']} {row['engine']}: {row['median_s']:.4g} s busy against "
                f"{base['median_s']:.4g} s idle, {row['slowdown_vs_idle']:.2f}x"
            )


def _gemm_lines(gemm: dict[str, dict[str, dict]]) -> list[str]:
    lines = []
    for model, moments in gemm.items():
        for moment, rates in moments.items():
            if "error" in rates:
                lines.append(f"GEMM ceiling ({model}, {moment}): failed: {rates['error']}")
                continue
            engines = ", ".join(
                f"{key} {figures['layer']:.0f}"
                for key, figures in rates.items()
                if isinstance(figures, dict) and "layer" in figures
            )
            lines.append(
                f"GEMM ceiling ({model}, {moment} the cases, {rates['threads']} threads, "
                f"{rates['rows']} rows, GFLOP/s over one layer's four GEMMs): {engines}; "
                f"best fp32 {rates['best_fp32']:.0f}, "
                f"best bf16 {rates['best_bf16']:.0f}"
            )
    return lines


def _ratios(rows: list[dict]) -> list[str]:
    """turborank's engines against the strongest peer of each case (the one with the lowest median
    time), with every peer's ratio after it."""
    lines = []
    by_case: dict[tuple[str, str], dict[str, dict]] = {}
    for r in rows:
        if "error" not in r:
            by_case.setdefault((r["model"], r["workload"]), {})[r["engine"]] = r
    for (model, workload), engines in sorted(by_case.items()):
        peers = sorted((e for e in engines if e in PEERS), key=lambda e: engines[e]["median_s"])
        for ours in ("turborank", "turborank-bf16", "turborank-torch"):
            if ours not in engines or not peers:
                continue
            row = engines[ours]
            each = ", ".join(f"{p} {engines[p]['median_s'] / row['median_s']:.2f}x" for p in peers)
            best = engines[peers[0]]
            line = (
                f"{model} {workload}: {ours} median {row['median_s']:.4g} s; strongest peer {peers[0]} "
                f"{best['median_s']:.4g} s ({best['median_s'] / row['median_s']:.2f}x turborank's time); "
                f"all peers: {each}"
            )
            if workload.endswith("x8192"):
                line += f"; peak RSS {row['peak_rss_mib']:.0f} MiB vs {best['peak_rss_mib']:.0f} MiB"
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


def _engines(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """(engine, python, dtype) in the order they take turns."""
    dtype = "bfloat16" if args.device == "cuda" else "float32"
    engines = [("turborank", sys.executable, dtype)]
    if args.device == "cuda":
        engines.append(("turborank-torch", sys.executable, dtype))
    elif not args.no_bf16:
        engines.append(("turborank-bf16", sys.executable, "bfloat16"))
    if args.onnx:
        engines += [("ort-fp32", args.hf_python, dtype), ("ort-int8", args.hf_python, dtype)]
    if args.reference_code is not None:
        engines += [("hf-sorted", args.hf_python, dtype), ("hf", args.hf_python, dtype)]
    return [e for e in engines if e[0] not in args.skip.split(",")]


def _export_onnx(python: str, checkpoint: Path) -> None:
    """The ONNX peer's models, in a process of their own (the export peaks at several GiB)."""
    cmd = [python, "-W", "ignore", "-m", "benchmarks.cpu.onnx_export", str(checkpoint)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"ONNX export failed: {proc.stderr.strip().splitlines()[-1][:300]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="fewer and smaller cases (minutes, not tens)")
    parser.add_argument(
        "--models", default=None, help="comma list of presets (default turbo,tiny-en; quick: turbo)"
    )
    parser.add_argument("--reference-code", type=Path, default=None)
    parser.add_argument("--hf-python", default=sys.executable)
    parser.add_argument("--onnx", action="store_true", help="ONNX Runtime peers (needs --reference-code)")
    parser.add_argument("--no-bf16", action="store_true", help="on CPU, skip the turborank bf16 engine")
    parser.add_argument("--rounds", type=int, default=1, help="turns each engine takes per case")
    parser.add_argument(
        "--long-rounds", type=int, default=None, help="rounds of the long cases (default --rounds)"
    )
    parser.add_argument("--no-sweep", action="store_true", help="skip the throughput-vs-length sweep")
    parser.add_argument("--skip", default="", help="comma list of engines to leave out")
    parser.add_argument("--cases", default="", help="comma list of workloads to run (default: all)")
    parser.add_argument(
        "--peer-batch-size",
        type=int,
        default=None,
        help="pairs per padded batch for the peers (default 32); turborank packs by tokens",
    )
    parser.add_argument(
        "--slopes",
        choices=["standard", "jina-reranker-v1"],
        default=None,
        help="turborank's ALiBi scheme: the one the reference code uses (the public JinaBERT code: "
        "standard), else turborank follows config.json and the logits cannot be compared",
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--busy",
        type=int,
        default=0,
        help="processes spinning on the CPU during every measurement (a machine whose cores are shared)",
    )
    parser.add_argument(
        "--idle-report",
        type=Path,
        default=None,
        help="with --busy: a finished idle run's JSON; each row then shows its slowdown against it",
    )
    parser.add_argument(
        "--no-gemm-rates",
        action="store_true",
        help="skip the GEMM ceiling measured before and after the cases",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--report-from", type=Path, default=None, help="rewrite the report of a finished run's JSON"
    )
    args = parser.parse_args()
    if args.report_from is not None:
        saved = json.loads(args.report_from.read_text())
        rows = saved["rows"]
        args.rounds, args.long_rounds = saved["rounds"]["short"], saved["rounds"]["long"]
        args.busy = saved.get("busy", 0)
        _agreement(rows)
        print(
            _write_report(
                args,
                saved["models"],
                rows,
                len(rows),
                saved["machine"],
                saved["command"],
                saved.get("gemm_rates"),
            )
        )
        return
    if args.onnx and (args.reference_code is None or args.device != "cpu"):
        parser.error("--onnx exports the reference code (--reference-code) and runs on CPU")

    models = (args.models or ("turbo" if args.quick else "turbo,tiny-en")).split(",")
    engines = _engines(args)
    cases = QUICK_CASES if args.quick else CASES
    if args.cases:
        cases = [case for case in cases if case[0] in args.cases.split(",")]
    sweep = [] if args.no_sweep else (QUICK_SWEEP if args.quick else SWEEP)
    sweep = [case for case in sweep if case not in cases]  # 1x8192 appears in both lists

    planned = len(models) * (len(cases) * len(engines) + len(sweep) * 2)
    rows: list[dict] = []
    # Measured before and after the cases: a ceiling that moved between the two says the machine did.
    gemm: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model, checkpoint in _checkpoints(models, args.reference_code, Path(tmp)).items():
            if args.onnx:
                _export_onnx(args.hf_python, checkpoint)
            if args.device == "cpu" and not args.no_gemm_rates:
                gemm[model] = {"before": _gemm_rates(args.threads, model)}
            plan = [(case, engines) for case in cases] + [(case, engines[:2]) for case in sweep]
            for (workload, repeats), case_engines in plan:
                long = workload in LONG_CASES
                rounds = (args.long_rounds or args.rounds) if long else args.rounds
                runs: dict[str, list[dict]] = {name: [] for name, _, _ in case_engines}
                for _ in range(rounds):
                    for engine, python, dtype in case_engines:
                        reps = 1 if long and engine in SLOW_PEERS else repeats
                        measured = _run_measure(
                            python,
                            checkpoint,
                            engine,
                            workload,
                            reps,
                            args.device,
                            dtype,
                            args.threads,
                            args.slopes,
                            args.peer_batch_size,
                            args.busy,
                        )
                        runs[engine].append(measured)
                for engine, _, _ in case_engines:
                    row = _aggregate(runs[engine])
                    row["model"] = model
                    rows.append(row)
                    print(json.dumps({k: v for k, v in row.items() if k != "logits"}), flush=True)
                _agreement(rows)
                _ceiling_shares(rows, gemm)
                # After every case: a run stopped at its time limit keeps what it measured.
                _write_report(args, models, rows, planned, gemm_rates=gemm)
            if model in gemm:
                gemm[model]["after"] = _gemm_rates(args.threads, model)
                _ceiling_shares(rows, gemm)
    body = _write_report(args, models, rows, planned, gemm_rates=gemm)
    try:
        _plot(rows, _stem(args).with_suffix(".png"), body.splitlines()[2])
    except ImportError:
        # The plot is a convenience; the report above is the result, and a long run must not end
        # in a traceback over it.
        print("benchmarks.cpu.run: matplotlib is not installed, so no plot (the report is written)")
    print(body)


def _stem(args: argparse.Namespace) -> Path:
    date = datetime.date.today().isoformat()
    busy = f"_busy{args.busy}" if args.busy else ""
    return args.out / f"{args.device}_{date}{'_quick' if args.quick else ''}{busy}"


def _write_report(
    args: argparse.Namespace,
    models: list[str],
    rows: list[dict],
    planned: int,
    info: dict | None = None,
    command: str | None = None,
    gemm_rates: dict | None = None,
) -> str:
    """Write <stem>.json and .md for the rows so far; returns the markdown."""
    info = info or machine_info()
    peers = [r for r in rows if r.get("engine", "").startswith(("hf", "ort")) and "versions" in r]
    info["reference"] = peers[-1]["versions"] if peers else None
    stem = _stem(args)
    args.out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    if getattr(args, "idle_report", None) is not None:
        _slowdowns(rows, json.loads(args.idle_report.read_text())["rows"], notes)
    notes += _ratios(rows) + _gemm_lines(gemm_rates or {})
    if args.busy:
        notes.insert(0, f"every measurement ran beside {args.busy} processes spinning on the CPU (--busy)")
    done = f"{len(rows)} of {planned} cases" + ("" if len(rows) == planned else " (incomplete)")
    report = {
        "machine": info,
        "models": models,
        "rounds": {"short": args.rounds, "long": args.long_rounds or args.rounds},
        "cases_done": done,
        "rows": rows,
        "ratios": notes,
        "gemm_rates": gemm_rates or {},
        "busy": args.busy,
        "command": command or " ".join(sys.argv),
    }
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    columns = [
        "model",
        "workload",
        "engine",
        "dtype",
        "pairs",
        "tokens",
        "min_s",
        "median_s",
        "pairs_per_s",
        "gflop_per_s",
        "share_of_gemm_ceiling",
        "slowdown_vs_idle",
        "peak_rss_mib",
        "max_abs_logit_diff",
        "rank_agreement",
        "rounds",
        "error",
    ]
    if args.device == "cuda":
        columns[-5:-5] = ["gpu_allocated_before_mib", "gpu_forward_peak_mib"]
    title = f"{args.device}, {info['date']}: " + ", ".join(f"{k} {v}" for k, v in info.items() if k != "date")
    body = f"# turborank benchmarks\n\n{title}\n\n{done}\n\n{markdown_table(rows, columns)}\n\n" + "".join(
        f"- {line}\n" for line in notes
    )
    stem.with_suffix(".md").write_text(body)
    return body


if __name__ == "__main__":
    main()
