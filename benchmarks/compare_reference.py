"""turborank vs the checkpoint's own HF reference code on CPU: pairs/s and peak memory.

    python -m benchmarks.compare_reference SNAPSHOT_DIR --hf-python /path/to/python-with-transformers-4.4x

SNAPSHOT_DIR is a reranker snapshot with its ``modeling_bert.py`` (the real one, or a synthetic
checkpoint from ``turborank.testing`` with a copy of the public JinaBERT code placed next to it in a
scratch folder; that code is never committed here). Each (engine, case) runs in a fresh process
(``benchmarks.measure``). Writes a JSON and a markdown table under --out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

CASES = {"10x512": (10, 512, 5), "1x8192": (1, 8192, 2)}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_case(python: str, checkpoint: str, engine: str, case: str, threads: int | None) -> dict:
    pairs, tokens, repeats = CASES[case]
    cmd = [
        python,
        "-W",
        "ignore",
        "-m",
        "benchmarks.measure",
        checkpoint,
        "--engine",
        engine,
        "--pairs",
        str(pairs),
        "--tokens",
        str(tokens),
        "--repeats",
        str(repeats),
    ]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if proc.returncode != 0:
        raise RuntimeError(f"{engine} {case} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(report: dict) -> str:
    lines = [
        f"CPU reference comparison, {report['date']}: {report['cpu']} "
        f"({report['threads'] or 'default'} threads), "
        f"{report['checkpoint_shape']} shapes, fp32.",
        "",
        "| case | engine | pairs/s | median s | peak RSS MiB | forward peak over resident MiB |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['case']} | {r['engine']} | {r['pairs_per_s']:.3f} | {r['median_s']:.3f} | "
            f"{r['peak_rss_mib']:.0f} | {r['forward_peak_over_resident_mib']:.0f} |"
        )
    lines.append("")
    for case, ratio in report["ratios"].items():
        lines.append(
            f"- {case}: turborank {ratio['speedup']:.2f}x the reference's pairs/s, "
            f"{ratio['peak_rss_ratio']:.3f}x its peak RSS"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("snapshot")
    parser.add_argument("--hf-python", default=sys.executable, help="a Python with transformers 4.4x")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    config = json.loads((Path(args.snapshot) / "config.json").read_text())
    results = []
    for case in args.cases.split(","):
        for engine, python in (("turborank", sys.executable), ("hf", args.hf_python)):
            result = run_case(python, args.snapshot, engine, case, args.threads)
            result["case"] = case
            results.append(result)
            print(json.dumps(result), flush=True)
    ratios = {}
    for case in args.cases.split(","):
        ours, ref = (
            next(r for r in results if r["case"] == case and r["engine"] == e) for e in ("turborank", "hf")
        )
        ratios[case] = {
            "speedup": ours["pairs_per_s"] / ref["pairs_per_s"],
            "peak_rss_ratio": ours["peak_rss_mib"] / ref["peak_rss_mib"],
        }
    report = {
        "date": datetime.date.today().isoformat(),
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "threads": args.threads,
        "python": platform.python_version(),
        "checkpoint_shape": {
            k: config[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads")
        },
        "results": results,
        "ratios": ratios,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"cpu_vs_reference_{report['date']}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
