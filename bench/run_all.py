"""Run every benchmark on this machine, then rewrite bench/RESULTS.md from bench/results/*.json.

    python bench/run_all.py            # all benchmarks, then the report
    python bench/run_all.py --report   # only rewrite RESULTS.md from the stored results
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["rle_speed.py", "score_speed.py", "eda_speed.py", "check_speed.py", "loader_speed.py", "tta_speed.py",
           "train_overhead.py", "train_throughput.py", "window_infer.py"]


def _table(rows: list[dict]) -> list[str]:
    keys = list(rows[0])
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    out += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return out


def _ablation_rows(variants: list[dict]) -> list[dict]:
    """camvid_fold_ablation: one row per recipe, mIoU at each alpha and the thin classes at each."""
    rows = []
    for v in variants:
        row = {"exp": v["exp"], "train_s": v["run"]["train_s"], "img/s": v["run"]["train_img_per_s"]}
        for alpha, scored in v["by_alpha"].items():
            row[f"mIoU a={alpha}"] = scored["miou"]
            row[f"thin a={alpha}"] = " / ".join(f"{x:.3f}" for x in scored["thin"].values())
        rows.append(row)
    return rows


def _command(r: dict, name: str) -> str:
    """The recorded command, else the script that wrote the result (a simulation draw's
    results are named after the draw, not the script): never a script that does not exist."""
    if r.get("command"):
        return f"`{r['command']}`"
    script = max((p.stem for p in HERE.glob("*.py") if name.startswith(p.stem)), key=len, default=None)
    if script is None:
        return "not recorded"
    exact = script == name and name != "train_throughput"
    return f"`python bench/{script}.py`" + ("" if exact else " (its arguments were not recorded)")


def report() -> str:
    lines = ["# Benchmark results", "",
             "Written by `python bench/run_all.py --report` from `bench/results/*.json`; each section names "
             "the command that produced it and the machine it ran on.", ""]
    for path in sorted((HERE / "results").glob("*.json")):
        r = json.loads(path.read_text())
        name = r.get("bench", path.stem)
        m = r.get("machine", {})
        where = m.get("gpu") or r.get("device") or m.get("cpu", "?")
        if not m.get("gpu") and m.get("cpu_family_model"):  # one model name covers several CPU generations
            flags = ", ".join(m.get("cpu_bf16_flags") or []) or "no native bf16"
            where += f" (family/model {m['cpu_family_model']}, {m.get('cpu_isa', '?')}, {flags})"
        lines += [f"## {name} ({path.stem.rsplit('_', 1)[-1]})", "",
                  f"- command: {_command(r, name)}",
                  f"- machine: {where}; {m.get('cpus', '?')} CPUs; torch {m.get('torch', r.get('torch', '?'))}; "
                  f"measured {r.get('when', '?')}", ""]
        if name == "camvid_fold_ablation":
            rows = _ablation_rows(r.pop("variants"))
            r = {**r, "results": rows, "thin": "Pole / SignSymbol / Pedestrian / Bicyclist IoU"}
        flat = {k: v for k, v in r.items() if k not in ("bench", "machine", "results", "when", "command")}
        if flat:
            lines += [f"- {k}: {json.dumps(v) if isinstance(v, (list, dict)) else v}" for k, v in flat.items()] + [""]
        if r.get("results"):
            lines += _table(r["results"]) + [""]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--report", action="store_true")
    a = p.parse_args()
    if not a.report:
        import torch

        for s in SCRIPTS:
            extra = ["--cpu"] if s == "train_throughput.py" and not torch.cuda.is_available() else []
            print(f"== {s}", flush=True)
            rc = subprocess.call([sys.executable, str(HERE / s), *extra])
            if rc:
                print(f"{s} exited {rc}")
    (HERE / "RESULTS.md").write_text(report())
    print(f"wrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
