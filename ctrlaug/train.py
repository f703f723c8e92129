"""Self-supervised pretraining: ``python -m ctrlaug.train [--config FILE] [key=value ...]``.

With no arguments it runs the embedded demo (a small-width R3D-18 on the factorised shapes
benchmark, CPU, a few minutes), then a linear probe of every factor for the trained encoder beside
a random-init one, written to ``<out_dir>/probe.json``.
``--help`` lists every key. ``torchrun --nproc_per_node N -m ctrlaug.train ...`` runs DDP
(gloo on CPU, nccl on CUDA); ``batch_size`` is the global batch, split evenly over the ranks.

One step (paper §3, §4.2):
  1. the DataLoader yields uint8 views (global view + K clips per video, tau_p applied in the
     workers) with their boxes;
  2. :meth:`Trainer.prepare_views`: tau_l levels and parameters are drawn for the *global* batch
     from a (seed, step) generator and applied on the device (``ctrlaug.augment.augment_batch``);
  3. :meth:`Trainer.forward`: :class:`ctrlaug.losses.CtrlAugObjective` runs f on the clips and f'
     on the global views and returns the weighted total, each enabled term (L_rc, L_mi, L_td,
     L_nce) and the losses' statistics;
  4. :meth:`Trainer.update`: one backward; Adam on the encoder and heads, a second Adam on the MI
     statistics network. :meth:`Trainer.run_step` is these three phases.

Everything random is a function of (seed, epoch, index) or (seed, step), so a resumed run
reproduces the uninterrupted one and a DDP run reproduces one process on the same global batch.
Rank 0 alone logs (CSV, TensorBoard when installed, progress bar) and checkpoints (atomic, every
epoch and every ``ckpt_every_steps``); ``resume=auto`` continues from the newest good checkpoint.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import dataclasses
import json
import os
import sys
import time
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader, Dataset

from ctrlaug.augment import augment_batch, sample_batch_levels
from ctrlaug.config import (
    ConfigError,
    TrainConfig,
    config_to_dict,
    help_text,
    load_config,
    migrate_saved_config,
    save_config,
)
from ctrlaug.data import BadVideoLog, build_train_dataset, collate_views, get_format
from ctrlaug.floor import FLOOR_INITS, mean_spread, random_init_seed
from ctrlaug.losses import CtrlAugObjective, FeatureQueue
from ctrlaug.models import build_encoder, normalize_input
from ctrlaug.probe import extract_clip_features, factor_probe, knn_top1
from ctrlaug.utils import dist as cdist
from ctrlaug.utils.atomic import atomic_write
from ctrlaug.utils.checkpoint import (
    CheckpointError,
    NonFiniteStateError,
    find_resumable,
    list_checkpoints,
    load_checkpoint,
    pack_rng,
    prune_checkpoints,
    remove_stale_temp_files,
    restore_rng,
    save_checkpoint,
)
from ctrlaug.utils.device import resolve_device
from ctrlaug.utils.metrics import MetricWriter, ProgressBar, plot_losses
from ctrlaug.utils.provenance import write_provenance
from ctrlaug.utils.runlock import FolderBusyError, FolderUnusableError, RunLock

__all__ = [
    "main",
    "train",
    "build_objective",
    "StepInputs",
    "build_train_dataset",
    "lr_milestones",
    "Trainer",
    "NonFiniteLossError",
    "RunFolderError",
]


class NonFiniteLossError(RuntimeError):
    """Raised after ``max_bad_steps`` consecutive steps with a NaN/inf loss or gradient, or when
    the parameters or the state to be checkpointed became non-finite."""


class RunFolderError(ConfigError):
    """The run folder cannot be used as asked: busy (another run holds its lock), not writable,
    or holding checkpoints none of which can be resumed. One line, exit code 2."""


def _seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (seed, purpose, step, ...)."""
    s = np.random.SeedSequence([int(p) for p in parts]).generate_state(2)
    return (int(s[0]) << 31 ^ int(s[1])) & ((1 << 63) - 1)


def lr_milestones(cfg: TrainConfig) -> list[int]:
    """cfg.lr_milestones, or the paper rule of the dataset format (ctrlaug.data.formats): /10 at 75%
    of the epochs (150 of 200 on UCF-101), 70% on Kinetics-400 (70 of 100)."""
    if cfg.lr_milestones is not None:
        return sorted(cfg.lr_milestones)
    frac = get_format(cfg.dataset).lr_decay_fraction
    m = int(round(frac * cfg.epochs))
    return [m] if 0 < m < cfg.epochs else []


def build_objective(cfg: TrainConfig) -> CtrlAugObjective:
    """Encoder + heads + enabled losses, from the config (CPU, fp32, not yet wrapped)."""
    return CtrlAugObjective(
        build_encoder(cfg.arch, cfg.width, cfg.spatial_stride1_stages),
        cfg.augment.num_clips,
        tuple(cfg.global_stride1_stages),
        cfg.proj_hidden,
        cfg.proj_dim,
        rc=cfg.rc,
        mi=cfg.mi,
        td=cfg.td,
        nce=cfg.nce,
    )


