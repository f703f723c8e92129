"""Saving and resuming a pretraining run: checkpoint contents, the choice of the checkpoint to
resume from, and the settings a resume applies (docs/training.md, "Resuming").
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import os
import sys
import time

from ctrlaug.config import (
    ConfigError,
    config_to_dict,
    migrate_saved_config,
)
from ctrlaug.errors import NonFiniteLossError, RunFolderError
from ctrlaug.utils import dist as dist_utils
from ctrlaug.utils.cfgtools import cap_line, short_repr
from ctrlaug.utils.checkpoint import (
    CheckpointError,
    NonFiniteStateError,
    checkpoint_step,
    find_resumable,
    list_checkpoints,
    load_checkpoint,
    nonfinite_tensors,
    pack_rng,
    prune_checkpoints,
    restore_rng,
    save_checkpoint,
)

__all__ = ["RunState"]


class RunState:
    """The save / resume half of :class:`ctrlaug.engine.trainer.Trainer` (a mixin): what a
    checkpoint holds, which checkpoint a run resumes from (checked before any data work), how a
    resume applies this run's settings, and the atomic save.

    It reads the trainer's ``cfg``, ``device``, ``main``, ``world``, ``obj``, ``optimizer``,
    ``mi_optimizer``, ``sched``, ``scaler``, ``queue`` and progress counters (``epoch``,
    ``step_in_epoch``, ``step``, ``bad_streak``).
    """

    # ---- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "model": self.obj.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "mi_optimizer": self.mi_optimizer.state_dict() if self.mi_optimizer is not None else None,
            "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(),
            "queue": self.queue.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "step": self.step,
            "bad_streak": self.bad_streak,
            "rng": pack_rng(),  # tensors and plain lists: loadable with weights_only=True
            "config": config_to_dict(self.cfg),
            "world_size": self.world,
            # the cpp op's instruction-set path: a resume on the same machine pins it (bitwise)
            "cpu_isa": _cpu_isa_now() if self.device.type == "cpu" else None,
        }

    def check_fits(self, path: str, state: dict) -> None:
        """:class:`CheckpointError` (one line) unless ``state``'s model and optimizers fit this
        run's exactly (checked before anything is loaded, so a misfit leaves the model untouched)."""
        mine = self.obj.state_dict()
        theirs = state["model"]
        if not isinstance(theirs, dict):
            raise CheckpointError(f"{path}: its 'model' is not a state dict")
        diff = sorted(set(mine) ^ set(theirs))
        shape = [
            k for k in mine if k in theirs and tuple(mine[k].shape) != tuple(getattr(theirs[k], "shape", ()))
        ]
        if diff or shape:
            saved = migrate_saved_config(state.get("config") or {}).get("model") or {}
            was = ", ".join(f"{k}={saved.get(k)!r}" for k in ("arch", "width", "proj_dim") if k in saved)
            k = diff[0] if diff else shape[0]
            what = (
                f"{len(diff)} parameter/buffer names differ (e.g. {k})"
                if diff
                else f"{len(shape)} shapes differ (e.g. {k}: {tuple(theirs[k].shape)} saved, {tuple(mine[k].shape)} here)"
            )
            raise CheckpointError(f"{path}: saved by another model configuration ({was}): {what}")
        for name, opt in (("optimizer", self.optimizer), ("mi_optimizer", self.mi_optimizer)):
            if opt is None:
                continue
            saved_opt = state.get(name)
            n_saved = [len(g["params"]) for g in (saved_opt or {}).get("param_groups", [])]
            n_here = [len(g["params"]) for g in opt.param_groups]
            if n_saved != n_here:
                raise CheckpointError(
                    f"{path}: its {name} holds {n_saved} parameters per group, this run {n_here}"
                )

    def _select_checkpoint(self) -> tuple[str, dict] | None:
        """The checkpoint this run resumes from, checked (checksum, safe load, fits the model,
        the settings can be applied), or None to start at step 0. Every problem is one line
        (:class:`RunFolderError` / ConfigError), raised before the dataset is built."""
        cfg = self.cfg
        how = cfg.resume
        old = list_checkpoints(cfg.out_dir)
        if how == "none":
            if old:  # new checkpoints would interleave with the old run's and resume=auto would mix them
                raise ConfigError(
                    f"bad training config: resume='none' but out_dir={cfg.out_dir!r} already holds "
                    f"{len(old)} checkpoint(s) of another run; use a fresh out_dir, delete them, resume=auto, "
                    "or resume=fresh (sets them aside)"
                )
            return None
        if how == "fresh":
            if old and self.main:
                aside = self._aside_dir()
                for p in old:
                    for q in (p, p + ".sha256"):
                        if os.path.exists(q):
                            os.replace(q, os.path.join(aside, os.path.basename(q)))
                print(
                    f"[ctrlaug.train] resume=fresh: {len(old)} checkpoint(s) moved to {aside}",
                    file=sys.stderr,
                )
            dist_utils.barrier()
            return None
        if how == "auto":
            found, failures = find_resumable(cfg.out_dir, map_location=self.device, check=self.check_fits)
            if found is None:
                if not failures:
                    return None  # nothing to resume: a new run
                reasons = " | ".join(r for _, r in failures)
                raise RunFolderError(
                    f"out_dir={cfg.out_dir!r} holds {len(failures)} checkpoint(s) but none can be resumed: "
                    f"{reasons}. Fix or move them, or start over with resume=fresh (sets them aside)"
                )
            self._passed_over = failures
            if self.main:
                for _, reason in failures:
                    print(f"[ctrlaug.train] skipping checkpoint: {reason}", file=sys.stderr)
        else:
            if not os.path.exists(how):
                raise ConfigError(
                    f"bad training config: resume={how!r}: no such checkpoint (use 'auto', 'none', 'fresh' or a path)"
                )
            try:
                state = load_checkpoint(how, map_location=self.device)
                self.check_fits(how, state)
            except CheckpointError as e:
                raise ConfigError(f"bad training config: resume={how!r}: {e}") from None
            found = (how, state)
        self._check_resumable_settings(*found)
        return found

    def _aside_dir(self) -> str:
        """The folder (made once per run) where a fresh start sets the old run's files aside."""
        aside = getattr(self, "_aside", None)
        if aside is None:
            aside = os.path.join(self.cfg.out_dir, f"set_aside_{time.strftime('%Y%m%d_%H%M%S')}")
            n = 0
            while os.path.lexists(aside if not n else f"{aside}_{n}"):
                n += 1
            aside = aside if not n else f"{aside}_{n}"
            os.makedirs(aside)
            self._aside = aside
        return aside

    def set_aside_history(self) -> None:
        """A run that starts at step 0 in a folder holding an earlier run's metrics.csv (and
        TensorBoard events) moves them beside the set-aside checkpoints, with one line: never
        rewrites them (resume=fresh, or metrics left by a run that wrote no checkpoint)."""
        if not self.main or self.resumed_from is not None:
            return
        out = self.cfg.out_dir
        metrics = os.path.join(out, "metrics.csv")
        moved = []
        if os.path.isfile(metrics) and not os.path.islink(metrics) and os.path.getsize(metrics) > 0:
            with open(metrics, "rb") as f:
                has_rows = len(f.read(1 << 16).splitlines()) > 1
            if has_rows:
                os.replace(metrics, os.path.join(self._aside_dir(), "metrics.csv"))
                moved.append("metrics.csv")
        tb = os.path.join(out, "tb")
        if moved and os.path.isdir(tb) and not os.path.islink(tb):
            os.replace(tb, os.path.join(self._aside_dir(), "tb"))
            moved.append("tb/")
        if moved:
            print(
                f"[ctrlaug.train] starting at step 0: the earlier run's {' and '.join(moved)} moved to "
                f"{self._aside_dir()}",
                file=sys.stderr,
            )

    def _check_resumable_settings(self, path: str, state: dict) -> None:
        """Refuse (one line) what a resume cannot apply: fewer epochs than already done, or a new
        batch_size in the middle of an epoch that is not a whole number of new batches."""
        cfg = self.cfg
        if state["epoch"] > cfg.epochs:
            raise ConfigError(
                f"bad training config: epochs={cfg.epochs} but {path} has already finished epoch "
                f"{state['epoch']}; resume with epochs >= {state['epoch']} or use another out_dir"
            )
        saved = migrate_saved_config(state.get("config") or {}, f"config of checkpoint {path}")
        old_b = saved.get("batch_size", cfg.batch_size)
        done = state.get("step_in_epoch", 0) * old_b
        if old_b != cfg.batch_size and done % cfg.batch_size:
            raise ConfigError(
                f"bad training config: batch_size changed {old_b} -> {cfg.batch_size} in the middle of epoch "
                f"{state['epoch']} ({done} videos of it done in {path}), which is not a whole number of new "
                f"batches; resume with batch_size={old_b} until the epoch ends, or with a batch size dividing {done}"
            )

    def load_state_dict(self, state: dict, path: str = "checkpoint") -> None:
        self.check_fits(path, state)
        self.obj.load_state_dict(state["model"])
        # what this run's config asks for (built from it), to re-apply over the restored state
        fresh = {
            "milestones": collections.Counter(self.sched.milestones),
            "gamma": self.sched.gamma,
            "base_lrs": list(self.sched.base_lrs),
            "weight_decay": [g["weight_decay"] for g in self.optimizer.param_groups],
            "mi_lr": [g["lr"] for g in self.mi_optimizer.param_groups]
            if self.mi_optimizer is not None
            else [],
        }
        self.optimizer.load_state_dict(state["optimizer"])
        if self.mi_optimizer is not None and state.get("mi_optimizer") is not None:
            self.mi_optimizer.load_state_dict(state["mi_optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.queue.load_state_dict(state["queue"])
        self.epoch, self.step_in_epoch, self.step = state["epoch"], state["step_in_epoch"], state["step"]
        self.bad_streak = state.get("bad_streak", 0)
        restore_rng(state.get("rng", {}))
        self._apply_schedule(fresh)

    def _apply_schedule(self, fresh: dict) -> list[str]:
        """After a resume: this run's optim.lr, optim.lr_milestones (or the epochs they derive from),
        optim.lr_gamma, optim.weight_decay and mi.lr replace the restored ones where they differ; the lr is
        then the schedule's value at the current epoch. Returns what changed (nothing on a plain
        resume, which then continues bit for bit)."""
        sched, changed = self.sched, []
        old = (collections.Counter(sched.milestones), sched.gamma, list(sched.base_lrs))
        if old != (fresh["milestones"], fresh["gamma"], fresh["base_lrs"]):
            ms = sorted(fresh["milestones"].elements())
            changed.append(
                f"lr schedule (lr {old[2]} -> {fresh['base_lrs']}, milestones {sorted(old[0].elements())} -> {ms}, "
                f"gamma {old[1]} -> {fresh['gamma']})"
            )
            sched.milestones = collections.Counter(fresh["milestones"])
            sched.gamma = fresh["gamma"]
            sched.base_lrs = list(fresh["base_lrs"])
            decays = bisect.bisect_right(ms, sched.last_epoch)
            for g, base in zip(self.optimizer.param_groups, sched.base_lrs):
                g["initial_lr"] = base
                g["lr"] = base * sched.gamma**decays
            sched._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        for g, wd in zip(self.optimizer.param_groups, fresh["weight_decay"]):
            if g["weight_decay"] != wd:
                changed.append(f"weight_decay {g['weight_decay']} -> {wd}")
                g["weight_decay"] = wd
        if self.mi_optimizer is not None:
            for g, lr in zip(self.mi_optimizer.param_groups, fresh["mi_lr"]):
                if g["lr"] != lr:
                    changed.append(f"mi.lr {g['lr']} -> {lr}")
                    g["lr"] = lr
        self._applied = changed
        return changed

    def maybe_resume(self) -> None:
        """Load the checkpoint chosen at construction (if any) and apply this run's settings."""
        found, self._resume = self._resume, None
        if found is None:
            return
        path, state = found
        self.load_state_dict(state, path)
        self.resumed_from = path
        if self.device.type == "cpu":
            _pin_saved_isa(state.get("cpu_isa"), self.main)
        old_b = migrate_saved_config(state.get("config") or {}).get("batch_size", self.cfg.batch_size)
        if old_b != self.cfg.batch_size and self.step_in_epoch:
            done = self.step_in_epoch * old_b  # a whole number of new batches (checked at construction)
            self.step_in_epoch = done // self.cfg.batch_size
            self._applied.append(
                f"batch_size {old_b} -> {self.cfg.batch_size} ({done} videos of this epoch done)"
            )
        dist_utils.barrier()  # every rank has chosen before rank 0 sets the passed-over files aside
        passed = list(getattr(self, "_passed_over", []))
        if self.cfg.resume not in ("auto", "fresh", "none"):  # an explicit, older checkpoint
            passed += [(p, "newer than the chosen one") for p in list_checkpoints(self.cfg.out_dir)]
        if self.main:
            for p, _ in passed:
                if checkpoint_step(p) > self.step:  # newer than the resumed one: set aside
                    for q in (p + ".sha256", p):
                        aside = os.path.join(
                            os.path.dirname(q), os.path.basename(q).replace(".pt", ".pt.unusable", 1)
                        )
                        with contextlib.suppress(OSError):
                            os.replace(q, aside)
        changed = _config_diff(migrate_saved_config(state.get("config") or {}), config_to_dict(self.cfg))
        if changed and self.main:
            print(
                cap_line(f"[ctrlaug.train] resuming {path} with changed config keys: {', '.join(changed)}"),
                file=sys.stderr,
            )
        if self._applied and self.main:
            print(cap_line(f"[ctrlaug.train] resume applies: {'; '.join(self._applied)}"), file=sys.stderr)

    def save(self) -> str | None:
        """Write the checkpoint of this step (rank 0; atomic) and prune old ones; returns its path.
        Inside a run of non-finite steps (``bad_streak`` > 0) nothing is written: such a state is
        not a good point to resume from."""
        path = None
        if self.main:
            if self.bad_streak:
                print(
                    f"[ctrlaug.train] step {self.step}: no checkpoint inside a run of {self.bad_streak} "
                    "non-finite step(s)",
                    file=sys.stderr,
                )
            else:
                try:
                    path = save_checkpoint(self.state_dict(), self.cfg.out_dir, self.step)
                except NonFiniteStateError as e:
                    self.note_trouble()
                    raise NonFiniteLossError(f"{e}; stopping") from None
                prune_checkpoints(self.cfg.out_dir, self.cfg.log.keep_checkpoints)
        dist_utils.barrier()
        return path

    # ---- divergence: which checkpoint is good, and the command that recovers ------------------
    #: A checkpoint whose largest weight exceeds this has diverged although it is finite (the
    #: weights of a healthy R3D stay below ~10; one Adam step at lr=1e9 puts them near 1e9).
    DIVERGED_WEIGHT = 1e6

    def note_trouble(self) -> None:
        """Remember the first step (this process) whose state gave a non-finite loss, gradient,
        update or checkpoint: no checkpoint from that step on is offered for recovery."""
        first = getattr(self, "trouble_step", None)
        self.trouble_step = self.step if first is None else min(first, self.step)

    def recovery_checkpoint(self) -> str | None:
        """The newest checkpoint that is good: written before the trouble began, verified and
        finite, saved outside a run of non-finite steps, with weights that have not diverged."""
        limit = getattr(self, "trouble_step", None)
        for p in list_checkpoints(self.cfg.out_dir):
            if limit is not None and checkpoint_step(p) >= limit:
                continue
            try:
                state = load_checkpoint(p)
            except CheckpointError:
                continue
            if state.get("bad_streak", 0) or nonfinite_tensors(state):
                continue
            weights = [
                t
                for t in state["model"].values()
                if hasattr(t, "is_floating_point") and t.is_floating_point()
            ]
            if weights and max(float(t.abs().max()) for t in weights if t.numel()) > self.DIVERGED_WEIGHT:
                continue
            return p
        return None

    def recovery_advice(self) -> str:
        """One sentence: the good checkpoint (or none) and the command that recovers from it."""
        cfg = self.cfg
        lr = cfg.optim.lr / 10 if cfg.optim.lr <= 1e-3 else 1e-3
        base = f"python -m ctrlaug.train --config {os.path.join(cfg.out_dir, 'config.yaml')}"
        good = self.recovery_checkpoint()
        since = getattr(self, "trouble_step", None)
        where = f"before step {since}" if since is not None else "in the folder"
        if good is None:
            return (
                f"no good checkpoint {where}; start over with a lower lr: {base} resume=fresh optim.lr={lr:g}"
            )
        return f"the newest good checkpoint is {good}; recover with a lower lr: {base} resume={good} optim.lr={lr:g}"


def _cpu_isa_now() -> str | None:
    """The cpp op's path in this process (None without the extension)."""
    from ctrlaug.ops import cpu_isa_chosen

    try:
        return cpu_isa_chosen()
    except RuntimeError:
        return None


def _pin_saved_isa(saved: str | None, main: bool) -> None:
    """Resume on the cpp path the checkpoint was written with, so that a resumed run continues bit
    for bit (the paths sum in different orders); CTRLAUG_CPU_ISA set by the user wins. A path this
    machine cannot run is one line, and the run goes on on this machine's own choice."""
    from ctrlaug.ops import pin_cpu_isa
    from ctrlaug.ops._registry import CPU_ISA_ENV

    if not saved:
        return
    forced = os.environ.get(CPU_ISA_ENV)
    if forced and forced != saved:
        if main:
            print(
                f"[ctrlaug.train] the checkpoint ran the cpp path {saved}, {CPU_ISA_ENV}={forced} asks for "
                "another: the resumed run will not match an uninterrupted one bit for bit",
                file=sys.stderr,
            )
        return
    try:
        pin_cpu_isa(saved)
    except (ValueError, RuntimeError) as e:
        if main:
            print(
                f"[ctrlaug.train] cannot resume on the checkpoint's cpp path {saved} ({e}); using this "
                "machine's choice, so the run will not match an uninterrupted one bit for bit",
                file=sys.stderr,
            )


def _config_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts (``resume`` ignored)."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _config_diff(a, b, f"{prefix}{k}.")
        elif a != b and k != "resume":
            out.append(f"{prefix}{k} ({short_repr(a)} -> {short_repr(b)})")
    return out
