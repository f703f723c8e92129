"""Turn a pytest-benchmark JSON into the markdown table kept in bench/RESULTS.md.

python bench/summarize.py .benchmarks/.../0001_x.json
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def main(path: str) -> None:
    data = json.load(open(path))
    groups: dict[str, list[dict]] = defaultdict(list)
    for b in data["benchmarks"]:
        groups[b["group"]].append(b)
    machine = None
    for name, rows in groups.items():
        base = {r["extra_info"].get("provider"): r["stats"]["median"] for r in rows}
        print(f"\n### {name}\n")
        print("| provider | median ms | TFLOP/s | x matmul | vs eager | vs compile | peak extra MiB |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            e = r["extra_info"]
            machine = machine or e.get("device")
            med = r["stats"]["median"]
            tf = e.get("tflops")
            frac = e.get("fraction_of_matmul")
            vs = [f"{base[k] / med:.2f}x" if k in base else "-" for k in ("eager", "compile")]
            print(
                f"| {e.get('provider')} | {med * 1e3:.3f} | {'-' if tf is None else f'{tf:.2f}'} | "
                f"{'-' if frac is None else f'{frac:.2f}'} | {vs[0]} | {vs[1]} | {e.get('peak_extra_mib', 0):.1f} |"
            )
    print(f"\nmachine: {machine}; torch {rows[0]['extra_info'].get('torch')}")


if __name__ == "__main__":
    main(sys.argv[1])