@dataclass
class StepInputs:
    """One step's model inputs on the device (this rank's share of the global batch), from
    :meth:`Trainer.prepare_views`: normalised global views [B, 3, T, S, S] and clips
    [B*K, 3, T, S, S] (clip k of video b at row b*K + k), their boxes, the tau_l level of every
    view [B, 1+K] (global view first), the videos' dataset indices and the loss-sampling seed."""

    clips: torch.Tensor
    glob: torch.Tensor
    clip_boxes: torch.Tensor
    global_boxes: torch.Tensor
    levels: torch.Tensor
    video_index: torch.Tensor
    step_seed: int


class _EpochIndexed(Dataset):
    """Keys are (epoch, index): the per-sample view seed (seed, epoch, index) travels with the key,
    so persistent DataLoader workers need no set_epoch broadcast."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, key):
        epoch, idx = key
        self.ds.set_epoch(epoch)
        return self.ds[idx]


class _GlobalBatches:
    """Batch sampler: a (seed, epoch) permutation cut into global batches; this rank's slice.

    Rank r of W takes items [r*B/W, (r+1)*B/W) of every global batch, so gathering the ranks in
    order gives exactly the batch one process would see. Set ``epoch`` and ``start`` (batches to
    skip when resuming mid-epoch) before iterating.
    """

    def __init__(self, n: int, global_batch: int, seed: int, rank: int, world: int, max_steps: int = 0):
        if global_batch % world:
            raise ConfigError(
                f"bad training config: batch_size={global_batch} must be divisible by the {world} ranks"
            )
        if n < global_batch:
            raise ConfigError(f"bad training config: batch_size={global_batch} exceeds the dataset size {n}")
        self.n, self.B, self.seed, self.rank, self.world = n, global_batch, seed, rank, world
        self.steps = n // global_batch
        if max_steps:
            self.steps = min(self.steps, max_steps)
        self.epoch, self.start = 0, 0

    def __len__(self):
        return self.steps - self.start

    def __iter__(self):
        g = torch.Generator().manual_seed(_seed(self.seed, 0, self.epoch))
        perm = torch.randperm(self.n, generator=g).tolist()
        per = self.B // self.world
        for s in range(self.start, self.steps):
            batch = perm[s * self.B : (s + 1) * self.B]
            yield [(self.epoch, i) for i in batch[self.rank * per : (self.rank + 1) * per]]


class Trainer:
    """State and loop of one pretraining run; see the module docstring."""

    def __init__(self, cfg: TrainConfig, on_step: Callable[[int, int, dict], None] | None = None):
        self.cfg = cfg
        self.on_step = on_step
        try:
            want = resolve_device(cfg.device, "device").type
        except ValueError as e:
            raise ConfigError(f"bad training config: {e}") from None
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.rank, self.world, local_rank = cdist.init_distributed(want)
        self.device = torch.device("cuda", local_rank) if want == "cuda" else torch.device("cpu")
        self.main = self.rank == 0
        # The run folder is locked (rank 0) before any work: a busy, unwritable or file-shaped
        # out_dir is one line and exit 2 here, not after the model and the dataset are built.
        self._lock = None
        if self.main:
            try:
                self._lock = RunLock(cfg.out_dir).acquire()
            except (FolderBusyError, FolderUnusableError) as e:
                raise RunFolderError(str(e)) from None
            weakref.finalize(self, self._lock.release)
            remove_stale_temp_files(cfg.out_dir)  # of killed runs: nobody else writes here now
        try:
            self._build(cfg, want, local_rank)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Release the run folder's lock (at the end of :meth:`fit`; also when garbage-collected)."""
        if self._lock is not None:
            self._lock.release()

    def _build(self, cfg: TrainConfig, want: str, local_rank: int) -> None:
        amp = cfg.amp if cfg.amp != "auto" else ("bf16" if self.device.type == "cuda" else "off")
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)

        # ---- model ------------------------------------------------------------------------------
        torch.manual_seed(cfg.seed)
        obj = build_objective(cfg)
        if cfg.sync_bn and self.world > 1:
            obj.encoder = cdist.convert_sync_bn(obj.encoder, self.device.type)
        obj.to(self.device)
        if cfg.channels_last and self.device.type == "cuda":
            obj.encoder.to(memory_format=torch.channels_last_3d)
        if cfg.compile:
            obj.encoder.compile()
        self.obj = obj
        self.model = obj
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.model = DDP(obj, device_ids=[local_rank] if self.device.type == "cuda" else None)
        mi_params = list(obj.mi.G.parameters()) if obj.mi is not None else []
        mi_ids = {id(p) for p in mi_params}
        main_params = [p for p in obj.parameters() if id(p) not in mi_ids]
        self.opt = torch.optim.Adam(main_params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.mi_opt = torch.optim.Adam(mi_params, lr=cfg.mi.lr) if mi_params else None
        self.sched = torch.optim.lr_scheduler.MultiStepLR(self.opt, lr_milestones(cfg), gamma=cfg.lr_gamma)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.queue = FeatureQueue(cfg.rc.queue_size if cfg.rc.enabled else 0, cfg.proj_dim).to(self.device)
        self._buffers_before: list[torch.Tensor] | None = None

        # ---- the checkpoint to resume from: chosen and checked before any data work -------------
        self._resume = self._select_checkpoint()

        # ---- data -------------------------------------------------------------------------------
        self.dataset = build_train_dataset(cfg)
        self.batches = _GlobalBatches(
            len(self.dataset), cfg.batch_size, cfg.seed, self.rank, self.world, cfg.max_steps_per_epoch
        )
        self.loader = DataLoader(
            _EpochIndexed(self.dataset),
            batch_sampler=self.batches,
            collate_fn=_collate,
            num_workers=cfg.num_workers,
            persistent_workers=cfg.num_workers > 0,
            pin_memory=self.device.type == "cuda",
        )

        # kNN monitor sets are built now so that a missing probe split fails before any training.
        self.knn_sets = probe_datasets(cfg) if cfg.knn_every and self.main else None
        self.knn_history: list[tuple[int, int, float]] = []  # (epoch done, step, top-1 %)

        # ---- progress state ---------------------------------------------------------------------
        self.epoch = 0  # epoch being run (or next to run)
        self.step_in_epoch = 0  # steps of self.epoch already done
        self.step = 0  # global optimisation steps done (skipped steps included)
        self.bad_streak = 0
        self.history: list[dict] = []
        self.resumed_from: str | None = None

    # ---- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "model": self.obj.state_dict(),
            "optimizer": self.opt.state_dict(),
            "mi_optimizer": self.mi_opt.state_dict() if self.mi_opt is not None else None,
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
            saved = state.get("config") or {}
            was = ", ".join(f"{k}={saved.get(k)!r}" for k in ("arch", "width", "proj_dim") if k in saved)
            k = diff[0] if diff else shape[0]
            what = (
                f"{len(diff)} parameter/buffer names differ (e.g. {k})"
                if diff
                else f"{len(shape)} shapes differ (e.g. {k}: {tuple(theirs[k].shape)} saved, {tuple(mine[k].shape)} here)"
            )
            raise CheckpointError(f"{path}: saved by another model configuration ({was}): {what}")
        for name, opt in (("optimizer", self.opt), ("mi_optimizer", self.mi_opt)):
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
                aside = os.path.join(cfg.out_dir, f"set_aside_{time.strftime('%Y%m%d_%H%M%S')}")
                os.makedirs(aside, exist_ok=True)
                for p in old:
                    for q in (p, p + ".sha256"):
                        if os.path.exists(q):
                            os.replace(q, os.path.join(aside, os.path.basename(q)))
                print(
                    f"[ctrlaug.train] resume=fresh: {len(old)} checkpoint(s) moved to {aside}",
                    file=sys.stderr,
                )
            cdist.barrier()
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

    def _check_resumable_settings(self, path: str, state: dict) -> None:
        """Refuse (one line) what a resume cannot apply: fewer epochs than already done, or a new
        batch_size in the middle of an epoch that is not a whole number of new batches."""
        cfg = self.cfg
        if state["epoch"] > cfg.epochs:
            raise ConfigError(
                f"bad training config: epochs={cfg.epochs} but {path} has already finished epoch "
                f"{state['epoch']}; resume with epochs >= {state['epoch']} or use another out_dir"
            )
        old_b = migrate_saved_config(state.get("config") or {}).get("batch_size", cfg.batch_size)
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
            "weight_decay": [g["weight_decay"] for g in self.opt.param_groups],
            "mi_lr": [g["lr"] for g in self.mi_opt.param_groups] if self.mi_opt is not None else [],
        }
        self.opt.load_state_dict(state["optimizer"])
        if self.mi_opt is not None and state.get("mi_optimizer") is not None:
            self.mi_opt.load_state_dict(state["mi_optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.queue.load_state_dict(state["queue"])
        self.epoch, self.step_in_epoch, self.step = state["epoch"], state["step_in_epoch"], state["step"]
        self.bad_streak = state.get("bad_streak", 0)
        restore_rng(state.get("rng", {}))
        self._apply_schedule(fresh)

    def _apply_schedule(self, fresh: dict) -> list[str]:
        """After a resume: this run's lr, lr_milestones (or the epochs they derive from),
        lr_gamma, weight_decay and mi.lr replace the restored ones where they differ; the lr is
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
            for g, base in zip(self.opt.param_groups, sched.base_lrs):
                g["initial_lr"] = base
                g["lr"] = base * sched.gamma**decays
            sched._last_lr = [g["lr"] for g in self.opt.param_groups]
        for g, wd in zip(self.opt.param_groups, fresh["weight_decay"]):
            if g["weight_decay"] != wd:
                changed.append(f"weight_decay {g['weight_decay']} -> {wd}")
                g["weight_decay"] = wd
        if self.mi_opt is not None:
            for g, lr in zip(self.mi_opt.param_groups, fresh["mi_lr"]):
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
        old_b = migrate_saved_config(state.get("config") or {}).get("batch_size", self.cfg.batch_size)
        if old_b != self.cfg.batch_size and self.step_in_epoch:
            done = self.step_in_epoch * old_b  # a whole number of new batches (checked at construction)
            self.step_in_epoch = done // self.cfg.batch_size
            self._applied.append(
                f"batch_size {old_b} -> {self.cfg.batch_size} ({done} videos of this epoch done)"
            )
        cdist.barrier()  # every rank has chosen before rank 0 sets the passed-over files aside
        if self.main:
            for p, _ in getattr(self, "_passed_over", []):
                if int(os.path.basename(p)[5:14]) > self.step:  # newer than the resumed one: set aside
                    for q in (p + ".sha256", p):
                        aside = os.path.join(
                            os.path.dirname(q), os.path.basename(q).replace(".pt", ".pt.unusable", 1)
                        )
                        with contextlib.suppress(OSError):
                            os.replace(q, aside)
        changed = _config_diff(migrate_saved_config(state.get("config", {})), config_to_dict(self.cfg))
        if changed and self.main:
            print(
                f"[ctrlaug.train] resuming {path} with changed config keys: {', '.join(changed)}",
                file=sys.stderr,
            )
        if self._applied and self.main:
            print(f"[ctrlaug.train] resume applies: {'; '.join(self._applied)}", file=sys.stderr)

    def save(self) -> None:
        if self.main:
            try:
                save_checkpoint(self.state_dict(), self.cfg.out_dir, self.step)
            except NonFiniteStateError as e:
                newest = next(iter(list_checkpoints(self.cfg.out_dir)), None)
                raise NonFiniteLossError(
                    f"{e}; stopping, the newest good checkpoint stays {newest or '(none)'}. Lower lr / the loss "
                    "weights or check the data"
                ) from None
            prune_checkpoints(self.cfg.out_dir, self.cfg.keep_checkpoints)
        cdist.barrier()

    # ---- one step: prepare_views -> forward -> update ---------------------------------------
    def draw_levels(self, B_local: int, V: int):
        """tau_l levels [B_local, V] + parameters of step ``self.step``: drawn for the global batch
        from a (seed, step) generator, this rank's rows kept. Identical whatever the number of ranks."""
        g = torch.Generator().manual_seed(_seed(self.cfg.seed, 2, self.step))
        rows = slice(self.rank * B_local, (self.rank + 1) * B_local)
        return sample_batch_levels(B_local * self.world, V, self.cfg.augment, g, rows=rows)

    def prepare_views(self, batch: dict) -> StepInputs:
        """A collated batch -> the step's model inputs: tau_l (levels of :meth:`draw_levels`) on
        the device, normalisation, the global / clip split (channels-last on CUDA if configured)."""
        cfg, dev = self.cfg, self.device
        boxes = batch["boxes"]  # [B, V, 7]
        B, V = boxes.shape[:2]
        levels, params = self.draw_levels(B, V)
        batch = dict(batch, levels=levels, lowlevel=params)
        views = augment_batch(batch, dev, cfg=cfg.augment)  # float [B, V, 3, F, S, S] in [0, 1]
        views = normalize_input(views)
        if cfg.channels_last and dev.type == "cuda":
            views = views.contiguous()
        glob = views[:, 0]
        clips = views[:, 1:].reshape(B * (V - 1), *views.shape[2:])
        if cfg.channels_last and dev.type == "cuda":
            glob = glob.contiguous(memory_format=torch.channels_last_3d)
            clips = clips.contiguous(memory_format=torch.channels_last_3d)
        return StepInputs(
            clips,
            glob,
            boxes[:, 1:].to(dev),
            boxes[:, 0].to(dev),
            levels.to(dev),
            batch["video_index"].to(dev),
            _seed(cfg.seed, 1, self.step),
        )

    def forward(self, inp: StepInputs) -> dict:
        """The model (DDP-wrapped when distributed) on prepared inputs, under autocast; returns
        :meth:`ctrlaug.losses.CtrlAugObjective.losses`' dict."""
        dev = self.device
        # the buffers (BatchNorm statistics, estimator moving averages) before this forward: a
        # skipped step whose forward made them non-finite puts them back (see update)
        self._buffers_before = [b.detach().clone() for b in self.obj.buffers()]
        autocast = (
            torch.autocast(dev.type, dtype=self.amp_dtype)
            if self.amp_dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            return self.model(
                inp.clips,
                inp.glob,
                inp.clip_boxes,
                inp.global_boxes,
                inp.levels,
                inp.video_index,
                inp.step_seed,
                self.queue.get(),
            )

    def update(self, out: dict) -> dict[str, float]:
        """Rank-averaged metrics of ``out`` (``loss``, ``loss_<term>``, every statistic); then
        either one optimisation step (backward, both Adams, queue push) or, when the loss or a
        term is not finite, a skipped step (and :class:`NonFiniteLossError` after
        ``max_bad_steps`` of them in a row)."""
        cfg = self.cfg
        loss = out["loss"]
        checked = {"loss": loss, **{f"loss_{n}": v for n, v in out["terms"].items()}}
        named = {**checked, **out["stats"]}
        vals = cdist.all_reduce_mean(torch.stack([v.detach().float() for v in named.values()]))
        finite = bool(torch.isfinite(vals[: len(checked)]).all())  # the statistics are not checked
        metrics = dict(zip(named, vals.tolist()))
        if not finite:
            return self._skip(
                metrics, "non-finite loss", ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
            )
        self.opt.zero_grad(set_to_none=True)
        if self.mi_opt is not None:
            self.mi_opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.opt)
        if not self.scaler.is_enabled():  # fp16's GradScaler skips inf/NaN gradients itself
            bad = _nonfinite(self.obj.named_parameters(), grads=True)
            if bad:
                return self._skip(
                    metrics, "non-finite gradient", f"{len(bad)} tensor(s): {', '.join(bad[:4])}"
                )
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(
                [p for g in self.opt.param_groups for p in g["params"]], cfg.grad_clip
            )
        self.bad_streak = 0
        self.scaler.step(self.opt)
        if self.mi_opt is not None:
            self.scaler.step(self.mi_opt)
        self.scaler.update()
        bad = _nonfinite(self.obj.named_parameters())
        if bad:  # the update itself overflowed: it cannot be undone, so stop before anything is saved
            raise NonFiniteLossError(
                f"aborting: the update of step {self.step} made {len(bad)} parameter tensor(s) non-finite "
                f"({', '.join(bad[:4])}) although the loss and the gradients were finite; nothing of it was "
                "checkpointed. Lower lr (or set grad_clip) and resume."
            )
        if "keys" in out:
            self.queue.push(out["keys"])
        metrics["skipped"] = 0.0
        return metrics

    def _skip(self, metrics: dict[str, float], what: str, detail: str) -> dict[str, float]:
        """A skipped step: no optimizer step, gradients dropped, buffers made non-finite by the
        step's forward put back; :class:`NonFiniteLossError` after ``max_bad_steps`` in a row."""
        cfg = self.cfg
        self.bad_streak += 1
        self.opt.zero_grad(set_to_none=True)
        if self.mi_opt is not None:
            self.mi_opt.zero_grad(set_to_none=True)
        bufs = list(self.obj.buffers())
        before = self._buffers_before
        if before is not None and len(before) == len(bufs) and _nonfinite(self.obj.named_buffers()):
            with torch.no_grad():
                for b, old in zip(bufs, before):
                    b.copy_(old)
        metrics["skipped"] = 1.0
        if self.main:
            print(
                f"[ctrlaug.train] step {self.step}: {what} ({detail}); step skipped "
                f"({self.bad_streak}/{cfg.max_bad_steps} in a row)",
                file=sys.stderr,
            )
        if self.bad_streak >= cfg.max_bad_steps:
            raise NonFiniteLossError(
                f"aborting: {self.bad_streak} consecutive steps with a {what} (last step {self.step}: {detail}). "
                "Lower lr / the loss weights, check the data, or raise max_bad_steps."
            )
        return metrics

    def run_step(self, batch: dict) -> dict[str, float]:
        """One training step: :meth:`prepare_views`, :meth:`forward`, :meth:`update`, timed."""
        dev = self.device
        t0 = time.perf_counter()
        inp = self.prepare_views(batch)
        t_aug = time.perf_counter()
        metrics = self.update(self.forward(inp))
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t1 = time.perf_counter()
        metrics["time_aug"] = t_aug - t0
        metrics["time_step"] = t1 - t0
        return metrics

    # ---- kNN monitor ----------------------------------------------------------------------------
    def knn_monitor(self) -> float:
        """Weighted kNN top-1 (%) of the current encoder: ``probe_split`` videos (mean of their
        ``probe_clips`` clip features) query the ``split`` videos; see
        :func:`ctrlaug.probe.knn_top1`. Runs on the training device, touches no global RNG."""
        if self.knn_sets is None:
            self.knn_sets = probe_datasets(self.cfg)
        bank, queries = self.knn_sets
        bs, nw = max(1, self.cfg.batch_size // self.world), self.cfg.num_workers
        bf, bl = extract_clip_features(self.obj.encoder, bank, batch_size=bs, num_workers=nw)
        qf, ql = extract_clip_features(self.obj.encoder, queries, batch_size=bs, num_workers=nw)
        return knn_top1(bf.mean(1), bl, qf.mean(1), ql, k=self.cfg.knn_k, t=self.cfg.knn_t)

    def _knn_due(self) -> bool:
        """After epoch ``self.epoch`` (already incremented): every knn_every epochs and the last."""
        k = self.cfg.knn_every
        return bool(k) and (self.epoch % k == 0 or self.epoch == self.cfg.epochs)

    # ---- the loop -------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Resume (if a checkpoint was chosen), train to ``epochs``, release the run folder."""
        try:
            return self._fit()
        finally:
            self.release()

    def _fit(self) -> dict:
        cfg = self.cfg
        self.maybe_resume()
        if self.main:
            os.makedirs(cfg.out_dir, exist_ok=True)
            save_config(cfg, os.path.join(cfg.out_dir, "config.yaml"))
            write_provenance(cfg.out_dir, self.device, world_size=self.world)
        fields = ["loss"] + [f"loss_{n}" for n in self.obj.enabled] + list(self.obj.stat_names)
        fields += ["lr", "clips_per_s", "skipped"] + (["knn_top1"] if cfg.knn_every else [])
        files = not get_format(cfg.dataset).rendered  # a rendered set has no bad videos to report
        fields += ["bad_videos"] if files else []
        bad = BadVideoLog()
        writer = MetricWriter(
            cfg.out_dir,
            fields,
            enabled=self.main,
            tensorboard=cfg.tensorboard,
            resume_step=self.step if self.resumed_from else None,
        )
        if self.main:
            self._banner(writer)
        steps_per_epoch = self.batches.steps
        total = cfg.epochs * steps_per_epoch
        done = self.epoch * steps_per_epoch + self.step_in_epoch
        bar = ProgressBar(total, enabled=self.main and cfg.progress, every=cfg.log_every)
        clips_per_video = 1 + cfg.augment.num_clips
        try:
            while self.epoch < cfg.epochs:
                self.batches.epoch, self.batches.start = self.epoch, self.step_in_epoch
                self.obj.train()
                t_wait = time.perf_counter()
                for batch in self.loader:
                    t_data = time.perf_counter() - t_wait
                    bad.update(batch)
                    m = self.run_step(batch)
                    self.step += 1
                    self.step_in_epoch += 1
                    done += 1
                    dt = t_data + m["time_step"]
                    m["clips_per_s"] = cfg.batch_size * clips_per_video / max(dt, 1e-9)
                    m["time_data"] = t_data
                    m["lr"] = self.opt.param_groups[0]["lr"]
                    m["epoch"] = self.epoch
                    m["step"] = self.step
                    self.history.append(m)
                    if self.main and (
                        self.step % cfg.log_every == 0 or self.step_in_epoch == steps_per_epoch
                    ):
                        writer.log(
                            self.step, self.epoch, {k: v for k, v in m.items() if k not in ("step", "epoch")}
                        )
                    bar.update(done, self.epoch, m["clips_per_s"], f"loss {m['loss']:.4f}")
                    if self.on_step is not None:
                        self.on_step(self.step, self.epoch, m)
                    if (
                        cfg.ckpt_every_steps
                        and self.step % cfg.ckpt_every_steps == 0
                        and self.step_in_epoch < steps_per_epoch
                    ):
                        self.save()
                    t_wait = time.perf_counter()
                self.epoch += 1
                self.step_in_epoch = 0
                self.sched.step()
                if files:
                    self._report_bad_videos(bad, writer, bar)
                if self._knn_due():
                    if self.main:
                        acc = self.knn_monitor()
                        self.knn_history.append((self.epoch, self.step, acc))
                        writer.log(self.step, self.epoch - 1, {"knn_top1": acc})
                        bar.note(f"epoch {self.epoch}: kNN top-1 {acc:.1f}% (k={cfg.knn_k})")
                    if self.world > 1:
                        cdist.barrier()
                self.save()
        finally:
            bar.close()
            writer.close()
        plot_note = None
        if self.main and cfg.plot and os.path.exists(writer.path):
            plot_note = plot_losses(writer.path, os.path.join(cfg.out_dir, "loss_curve.png"))
            if plot_note:
                print(f"[ctrlaug.train] {plot_note}", file=sys.stderr)
        return {
            "history": self.history,
            "out_dir": cfg.out_dir,
            "steps": self.step,
            "resumed_from": self.resumed_from,
            "knn": self.knn_history,
        }

    def _report_bad_videos(self, bad: BadVideoLog, writer: MetricWriter, bar: ProgressBar) -> None:
        """Epoch end (every rank): the bad videos all ranks met this epoch, each replaced by another
        sample, go to the ``bad_videos`` column of metrics.csv (distinct videos) and, if any, to
        the log with their reasons; then the log starts over."""
        every = BadVideoLog()
        for rank_log in cdist.all_gather_object(bad):
            every.merge(rank_log)
        bad.reset()
        if self.main:
            writer.log(self.step, self.epoch - 1, {"bad_videos": every.count})
            if every.count:
                msg = f"[ctrlaug.train] epoch {self.epoch}: {every.summary()}"
                if bar.enabled:
                    bar.note(msg)
                else:
                    print(msg, file=sys.stderr)

    def _banner(self, writer: MetricWriter) -> None:
        from ctrlaug.ops import status

        cfg = self.cfg
        n_params = sum(p.numel() for p in self.obj.encoder.parameters())
        on = self.obj.enabled
        st = status()
        print(
            f"[ctrlaug.train] {cfg.arch} width {cfg.width} ({n_params / 1e6:.2f}M params) on {self.device}"
            f" x{self.world}, amp={self.amp_dtype}, losses={'+'.join(on)}, dataset={cfg.dataset} "
            f"({len(self.dataset)} videos, {self.batches.steps} steps/epoch x {cfg.epochs} epochs), "
            f"ops: cpp={st['cpp']} cuda={st['cuda_kernels']}, out_dir={cfg.out_dir}"
            + (f", resumed from {self.resumed_from}" if self.resumed_from else ""),
            file=sys.stderr,
        )
        if writer.tb_note:
            print(f"[ctrlaug.train] {writer.tb_note}", file=sys.stderr)


def _nonfinite(named, grads: bool = False) -> list[str]:
    """Names of the floating-point tensors (or their gradients) holding NaN/inf. One fused norm
    per call on the common path; the names are looked up only when something is off."""
    items = [(n, t.grad if grads else t) for n, t in named]
    items = [(n, t.detach()) for n, t in items if t is not None and t.is_floating_point()]
    if not items:
        return []
    norms = torch._foreach_norm([t for _, t in items])
    if bool(torch.isfinite(torch.stack(norms)).all()):
        return []
    return [n for n, t in items if not bool(torch.isfinite(t).all())] or ["(a norm overflowed)"]


def _config_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts (``resume`` ignored)."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _config_diff(a, b, f"{prefix}{k}.")
        elif a != b and k != "resume":
            out.append(f"{prefix}{k} ({a!r} -> {b!r})")
    return out


def _collate(samples):
    return collate_views(samples, levels=False)


def train(cfg: TrainConfig, on_step: Callable[[int, int, dict], None] | None = None) -> dict:
    """Run (or resume) pretraining; returns ``{"history", "out_dir", "steps", "resumed_from",
    "trainer"}``. ``on_step(step, epoch, metrics)`` is called after every step (tests use it
    to interrupt a run)."""
    trainer = Trainer(cfg, on_step)
    result = trainer.fit()
    result["trainer"] = trainer
    return result


def probe_datasets(cfg: TrainConfig):
    """(train, test) eval-mode datasets of the probe and the kNN monitor: ``split`` and
    ``probe_split``, ``probe_clips`` uniformly spaced centre-cropped clips per video."""
    aug = dataclasses.replace(cfg.augment, eval_clips=cfg.probe_clips)
    pcfg = dataclasses.replace(cfg, augment=aug)
    return tuple(build_train_dataset(pcfg, split, mode="eval") for split in (cfg.split, cfg.probe_split))


def run_probe(cfg: TrainConfig, encoder: torch.nn.Module, device: torch.device) -> dict:
    """Linear probe of every labelled factor, for ``encoder`` and for a random-init encoder of the
    same architecture (seeded ``cfg.seed + 1``), and the random-init floor over
    :data:`ctrlaug.floor.FLOOR_INITS` such encoders (``random_init_floor``: mean and spread).

    Returns ``{"primary", "factors": {factor: {"trained", "random_init", "chance", "trained_train"}},
    "trained": {...}, "random_init": {...}}``; the last two hold the primary factor's
    ``top1``/``train_top1`` and the probe set sizes.
    """
    train_set, test_set = probe_datasets(cfg)
    kw = dict(epochs=cfg.probe_epochs, num_workers=cfg.num_workers, seed=cfg.seed)
    trained = factor_probe(encoder, train_set, test_set, **kw)
    inits = []  # the random-init floor over FLOOR_INITS encoders (ctrlaug.floor)
    for i in range(FLOOR_INITS):
        torch.manual_seed(random_init_seed(cfg.seed, i))
        rand = build_encoder(cfg.arch, cfg.width, cfg.spatial_stride1_stages).to(device)
        inits.append(factor_probe(rand, train_set, test_set, **kw))
    random_init = inits[0]
    primary = train_set.primary_factor
    sizes = {"num_train": len(train_set), "num_test": len(test_set)}
    return {
        "primary": primary,
        "factors": {
            f: {
                "trained": trained[f]["top1"],
                "random_init": random_init[f]["top1"],
                "random_init_floor": mean_spread([r[f]["top1"] for r in inits]),
                "chance": trained[f]["chance"],
                "trained_train": trained[f]["train_top1"],
            }
            for f in trained
        },
        "trained": {**trained[primary], **sizes},
        "random_init": {**random_init[primary], **sizes},
    }


def write_probe(cfg: TrainConfig, res: dict, seconds: float) -> str:
    """Print the per-factor probe and write ``<out_dir>/probe.json`` (and ``probe.txt``)."""
    tr = res["trained"]
    lines = [
        f"linear probe on {cfg.dataset}/{cfg.probe_split} ({tr['num_train']} train / {tr['num_test']} test "
        f"videos, {seconds:.0f}s), top-1 %:",
        f"  {'factor':<12} {'trained':>8} {f'random-init ({FLOOR_INITS} inits)':>24} {'chance':>7}",
    ]
    for f, r in res["factors"].items():
        tag = "  (primary)" if f == res["primary"] else ""
        fl = r.get("random_init_floor") or {"mean": r["random_init"], "std": 0.0}
        floor = f"{fl['mean']:.1f} ± {fl['std']:.1f}"
        lines.append(f"  {f:<12} {r['trained']:>8.1f} {floor:>24} {r['chance']:>7.1f}{tag}")
    msg = "\n".join(lines)
    print(msg)
    atomic_write(os.path.join(cfg.out_dir, "probe.txt"), msg + "\n")
    out = {
        "primary": res["primary"],
        "factors": {
            f: {
                **{k: round(r[k], 2) for k in ("trained", "random_init", "chance")},
                **(
                    {"random_init_floor": {k: v for k, v in r["random_init_floor"].items()}}
                    if "random_init_floor" in r
                    else {}
                ),
            }
            for f, r in res["factors"].items()
        },
        "num_train": tr["num_train"],
        "num_test": tr["num_test"],
    }
    path = os.path.join(cfg.out_dir, "probe.json")
    atomic_write(path, json.dumps(out, indent=2))
    return path


def _parse_args(argv: list[str]) -> tuple[str | None, list[str], bool]:
    path, overrides, want_help = None, [], False
    it = iter(argv)
    for a in it:
        if a in ("-h", "--help"):
            want_help = True
        elif a == "--config":
            path = next(it, None)
            if path is None:
                raise ConfigError("bad training config: --config needs a YAML path")
        elif a.startswith("--config="):
            path = a.split("=", 1)[1]
        elif "=" not in a and a.endswith((".yaml", ".yml")):
            path = a
        elif a.startswith("--") and "=" in a:
            overrides.append(a[2:])
        else:
            overrides.append(a)
    return path, overrides, want_help


USAGE = """usage: python -m ctrlaug.train [--config FILE.yaml] [key=value ...]
       python -m ctrlaug.train --print-config [--config FILE.yaml] [key=value ...]
       torchrun --nproc_per_node N -m ctrlaug.train [--config FILE.yaml] [key=value ...]

No arguments: the embedded demo (small R3D-18, shapes benchmark, CPU, a few minutes), then a
linear probe of every factor for the trained encoder beside a random-init one (probe.json). Values given as key=value are parsed
as YAML (lists: key=[3,4] or key=3,4; nested: augment.num_clips=3, rc.tau=0.1; a loss's switch:
nce=true is nce.enabled=true).

keys (default  [type] {choices}):
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        print_config = "--print-config" in argv
        path, overrides, want_help = _parse_args([a for a in argv if a != "--print-config"])
        if want_help:
            print(USAGE + help_text())
            return 0
        cfg = load_config(path, overrides)
        if print_config:  # the resolved config (defaults < file < overrides), as config.yaml holds it
            print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
            return 0
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    from ctrlaug.data import DatasetFormatError

    try:
        result = train(cfg)
    except (ConfigError, NonFiniteLossError, DatasetFormatError) as e:
        # Bad input the user can fix: one clear line, no traceback.
        print(f"error: {e}", file=sys.stderr)
        return 2
    trainer = result["trainer"]
    if trainer.main:
        hist = result["history"]
        if hist:
            first = [h["loss"] for h in hist[: max(1, len(hist) // 10)] if not h.get("skipped")]
            last = [h["loss"] for h in hist[-max(1, len(hist) // 10) :] if not h.get("skipped")]
            if first and last:
                print(
                    f"[ctrlaug.train] {result['steps']} steps in {time.perf_counter() - t0:.0f}s; "
                    f"loss {sum(first) / len(first):.4f} (first 10%) -> {sum(last) / len(last):.4f} (last 10%)"
                )
        if cfg.probe:
            t1 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                res = run_probe(cfg, trainer.obj.encoder, trainer.device)
            write_probe(cfg, res, time.perf_counter() - t1)
        print(f"[ctrlaug.train] total {time.perf_counter() - t0:.0f}s; run folder {cfg.out_dir}")
    if cdist.is_dist():
        cdist.barrier()
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
