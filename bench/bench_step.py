"""Training-step time breakdown: data, augmentation, encoder, each loss, optimizer, whole step.

    python bench/bench_step.py                      # CPU: the demo model (width 1/8, 8x48x48 views)
    python bench/bench_step.py --preset gpu         # CUDA: R3D-18, 16x112x112, K=4, bf16, batch 32
    python bench/bench_step.py --preset gpu batch_size=64 --json out.json   # any config key=value

Parts (median of ``--reps`` timed calls after warm-up, device synchronised inside each call):

* data: one batch from the DataLoader (decode/render + tau_p crop in the workers, collate);
* augmentation: tau_l levels + colour jitter + blur on the device, normalisation;
* encoder: f on the K clips and f' on the global views, forward + backward (random grads);
* each loss: forward + backward of that loss alone (heads included) on fixed encoder features;
* losses (all): every enabled loss together, as in the step;
* optimizer: the two Adam steps;
* step: ``Trainer.run_step`` on a ready batch (augmentation + forward + backward + optimizer).

The parts use the trainer's own phases: ``Trainer.prepare_views`` (levels and tau_l as in the
step), ``CtrlAugObjective.encode`` and ``CtrlAugObjective.losses`` (``only=`` one loss).

The issue's GPU target is augmentation + losses <= 15% of the step.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import time_once  # noqa: E402

from ctrlaug.config import load_config  # noqa: E402
from ctrlaug.engine.trainer import Trainer  # noqa: E402

PRESETS = {
    "cpu": [
        "log.progress=false",
        "log.plot=false",
        "log.tensorboard=false",
        "eval.linear=false",
        "resume=none",
        "num_workers=0",
    ],
    "gpu": [
        "log.progress=false",
        "log.plot=false",
        "log.tensorboard=false",
        "eval.linear=false",
        "resume=none",
        "device=cuda",
        "model.width=1.0",
        "model.proj_hidden=512",
        "model.proj_dim=128",
        "mi.hidden=512",
        "td.hidden=512",
        "batch_size=32",
        "augment.size=112",
        "augment.global_frames=16",
        "augment.clip_frames=16",
        "augment.levels_per_step=32",
        "synthetic.size=128",
        "synthetic.num_frames=64",
        "synthetic.train_per_class=16",
        "num_workers=8",
    ],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--data-batches", type=int, default=3, help="batches timed for the data part")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("overrides", nargs="*", help="config key=value")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", category=RuntimeWarning, message="ctrlaug: no fused backend")
    cfg = load_config(
        None, PRESETS[args.preset] + [f"out_dir=/tmp/ctrlaug_bench_{os.getpid()}"] + args.overrides
    )
    tr = Trainer(cfg)
    dev, obj = tr.device, tr.obj
    amp = (
        torch.autocast(dev.type, dtype=tr.amp_dtype) if tr.amp_dtype is not None else contextlib.nullcontext()
    )
    res: dict[str, float] = {}

    # ---- data: batches straight from the loader (workers decode/render and crop) ----------------
    it = iter(tr.loader)
    batch = next(it)  # also starts the workers
    ts = []
    for _ in range(args.data_batches):
        t0 = time.perf_counter()
        try:
            next(it)
        except StopIteration:
            break
        ts.append(time.perf_counter() - t0)
    res["data"] = sorted(ts)[len(ts) // 2] if ts else float("nan")
    del it

    # ---- augmentation (tau_l on the device) -----------------------------------------------------
    B, V = batch["boxes"].shape[:2]
    res["augmentation"] = time_once(lambda: tr.prepare_views(batch), dev, args.reps)
    inp = tr.prepare_views(batch)
    clips, glob = inp.clips, inp.global_views

    # ---- encoder forward + backward --------------------------------------------------------------
    with torch.no_grad(), amp:
        fc0, fg0 = obj.encode(clips, glob)
    gc, gg = torch.randn_like(fc0), torch.randn_like(fg0)

    def encoder():
        with amp:
            fc, fg = obj.encode(clips, glob)
        torch.autograd.backward([fc, fg], [gc, gg])

    res["encoder"] = time_once(encoder, dev, args.reps)

    # ---- losses on fixed features ----------------------------------------------------------------
    queue = tr.queue.get()
    fc_f, fg_f = fc0.float(), fg0.float()

    def losses(only=None):
        fc = fc_f.detach().requires_grad_()
        fg = fg_f.detach().requires_grad_()
        out = obj.losses(fc, fg, dataclasses.replace(inp, step_seed=1), queue, only=only)
        out["loss"].backward()

    for n in obj.enabled:
        res[f"loss_{n}"] = time_once(lambda n=n: losses((n,)), dev, args.reps)
    res["losses (all)"] = time_once(losses, dev, args.reps)

    # ---- optimizer -----------------------------------------------------------------------------
    def opt_step():
        tr.optimizer.step()
        if tr.mi_optimizer is not None:
            tr.mi_optimizer.step()

    res["optimizer"] = time_once(opt_step, dev, args.reps)

    # ---- whole step (augmentation + forward + backward + optimizer) ---------------------------
    res["step"] = time_once(lambda: tr.run_step(batch), dev, args.reps)
    if dev.type == "cuda":
        res["peak_mem_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30

    from ctrlaug.ops import status

    st = status()
    info = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu {platform.machine()}",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "preset": args.preset,
        "batch_videos": B,
        "views_per_video": V,
        "view_shape": list(glob.shape[1:]),
        "clip_grid": list(fc0.shape[2:]),
        "global_grid": list(fg0.shape[2:]),
        "amp": str(tr.amp_dtype),
        "ops_backend": "cpp" if st["cpp"] else ("cuda/triton" if dev.type == "cuda" else "reference"),
        "overrides": args.overrides,
    }
    step = res["step"]
    share = (res["augmentation"] + res["losses (all)"]) / step
    print(
        f"# step breakdown ({info['device']}, {B} videos x {V} views of {info['view_shape']}, amp {info['amp']})"
    )
    print("| part | ms | % of step |")
    print("|---|---:|---:|")
    for k, v in res.items():
        if k == "peak_mem_gib":
            continue
        print(f"| {k} | {v * 1e3:.1f} | {100 * v / step:.1f} |")
    print(f"augmentation + losses = {100 * share:.1f}% of the step (GPU target <= 15%)")
    print(
        f"clips/s (step only) = {B * V / step:.1f}; with data on the critical path = {B * V / (step + res['data']):.1f}"
    )
    if "peak_mem_gib" in res:
        print(f"peak GPU memory {res['peak_mem_gib']:.1f} GiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "seconds": res, "aug_plus_losses_share": share}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
