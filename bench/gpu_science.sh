#!/usr/bin/env bash
# The GPU-scale science check (docs/benchmark.md): L_nce and the full method (L_rc + L_mi + L_td)
# pretrained on the shapes benchmark at 112 px with a width-1 R3D-18 (configs/shapes-gpu.yaml),
# then the per-factor probe and the mechanism diagnostics of both, JSON under $OUT.
# Each run trains in <= 4 minutes on one H200; run it only after the GPU kernel checks
# (bench/gpu_check.sh) have passed. Usage (repo root): OUT=/some/dir bash bench/gpu_science.sh
# SCIENCE_TINY=1 runs the same steps at a CPU-smoke size (what CI-like checks can afford).
set -u
OUT=${OUT:-$PWD/out}
PY=${PY:-python3}
mkdir -p "$OUT/science"
start=$(date +%s)
step() { echo "== $1 ($(( $(date +%s) - start ))s)" | tee -a "$OUT/science/steps.log"; }
EXTRA=()
LIMIT=${SCIENCE_RUN_TIMEOUT:-300}
if [ "${SCIENCE_TINY:-0}" = "1" ]; then
  EXTRA=(shapes.train_per_class=2 shapes.test_per_class=4 shapes.num_frames=16 shapes.size=32
         augment.size=32 augment.global_frames=8 augment.clip_frames=8 model.width=0.125 model.proj_hidden=32
         model.proj_dim=16 mi.hidden=16 td.hidden=16 batch_size=8 epochs=1 num_workers=0 eval.linear_epochs=5
         log.progress=false)
  LIMIT=${SCIENCE_RUN_TIMEOUT:-120}
fi
declare -A ROWS=([l_nce]="nce=true rc=false mi=false td=false" [full]="rc=true mi=true td=true")
for row in l_nce full; do
  step "train $row"
  # shellcheck disable=SC2086
  timeout "$LIMIT" $PY -m ctrlaug.train --config configs/shapes-gpu.yaml ${ROWS[$row]} \
    out_dir="$OUT/science/$row" resume=none log.tensorboard=false log.plot=false "${EXTRA[@]}" \
    > "$OUT/science/$row.log" 2>&1
  echo "train $row rc=$?" | tee -a "$OUT/science/steps.log"
  tail -8 "$OUT/science/$row.log"
  step "diagnose $row"
  timeout "$LIMIT" $PY -m ctrlaug.diagnose "$OUT/science/$row" --out "$OUT/science/$row" \
    $([ "${SCIENCE_TINY:-0}" = "1" ] && echo --videos 16) > "$OUT/science/$row.diagnose.log" 2>&1
  echo "diagnose $row rc=$?" | tee -a "$OUT/science/steps.log"
  tail -4 "$OUT/science/$row.diagnose.log"
done
step "summary"
$PY - "$OUT/science" <<'PYEOF' | tee "$OUT/science/summary.md"
import json, os, sys
root = sys.argv[1]
out = {}
for row in ("l_nce", "full"):
    r = {}
    for name in ("probe", "diagnose"):
        p = os.path.join(root, row, f"{name}.json")
        if os.path.isfile(p):
            with open(p) as f:
                r[name] = json.load(f)
    out[row] = r
with open(os.path.join(root, "science.json"), "w") as f:
    json.dump(out, f, indent=1)
print("| row | factor | trained | random-init | chance |\n|---|---|---|---|---|")
for row, r in out.items():
    for fac, v in r.get("probe", {}).get("factors", {}).items():
        print(f"| {row} | {fac} | {v['trained']} | {v['random_init']} | {v['chance']} |")
PYEOF
step "done"
