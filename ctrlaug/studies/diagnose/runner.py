"""One diagnostics command (``python -m ctrlaug.diagnose``): its options (:class:`DiagnoseOptions`)
and :func:`run`, which loads the encoder, diagnoses it (or runs the order study with
``--order``) and writes the report."""

from __future__ import annotations

import dataclasses
import os

import torch

from ctrlaug.errors import EvalError
from ctrlaug.eval.encoder import load_encoder, resolve_device
from ctrlaug.eval.floor import FLOOR_INITS
from ctrlaug.reports import write_json
from ctrlaug.studies.diagnose.measure import diagnose
from ctrlaug.studies.diagnose.order import order_study
from ctrlaug.studies.diagnose.report import floor_summary, fmt_value, summary_line, write_report
from ctrlaug.utils.provenance import provenance
from ctrlaug.utils.safeio import check_output_dir

__all__ = ["DiagnoseOptions", "run"]


@dataclasses.dataclass
class DiagnoseOptions:
    """One diagnostics run (the ``python -m ctrlaug.diagnose`` arguments, see :func:`build_parser`)."""

    checkpoint: str | None = None  # ckpt_*.pt file or a run folder
    random_init: bool = False  # random-init encoder of the same config
    config: str | None = None  # model/data config YAML (default: the checkpoint's own)
    set: list[str] = dataclasses.field(default_factory=list)  # KEY=VALUE config overrides
    videos: int = 256  # held-out (and train) videos, >= 4
    levels: int = 4  # tau_l levels per held-out clip
    seed: int = 0  # levels, video halves and probes
    out: str | None = None  # default: the checkpoint's run folder
    threads: int = 0  # torch CPU threads (0 = default)
    device: str = "auto"
    order: bool = False  # the L_td order study instead of the four measurements (order.json)
    progress: bool = True  # progress bars on stderr


def run(opts: DiagnoseOptions, log=print) -> dict:
    """Load the encoder named by ``opts``, diagnose it, write JSON and markdown; bad input raises
    :class:`ctrlaug.errors.EvalError`."""
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if opts.videos < 4:
        raise EvalError(f"--videos must be >= 4, got {opts.videos}")
    if opts.out:  # an unwritable --out is one line before anything is loaded or computed
        check_output_dir(opts.out, "--out folder")
    device = resolve_device(opts.device)
    enc, cfg, ckpt = load_encoder(opts.checkpoint, opts.config, opts.random_init, opts.set)
    out = check_output_dir(opts.out or (os.path.dirname(ckpt) if ckpt else cfg.out_dir), "output folder")
    if opts.order:
        return _run_order(opts, enc, cfg, ckpt, device, log)

    def one(encoder):
        return diagnose(
            encoder,
            cfg,
            videos=opts.videos,
            levels=opts.levels,
            seed=opts.seed,
            device=device,
            progress=opts.progress,
        )

    res = {
        "checkpoint": ckpt,
        "random_init": bool(opts.random_init),
        **one(enc),
        "provenance": provenance(device),
    }
    if opts.random_init:  # the floor over FLOOR_INITS random inits (ctrlaug.eval.floor), the first above
        more = [
            one(load_encoder(opts.checkpoint, opts.config, True, opts.set, init=i)[0])
            for i in range(1, FLOOR_INITS)
        ]
        res["floor"] = floor_summary([res, *more])
    stem = write_report(res, os.path.join(out, "diagnose" + ("_random" if opts.random_init else "")))
    log(summary_line(res) + f" -> {stem}.json")
    return res


def _run_order(opts: DiagnoseOptions, enc, cfg, ckpt, device, log) -> dict:
    from ctrlaug.engine.build import build_objective
    from ctrlaug.utils.checkpoint import load_checkpoint

    torch.manual_seed(cfg.seed + 1 if opts.random_init else cfg.seed)
    obj = build_objective(cfg)
    obj.encoder = enc
    if ckpt and not opts.random_init:
        obj.load_state_dict(load_checkpoint(ckpt)["model"])
    res = order_study(obj, cfg, videos=opts.videos, seed=opts.seed, device=device)
    res = {"checkpoint": ckpt, "random_init": bool(opts.random_init), **res}
    out = check_output_dir(opts.out or (os.path.dirname(ckpt) if ckpt else cfg.out_dir), "output folder")
    path = os.path.join(out, "order" + ("_random" if opts.random_init else "") + ".json")
    write_json(path, res)
    th = res["trained_head"]
    log(
        f"order: trained head td_acc {fmt_value(th and th.get('td_acc'), 1)}% bound {fmt_value(th and th.get('mi_td'), 3)} | "
        f"fresh probe {res['probe_clips_and_global']['top1']:.1f}% (clips only "
        f"{res['probe_clips_only']['top1']:.1f}%; clips in the global crop "
        f"{res['probe_clips_in_global_crop']['top1']:.1f}%; chance 50) -> {path}"
    )
    return res
