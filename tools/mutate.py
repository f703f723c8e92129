"""Hand-made mutation pass over the hot spots: ``python tools/mutate.py [--root CHECKOUT] [ids...]``.

Each mutant is one plausible bug: (id, file, original text, mutated text, tests to run, note). The
script writes the mutated text into the checkout given by ``--root`` (default: the checkout this
script lives in), runs only that mutant's tests there (``PYTHONPATH=<root>``, ``-x``), records
whether the tests failed ("killed", with the first failing test) or passed ("SURVIVED"), and puts
the original file back, byte for byte, in a ``finally`` (also on Ctrl-C or SIGTERM). A mutant whose
original text no longer occurs exactly once is reported "stale": update its entry.

Run it in your own worktree or a scratch copy, never in a shared checkout: while a mutant runs, the
file on disk is wrong. See docs/testing.md for the recorded pass and for what a survivor means.

    python tools/mutate.py --list                 # the mutants
    python tools/mutate.py                        # all of them (about 20 minutes on 2 busy cores)
    python tools/mutate.py L1 T3 --report out.md  # some, with a markdown table
    python tools/mutate.py --baseline             # first check every test selection passes unmutated
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from typing import NamedTuple


class Mutant(NamedTuple):
    id: str
    file: str
    original: str
    mutated: str
    tests: tuple[str, ...]  # pytest arguments (files, node ids, -k expressions)
    note: str


# ---- test selections (kept small: each mutant runs only these) ---------------------------------
DIRECTIONS = ("tests/test_losses_directions.py", "tests/test_losses.py")
WIRING = ("tests/test_losses_wiring.py", "tests/test_losses.py")
RC_OP = ("tests/test_region_contrast.py", "-k", "not half and not triton and not compile")
CORR_OP = ("tests/test_correspondence.py", "tests/test_losses_wiring.py", "-k", "not triton")
QUEUE = ("tests/test_engine_wiring.py", "-k", "queue", "tests/test_losses.py")
LEVELS = ("tests/test_engine_wiring.py", "-k", "level")
RESUME = ("tests/test_engine_wiring.py", "-k", "resume")
LOOP_MI = ("tests/test_engine_wiring.py", "-k", "one_loop")
PROTOCOLS = (
    "tests/test_eval_protocols_constructed.py",
    *(
        f"tests/test_eval_protocols.py::test_{name}"
        for name in ("retrieval_recall_matches_numpy", "retrieval_perfect_and_shuffled", "knn_above_chance_and_random_at_chance",
                     "knn_weighting_prefers_closer_neighbours", "linear_clip_protocol_above_chance",
                     "evaluate_clips_softmax_average")
    ),
)  # fmt: skip
AUGMENT = (
    "tests/test_engine_wiring.py::test_levels_handed_to_mi_are_the_levels_applied_to_those_views",
    "tests/test_engine_wiring.py::test_level_groups_do_not_depend_on_view_position",
    *(
        f"tests/test_augment.py::test_{name}"
        for name in ("sample_levels_groups", "level_params_inside_their_bins", "level_params_keep_batch_shape",
                     "low_level_matches_reference", "augment_batch_draws_levels_when_missing")
    ),
)  # fmt: skip
REQUIRED = ("tests/test_backends.py",)

OPS, AUG = "ctrlaug/ops", "ctrlaug/augment"

MUTANTS: list[Mutant] = [
    # ---- L_mi / L_td directions (ctrlaug/losses/) ----------------------------------------------
    Mutant("L1", "ctrlaug/losses/mi.py", "return -ctx.scale * grad, None", "return ctx.scale * grad, None", DIRECTIONS,
           "gradient reversal does not reverse"),
    Mutant("L2", "ctrlaug/losses/mi.py", "x_all = grad_reverse(view_feats.float(), self.grl)", "x_all = view_feats.float()",
           DIRECTIONS, "no gradient reversal in L_mi"),
    Mutant("L3", "ctrlaug/losses/mi.py", "level_loss = -surr  #", "level_loss = surr  #", DIRECTIONS,
           "G_theta descends the level bound"),
    Mutant("L4", "ctrlaug/losses/mi.py", 'out["loss"] = level_loss + self.lg_weight * surr_lg',
           'out["loss"] = level_loss - self.lg_weight * surr_lg', DIRECTIONS,
           "encoder ascends the local-global bound"),
    Mutant("L5", "ctrlaug/losses/mi.py", "est_lg, surr_lg = self._bound(self.bound_lg, x, y, y_m, detach=True)",
           "est_lg, surr_lg = self._bound(self.bound_lg, x, y, y_m, detach=False)", DIRECTIONS,
           "theta trained by the local-global term"),
    Mutant("L6", "ctrlaug/losses/td.py", 'return {"loss": -surr, "mi_td"', 'return {"loss": surr, "mi_td"', DIRECTIONS,
           "L_td descends its bound"),
    Mutant("L7", "ctrlaug/losses/mi.py", "y = global_feats.float().repeat_interleave(K, 0)", "y = global_feats.float().repeat(K, 1)",
           DIRECTIONS, "local-global joint pairs a clip with another video's global view"),
    Mutant("L8", "ctrlaug/losses/td.py", "marg = self.head(torch.gather(zs, 1, orders[:, :, None].expand(-1, K, C)), g.repeat(",
           "marg = self.head(zs + 0 * orders.sum(), g.repeat(", DIRECTIONS, "L_td marginal not shuffled"),
    Mutant("L9", "ctrlaug/losses/mi.py", "corrected = det + torch.exp(det - log_ema.to(det.dtype)) * (log_et - det)",
           "corrected = log_et", DIRECTIONS, "MINE bias correction dropped"),
    Mutant("L10", "ctrlaug/losses/mi.py", "(videos[:, None] != videos[None, :])", "(videos[:, None] == videos[None, :])", DIRECTIONS,
           "joint pairs from the same video"),
    # ---- wiring of L_rc and L_mi in the objective (ctrlaug/losses/) ---------------------------
    Mutant("W1", "ctrlaug/losses/rc.py", "return feat.flatten(2).transpose(1, 2).reshape(-1, feat.shape[1])",
           "return feat.transpose(3, 4).flatten(2).transpose(1, 2).reshape(-1, feat.shape[1])", WIRING,
           "cells flattened t, w, h"),
    Mutant("W2", "ctrlaug/losses/rc.py", "return None if n == 0 else self.feats[:n]", "return None if n == 0 else self.feats", QUEUE,
           "partly filled queue hands over its empty rows"),
    Mutant("W3", "ctrlaug/losses/mi.py", "views = torch.cat([pg[:, None], pc], 1)", "views = torch.cat([pc, pg[:, None]], 1)", WIRING,
           "view features in another order than their levels"),
    Mutant("W4", "ctrlaug/losses/mi.py", ".repeat_interleave(1 + K)\n", ".repeat(1 + K)\n", WIRING, "video ids not aligned with views"),
    Mutant("W5", "ctrlaug/losses/rc.py", "(owner + offset).to(torch.int64), tau=self.tau", "(owner.flip(0) + offset).to(torch.int64), tau=self.tau",
           WIRING, "clip targets on another video's keys"),
    Mutant("W6", "ctrlaug/losses/rc.py", "keys = keys.detach().to(self.feats.dtype)[-self.size :]",
           "keys = keys.detach().to(self.feats.dtype)[: self.size]", QUEUE, "queue keeps the oldest keys"),
    # ---- ops (Python parts; csrc needs a rebuild and is not in this list) -------------------------
    Mutant("O1", f"{OPS}/region_contrast.py", "loss = w * lse - (queries.to(acc) * t).sum(-1) / tau",
           "loss = w * lse - (queries.to(acc) * t).sum(-1) * tau", RC_OP, "target term scaled wrong"),
    Mutant("O2", f"{OPS}/region_contrast.py", "dq = ((g * w)[:, None] * o - g[:, None] * t) / tau",
           "dq = ((g * w)[:, None] * o + g[:, None] * t) / tau", RC_OP, "dq target sign"),
    Mutant("O3", f"{OPS}/region_contrast.py", "index_add_(0, owner, tgt, alpha=-1.0 / tau)",
           "index_add_(0, owner, tgt, alpha=1.0 / tau)", RC_OP, "dk target sign"),
    Mutant("O4", f"{OPS}/region_contrast.py", "w = S.sum(-1).view(M)", "w = S.sum(-1).view(M).clamp_min(1.0)",
           RC_OP, "uncovered rows get weight 1"),
    Mutant("O5", f"{OPS}/region_contrast.py", "lse, o = fwd(queries, keys, queue, float(tau), bool(need_dq))",
           "lse, o = fwd(queries, keys, None, float(tau), bool(need_dq))", RC_OP, "queue dropped by fused path"),
    Mutant("O6", f"{OPS}/region_contrast.py", "kblk = keys.view(-1, Nv, D).index_select(0, owner)",
           "kblk = keys.view(-1, Nv, D).index_select(0, owner.flip(0))", RC_OP, "target keys of another owner"),
    Mutant("O7", f"{OPS}/reference.py", "flip = b[:, 6:7] > 0.5", "flip = b[:, 6:7] > 1.5", CORR_OP,
           "flip ignored by the spec"),
    Mutant("O8", f"{OPS}/reference.py", "logp = torch.log_softmax(logits, dim=-1)",
           "logp = torch.log_softmax(logits[:, : keys.shape[0]], dim=-1)", RC_OP, "queue not in the softmax"),
    Mutant("O9", f"{OPS}/reference.py", "lse = torch.logsumexp(logits, dim=-1)",
           "lse = logits.max(dim=-1).values", RC_OP, "fwd building block: max instead of LSE"),
    Mutant("O10", f"{OPS}/reference.py", "return (p * coef.to(acc)[:, None]).t() @ q / tau",
           "return (p * coef.to(acc)[:, None]).t() @ q * tau", RC_OP, "bwd building block scale"),
    Mutant("O11", f"{OPS}/correspondence.py", "        list(cg),\n        list(vg),\n",
           "        list(vg),\n        list(cg),\n", CORR_OP, "grids swapped for fused backends"),
    Mutant("O12", "tests/backends.py", 'return ("cpp", "triton") + (("cuda",)', 'return () + (("cuda",)', REQUIRED,
           "(tests/backends.py) CI=true requires nothing"),
    Mutant("O13", f"{OPS}/_registry.py", '            order = ("cpp",)\n', "            order = ()\n", REQUIRED,
           "auto never picks cpp on CPU"),
    Mutant("O14", "tests/tolerance.py", "        if backend in required_backends()", "        if False", REQUIRED,
           "(tests/tolerance.py) required backend skipped"),
    # ---- augment levels ---------------------------------------------------------------------------
    Mutant("A1", f"{AUG}/lowlevel.py", "levels[order] = chosen[", "levels[:] = chosen[", AUGMENT,
           "level groups follow view position"),
    Mutant("A2", f"{AUG}/batch.py", "return y.reshape(B, V, *y.shape[1:])",
           "return y.reshape(V, B, *y.shape[1:]).transpose(0, 1)", AUGMENT, "views and their params misaligned"),
    Mutant("A3", f"{AUG}/lowlevel.py", "    for n in reversed(counts):\n", "    for n in counts:\n", AUGMENT,
           "level id decoded in the wrong radix order"),
    # ---- the training step (ctrlaug/engine/) -----------------------------------------------------
    Mutant("T1", "ctrlaug/engine/trainer.py", "self.model(inputs, self.queue.get())", "self.model(inputs, None)", QUEUE, "queue never reaches L_rc"),
    Mutant("T2", "ctrlaug/engine/trainer.py", "levels=levels.to(dev),", "levels=levels.flip(1).to(dev),", LEVELS,
           "L_mi gets other views' levels"),
    Mutant("T3", "ctrlaug/engine/state.py", 'self.sched.load_state_dict(state["scheduler"])', "pass", RESUME, "scheduler not resumed"),
    Mutant("T4", "ctrlaug/engine/state.py", 'self.optimizer.load_state_dict(state["optimizer"])', "pass", RESUME, "optimizer not resumed"),
    Mutant("T5", "ctrlaug/engine/state.py", 'self.mi_optimizer.load_state_dict(state["mi_optimizer"])', "pass", RESUME,
           "MI optimizer not resumed"),
    Mutant("T6", "ctrlaug/engine/trainer.py", 'self.queue.push(out["keys"])', "pass", QUEUE, "queue never filled"),
    Mutant("T7", "ctrlaug/engine/trainer.py", "self.scaler.step(self.mi_optimizer)", "pass", LOOP_MI,
           "G_theta never stepped"),
    Mutant("T8", "ctrlaug/engine/trainer.py", "torch.optim.Adam(mi_params, lr=cfg.mi.lr)", "torch.optim.Adam(mi_params, lr=cfg.mi.lr, maximize=True)",
           LOOP_MI, "G_theta stepped the wrong way"),
    Mutant("T9", f"{AUG}/batch.py", "levels, params = levels[rows], params.select(rows)",
           "levels, params = levels[rows].roll(1, 1), params.select(rows)", LEVELS,
           "levels vs params misaligned"),
    Mutant("T10", "ctrlaug/engine/trainer.py", "        self.sched.step()\n", "        pass\n", RESUME, "no lr schedule"),
    # ---- evaluation protocols (ctrlaug/eval/) -----------------------------------------------
    Mutant("E1", "ctrlaug/eval/protocols.py", "r = retrieval_recall(tef.mean(1), tel, trf.mean(1), trl, chunk=chunk)",
           "r = retrieval_recall(trf.mean(1), trl, tef.mean(1), tel, chunk=chunk)", PROTOCOLS, "query/gallery swapped"),
    Mutant("E2", "ctrlaug/eval/protocols.py", "logits = clf(tef)", "logits = clf(trf)",
           PROTOCOLS, "probe scored on the train split"),
    Mutant("E3", "ctrlaug/eval/protocols.py", "trf.mean(1), trl, tef.mean(1), k=opts.k", "tef.mean(1), tel, trf.mean(1), k=opts.k",
           PROTOCOLS, "kNN bank/queries swapped"),
    Mutant("E4", "ctrlaug/eval/linear.py", "p = clip_logits.float().softmax(-1)", "p = clip_logits.float()", PROTOCOLS,
           "logit averaging"),
    Mutant("E5", "ctrlaug/eval/metrics.py", "w = (sim / t).exp()", "w = torch.ones_like(sim)", PROTOCOLS, "unweighted kNN vote"),
    Mutant("E6", "ctrlaug/eval/metrics.py", "idx = (q[sl] @ g.T).topk(kmax, dim=1).indices", "idx = (q[sl] @ g.T).topk(kmax, dim=1, largest=False).indices",
           PROTOCOLS, "retrieval ranks the least similar first"),
    Mutant("E7", "ctrlaug/eval/linear.py", "return lambda f: clf((f - mean) / std)", "return lambda f: clf(f - mean)", PROTOCOLS,
           "probe applied without the train standardisation"),
]  # fmt: skip


def _first_failure(out: str) -> str:
    m = re.search(r"^(?:FAILED|ERROR) (\S+)", out, re.M)
    return m.group(1) if m else ""


def run_tests(root: str, tests: tuple[str, ...], timeout: float) -> tuple[int, str, float]:
    env = dict(os.environ, PYTHONPATH=root, PYTHONDONTWRITEBYTECODE="1", PYTHONWARNINGS="ignore")
    env.setdefault("TRITON_INTERPRET", "1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-rfE", *tests]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
        return p.returncode, p.stdout + p.stderr, time.perf_counter() - t0
    except subprocess.TimeoutExpired:
        return -1, "timeout", time.perf_counter() - t0


def run_mutant(root: str, m: Mutant, timeout: float) -> dict:
    path = os.path.join(root, m.file)
    with open(path, encoding="utf-8") as f:
        source = f.read()
    if source.count(m.original) != 1:
        return dict(
            id=m.id, status="stale", test=f"original text found {source.count(m.original)} times", secs=0.0
        )
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(source.replace(m.original, m.mutated))
        rc, out, secs = run_tests(root, m.tests, timeout)
    finally:
        with open(path, "w", encoding="utf-8") as f:
            f.write(source)
    if rc == 0:
        status, test = "SURVIVED", ""
    elif rc == 1:
        status, test = "killed", _first_failure(out)
    elif rc == -1:  # an endless loop, or a machine too busy: rerun it alone before calling it killed
        status, test = "timeout", ""
    else:  # 2 interrupted/collection error, 4 usage, 5 nothing collected
        status, test = f"error rc={rc}", _first_failure(out) or out.strip().splitlines()[-1:]
    return dict(id=m.id, status=status, test=test if isinstance(test, str) else " ".join(test), secs=secs)


def main(argv: list[str] | None = None) -> int:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ids", nargs="*", help="mutant ids to run (default: all)")
    ap.add_argument("--root", default=here, help="checkout to mutate and test (default: this one)")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument(
        "--baseline", action="store_true", help="run each distinct test selection unmutated first"
    )
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per mutant's tests")
    ap.add_argument("--report", help="write a markdown table here")
    args = ap.parse_args(argv)
    by_id = {m.id: m for m in MUTANTS}
    unknown = set(args.ids) - set(by_id)
    if unknown:
        ap.error(f"unknown mutant ids: {sorted(unknown)}")
    chosen = [by_id[i] for i in dict.fromkeys(args.ids)] if args.ids else MUTANTS  # in the order given
    if args.list:
        for m in chosen:
            print(f"{m.id:4} {m.file:32} {m.note}")
        return 0
    root = os.path.abspath(args.root)

    def on_term(signum, frame):  # SIGTERM: unwind through the finally that restores the file
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    if args.baseline:
        for sel in dict.fromkeys(m.tests for m in chosen):
            rc, out, secs = run_tests(root, sel, args.timeout)
            print(f"baseline {' '.join(sel)}: rc={rc} ({secs:.0f}s) {_first_failure(out)}", flush=True)
            if rc != 0:
                print(out[-3000:])
                return 1
    rows = []
    for m in chosen:
        r = run_mutant(root, m, args.timeout)
        rows.append((m, r))
        print(f"{m.id:4} {r['status']:16} {r['secs']:5.0f}s  {m.note}  {r['test']}", flush=True)
    survived = [m.id for m, r in rows if r["status"] != "killed"]
    print(f"{len(rows) - len(survived)} of {len(rows)} killed; not killed: {', '.join(survived) or 'none'}")
    if args.report:
        with open(args.report, "w") as f:
            f.write("| id | file | mutation | result | first failing test |\n|---|---|---|---|---|\n")
            for m, r in rows:
                f.write(f"| {m.id} | {m.file} | {m.note} | {r['status']} | `{r['test']}` |\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
