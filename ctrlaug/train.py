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

import contextlib
import dataclasses
import json
import os
import random
import sys
import time
import warnings
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
from ctrlaug.losses import CtrlAugObjective, FeatureQueue
from ctrlaug.models import build_encoder, normalize_input
from ctrlaug.probe import extract_clip_features, factor_probe, knn_top1
from ctrlaug.utils import dist as cdist
from ctrlaug.utils.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    load_latest,
    prune_checkpoints,
    save_checkpoint,
)
from ctrlaug.utils.device import resolve_device
from ctrlaug.utils.metrics import MetricWriter, ProgressBar, plot_losses
from ctrlaug.utils.provenance import write_provenance

__all__ = [
    "main",
    "train",
    "build_objective",
    "StepInputs",
    "build_train_dataset",
    "lr_milestones",
    "Trainer",
    "NonFiniteLossError",
]


class NonFiniteLossError(RuntimeError):
    """Raised after ``max_bad_steps`` consecutive steps with a NaN/inf loss."""


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
        rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
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
            "rng": rng,
            "config": config_to_dict(self.cfg),
            "world_size": self.world,
        }

    def load_state_dict(self, state: dict, path: str = "checkpoint") -> None:
        try:
            self.obj.load_state_dict(state["model"])
        except RuntimeError as e:
            raise RuntimeError(
                f"{path} does not fit this model (was it saved with another arch/width/heads?): {e}"
            ) from None
        self.opt.load_state_dict(state["optimizer"])
        if self.mi_opt is not None and state.get("mi_optimizer") is not None:
            self.mi_opt.load_state_dict(state["mi_optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.queue.load_state_dict(state["queue"])
        self.epoch, self.step_in_epoch, self.step = state["epoch"], state["step_in_epoch"], state["step"]
        self.bad_streak = state.get("bad_streak", 0)
        rng = state.get("rng", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"].cpu())  # map_location may have moved it to the GPU
        if "numpy" in rng:
            np.random.set_state(rng["numpy"])
        if "python" in rng:
            random.setstate(rng["python"])
        if "cuda" in rng and torch.cuda.is_available():
            with contextlib.suppress(Exception):
                torch.cuda.set_rng_state_all([t.cpu() for t in rng["cuda"]])

    def maybe_resume(self) -> None:
        how = self.cfg.resume
        if how == "none":
            old = list_checkpoints(self.cfg.out_dir)
            if old:  # new checkpoints would interleave with the old run's and resume=auto would mix them
                raise ConfigError(
                    f"bad training config: resume='none' but out_dir={self.cfg.out_dir!r} already holds "
                    f"{len(old)} checkpoint(s) of another run; use a fresh out_dir, delete them, or resume=auto"
                )
            return
        if how == "auto":
            found = load_latest(self.cfg.out_dir, map_location=self.device)
            if found is None:
                return
            path, state = found
        else:
            if not os.path.exists(how):
                raise ConfigError(
                    f"bad training config: resume={how!r}: no such checkpoint (use 'auto' or 'none')"
                )
            path, state = how, load_checkpoint(how, map_location=self.device)
        self.load_state_dict(state, path)
        self.resumed_from = path
        changed = _config_diff(migrate_saved_config(state.get("config", {})), config_to_dict(self.cfg))
        if changed and self.main:
            print(
                f"[ctrlaug.train] resuming {path} with changed config keys: {', '.join(changed)}",
                file=sys.stderr,
            )

    def save(self) -> None:
        if self.main:
            save_checkpoint(self.state_dict(), self.cfg.out_dir, self.step)
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
            self.bad_streak += 1
            self.opt.zero_grad(set_to_none=True)
            if self.mi_opt is not None:
                self.mi_opt.zero_grad(set_to_none=True)
            metrics["skipped"] = 1.0
            if self.main:
                print(
                    f"[ctrlaug.train] step {self.step}: non-finite loss "
                    f"({', '.join(f'{k}={v:.4g}' for k, v in metrics.items())}); step skipped "
                    f"({self.bad_streak}/{cfg.max_bad_steps} in a row)",
                    file=sys.stderr,
                )
            if self.bad_streak >= cfg.max_bad_steps:
                raise NonFiniteLossError(
                    f"aborting: {self.bad_streak} consecutive steps with a non-finite loss (last step {self.step}: "
                    f"{', '.join(f'{k}={v:.4g}' for k, v in metrics.items())}). Lower lr / the loss weights, "
                    "check the data, or raise max_bad_steps."
                )
        else:
            self.bad_streak = 0
            self.opt.zero_grad(set_to_none=True)
            if self.mi_opt is not None:
                self.mi_opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if cfg.grad_clip > 0:
                self.scaler.unscale_(self.opt)
                torch.nn.utils.clip_grad_norm_(
                    [p for g in self.opt.param_groups for p in g["params"]], cfg.grad_clip
                )
            self.scaler.step(self.opt)
            if self.mi_opt is not None:
                self.scaler.step(self.mi_opt)
            self.scaler.update()
            if "keys" in out:
                self.queue.push(out["keys"])
            metrics["skipped"] = 0.0
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
    same architecture (seeded ``cfg.seed + 1``).

    Returns ``{"primary", "factors": {factor: {"trained", "random_init", "chance", "trained_train"}},
    "trained": {...}, "random_init": {...}}``; the last two hold the primary factor's
    ``top1``/``train_top1`` and the probe set sizes.
    """
    train_set, test_set = probe_datasets(cfg)
    kw = dict(epochs=cfg.probe_epochs, num_workers=cfg.num_workers, seed=cfg.seed)
    trained = factor_probe(encoder, train_set, test_set, **kw)
    torch.manual_seed(cfg.seed + 1)
    rand = build_encoder(cfg.arch, cfg.width, cfg.spatial_stride1_stages).to(device)
    random_init = factor_probe(rand, train_set, test_set, **kw)
    primary = train_set.primary_factor
    sizes = {"num_train": len(train_set), "num_test": len(test_set)}
    return {
        "primary": primary,
        "factors": {
            f: {
                "trained": trained[f]["top1"],
                "random_init": random_init[f]["top1"],
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
        f"  {'factor':<12} {'trained':>8} {'random-init':>12} {'chance':>7}",
    ]
    for f, r in res["factors"].items():
        tag = "  (primary)" if f == res["primary"] else ""
        lines.append(f"  {f:<12} {r['trained']:>8.1f} {r['random_init']:>12.1f} {r['chance']:>7.1f}{tag}")
    msg = "\n".join(lines)
    print(msg)
    with open(os.path.join(cfg.out_dir, "probe.txt"), "w") as f:
        f.write(msg + "\n")
    out = {
        "primary": res["primary"],
        "factors": {
            f: {k: round(r[k], 2) for k in ("trained", "random_init", "chance")}
            for f, r in res["factors"].items()
        },
        "num_train": tr["num_train"],
        "num_test": tr["num_test"],
    }
    path = os.path.join(cfg.out_dir, "probe.json")
    with open(path + ".tmp", "w") as f:
        json.dump(out, f, indent=2)
    os.replace(path + ".tmp", path)
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
