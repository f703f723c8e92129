"""Turn a pytest-benchmark JSON into the markdown table kept in bench/RESULTS.md.

python bench/summarize.py .benchmarks/.../0001_x.json

"x sgemm" divides a row's TFLOP/s by the faster of the same group's sgemm rows, ``matmul`` (torch's
matmul: MKL on x86 wheels) and, on the CPU, ``onednn`` (oneDNN's sgemm), square matmuls of the same
FLOP count timed in the same run; the group's header names the faster. Older JSONs without those
rows use their stored fraction of matmul.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def main(path: str) -> None:
    data = json.load(open(path))
    groups: dict[str, list[dict]] = defaultdict(list)
    for b in data["benchmarks"]:
        groups[b["group"]].append(b)
    machine = torch_version = None
    for name, rows in groups.items():
        base = {r["extra_info"].get("provider"): r["stats"]["median"] for r in rows}
        sgemm = {
            r["extra_info"]["provider"]: r["extra_info"].get("tflops")
            for r in rows
            if r["extra_info"].get("provider") in ("matmul", "onednn") and r["extra_info"].get("tflops")
        }
        by = max(sgemm, key=sgemm.get) if sgemm else None
        mm = sgemm.get(by)
        loads = [x for r in rows for x in r["extra_info"].get("load_average_1min", [])]
        print(f"\n### {name}\n")
        if by:
            print(f"x sgemm against the faster same-run sgemm: {by}\n")
        print("| provider | median ms | TFLOP/s | x sgemm | vs eager | vs compile | peak extra MiB |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            e = r["extra_info"]
            machine = machine or e.get("device")
            torch_version = torch_version or e.get("torch")
            med = r["stats"]["median"]
            tf = e.get("tflops")
            frac = tf / mm if (tf is not None and mm) else e.get("fraction_of_matmul")
            vs = [f"{base[k] / med:.2f}x" if k in base else "-" for k in ("eager", "compile")]
            print(
                f"| {e.get('provider')} | {med * 1e3:.3f} | {_fmt(tf, '.3f')} | {_fmt(frac, '.2f')} | {vs[0]} | "
                f"{vs[1]} | {e.get('peak_extra_mib', 0):.1f} |"
            )
        if loads:
            print(f"\n1-minute load average during the group: {min(loads):.1f} to {max(loads):.1f}")
    print(f"\nmachine: {machine}; torch {torch_version}")


if __name__ == "__main__":
    main(sys.argv[1])
