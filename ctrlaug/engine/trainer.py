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
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader

from ctrlaug.augment import augment_batch, sample_batch_levels
from ctrlaug.config import (
    ConfigError,
    TrainConfig,
    save_config,
)
from ctrlaug.data import BadVideoLog, build_train_dataset, get_format
from ctrlaug.engine.build import build_objective, lr_milestones
from ctrlaug.engine.sampling import EpochIndexed, GlobalBatches, collate_train, derive_seed
from ctrlaug.engine.state import RunState
from ctrlaug.errors import NonFiniteLossError, RunFolderError, StoppedBySignal
from ctrlaug.eval.factors import probe_datasets
from ctrlaug.eval.features import extract_clip_features
from ctrlaug.eval.metrics import knn_top1
from ctrlaug.losses import FeatureQueue, StepBatch
from ctrlaug.models import normalize_input
from ctrlaug.utils import dist as dist_utils
from ctrlaug.utils.checkpoint import (
    list_checkpoints,
    remove_stale_temp_files,
)
from ctrlaug.utils.device import resolve_device
from ctrlaug.utils.metrics import MetricWriter, ProgressBar, plot_losses
from ctrlaug.utils.provenance import write_provenance
from ctrlaug.utils.runlock import FolderBusyError, FolderUnusableError, RunLock
from ctrlaug.utils.safeio import refuse_link

__all__ = ["Trainer", "train"]


class Trainer(RunState):
    """State and loop of one pretraining run (see the module docstring): built from a
    :class:`~ctrlaug.config.TrainConfig`, :meth:`run_step` is one step, :meth:`fit` the loop;
    saving and resuming are :class:`~ctrlaug.engine.state.RunState`'s."""

    def __init__(self, cfg: TrainConfig, on_step: Callable[[int, int, dict], None] | None = None):
        self.cfg = cfg
        self.on_step = on_step
        try:
            want = resolve_device(cfg.device, "device").type
        except ValueError as e:
            raise ConfigError(f"bad training config: {e}") from None
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.rank, self.world, local_rank = dist_utils.init_distributed(want)
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
            if self.main:  # a link planted where a log should be: refused before any work
                for name in RUN_FILES:
                    refuse_link(os.path.join(cfg.out_dir, name), "run folder entry")
            self._build(cfg, want, local_rank)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Release the run folder's lock (at the end of :meth:`fit`; also when garbage-collected)."""
        if self._lock is not None:
            self._lock.release()

    def _build(self, cfg: TrainConfig, want: str, local_rank: int) -> None:
        amp = cfg.model.amp if cfg.model.amp != "auto" else ("bf16" if self.device.type == "cuda" else "off")
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)

        # ---- model ------------------------------------------------------------------------------
        torch.manual_seed(cfg.seed)
        obj = build_objective(cfg)
        if cfg.model.sync_bn and self.world > 1:
            obj.encoder = dist_utils.convert_sync_bn(obj.encoder, self.device.type)
        obj.to(self.device)
        if cfg.model.channels_last and self.device.type == "cuda":
            obj.encoder.to(memory_format=torch.channels_last_3d)
        if cfg.model.compile:
            obj.encoder.compile()
        self.obj = obj
        self.model = obj
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.model = DDP(obj, device_ids=[local_rank] if self.device.type == "cuda" else None)
        mi_params = list(obj.mi.G.parameters()) if obj.mi is not None else []
        mi_ids = {id(p) for p in mi_params}
        main_params = [p for p in obj.parameters() if id(p) not in mi_ids]
        self.optimizer = torch.optim.Adam(main_params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        self.mi_optimizer = torch.optim.Adam(mi_params, lr=cfg.mi.lr) if mi_params else None
        self.sched = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, lr_milestones(cfg), gamma=cfg.optim.lr_gamma
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.queue = FeatureQueue(cfg.rc.queue_size if cfg.rc.enabled else 0, cfg.model.proj_dim).to(
            self.device
        )
        self._buffers_before: list[torch.Tensor] | None = None

        # ---- the checkpoint to resume from: chosen and checked before any data work -------------
        self._resume = self._select_checkpoint()

        # ---- data -------------------------------------------------------------------------------
        self.dataset = build_train_dataset(cfg)
        self.batches = GlobalBatches(
            len(self.dataset), cfg.batch_size, cfg.seed, self.rank, self.world, cfg.optim.max_steps_per_epoch
        )
        self.loader = DataLoader(
            EpochIndexed(self.dataset),
            batch_sampler=self.batches,
            collate_fn=collate_train,
            num_workers=cfg.num_workers,
            persistent_workers=cfg.num_workers > 0,
            worker_init_fn=_ignore_stop_signals if cfg.num_workers > 0 else None,
            pin_memory=self.device.type == "cuda",
        )

        # kNN monitor sets are built now so that a missing probe split fails before any training.
        self.knn_sets = probe_datasets(cfg) if cfg.eval.knn_every and self.main else None
        self.knn_history: list[tuple[int, int, float]] = []  # (epoch done, step, top-1 %)

        # ---- progress state ---------------------------------------------------------------------
        self.epoch = 0  # epoch being run (or next to run)
        self.step_in_epoch = 0  # steps of self.epoch already done
        self.step = 0  # global optimisation steps done (skipped steps included)
        self.bad_streak = 0
        self.history: list[dict] = []
        self.resumed_from: str | None = None

    # ---- one step: prepare_views -> forward -> update ---------------------------------------
    def draw_levels(self, B_local: int, V: int):
        """tau_l levels [B_local, V] + parameters of step ``self.step``: drawn for the global batch
        from a (seed, step) generator, this rank's rows kept. Identical whatever the number of ranks."""
        g = torch.Generator().manual_seed(derive_seed(self.cfg.seed, 2, self.step))
        rows = slice(self.rank * B_local, (self.rank + 1) * B_local)
        return sample_batch_levels(B_local * self.world, V, self.cfg.augment, g, rows=rows)

    def prepare_views(self, batch: dict) -> StepBatch:
        """A collated batch -> the step's model inputs: tau_l (levels of :meth:`draw_levels`) on
        the device, normalisation, the global / clip split (channels-last on CUDA if configured)."""
        cfg, dev = self.cfg, self.device
        boxes = batch["boxes"]  # [B, V, 7]
        B, V = boxes.shape[:2]
        levels, params = self.draw_levels(B, V)
        batch = dict(batch, levels=levels, lowlevel=params)
        views = augment_batch(batch, dev, cfg=cfg.augment)  # float [B, V, 3, F, S, S] in [0, 1]
        views = normalize_input(views)
        if cfg.model.channels_last and dev.type == "cuda":
            views = views.contiguous()
        global_views = views[:, 0]
        clips = views[:, 1:].reshape(B * (V - 1), *views.shape[2:])
        if cfg.model.channels_last and dev.type == "cuda":
            global_views = global_views.contiguous(memory_format=torch.channels_last_3d)
            clips = clips.contiguous(memory_format=torch.channels_last_3d)
        return StepBatch(
            clips=clips,
            global_views=global_views,
            clip_boxes=boxes[:, 1:].to(dev),
            global_boxes=boxes[:, 0].to(dev),
            levels=levels.to(dev),
            video_ids=batch["video_index"].to(dev),
            step_seed=derive_seed(cfg.seed, 1, self.step),
        )

    def forward(self, inputs: StepBatch) -> dict:
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
            return self.model(inputs, self.queue.get())

    def update(self, out: dict) -> dict[str, float]:
        """Rank-averaged metrics of ``out`` (``loss``, ``loss_<term>``, every statistic); then
        either one optimisation step (backward, both Adams, queue push) or, when the loss or a
        term is not finite, a skipped step (and :class:`NonFiniteLossError` after
        ``max_bad_steps`` of them in a row)."""
        cfg = self.cfg
        loss = out["loss"]
        checked = {"loss": loss, **{f"loss_{n}": v for n, v in out["terms"].items()}}
        named = {**checked, **out["stats"]}
        vals = dist_utils.all_reduce_mean(torch.stack([v.detach().float() for v in named.values()]))
        finite = bool(torch.isfinite(vals[: len(checked)]).all())  # the statistics are not checked
        metrics = dict(zip(named, vals.tolist()))
        if not finite:
            return self._skip(
                metrics, "non-finite loss", ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
            )
        self.optimizer.zero_grad(set_to_none=True)
        if self.mi_optimizer is not None:
            self.mi_optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.optim.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
        if not self.scaler.is_enabled():  # fp16's GradScaler skips inf/NaN gradients itself
            bad = _nonfinite(self.obj.named_parameters(), grads=True)
            if bad:
                return self._skip(
                    metrics, "non-finite gradient", f"{len(bad)} tensor(s): {', '.join(bad[:4])}"
                )
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(
                [p for g in self.optimizer.param_groups for p in g["params"]], cfg.optim.grad_clip
            )
        self.bad_streak = 0
        self.scaler.step(self.optimizer)
        if self.mi_optimizer is not None:
            self.scaler.step(self.mi_optimizer)
        self.scaler.update()
        bad = _nonfinite(self.obj.named_parameters())
        if bad:  # the update itself overflowed: it cannot be undone, so stop before anything is saved
            self.note_trouble()
            raise NonFiniteLossError(
                f"aborting: the update of step {self.step} made {len(bad)} parameter tensor(s) non-finite "
                f"({', '.join(bad[:4])}) although the loss and the gradients were finite; nothing of it was "
                "checkpointed"
            )
        if "keys" in out:
            self.queue.push(out["keys"])
        metrics["skipped"] = 0.0
        return metrics

    def _skip(self, metrics: dict[str, float], what: str, detail: str) -> dict[str, float]:
        """A skipped step: no optimizer step, gradients dropped, buffers made non-finite by the
        step's forward put back; :class:`NonFiniteLossError` after ``max_bad_steps`` in a row."""
        cfg = self.cfg
        self.note_trouble()
        self.bad_streak += 1
        self.optimizer.zero_grad(set_to_none=True)
        if self.mi_optimizer is not None:
            self.mi_optimizer.zero_grad(set_to_none=True)
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
                f"({self.bad_streak}/{cfg.optim.max_bad_steps} in a row)",
                file=sys.stderr,
            )
        if self.bad_streak >= cfg.optim.max_bad_steps:
            raise NonFiniteLossError(
                f"aborting: {self.bad_streak} consecutive steps with a {what} (last step {self.step}: "
                f"{detail[:300]}); if the data is fine, lower lr / the loss weights (or raise max_bad_steps)"
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
        :func:`ctrlaug.eval.metrics.knn_top1`. Runs on the training device, touches no global RNG."""
        if self.knn_sets is None:
            self.knn_sets = probe_datasets(self.cfg)
        bank, queries = self.knn_sets
        bs, nw = max(1, self.cfg.batch_size // self.world), self.cfg.num_workers
        bf, bl = extract_clip_features(self.obj.encoder, bank, batch_size=bs, num_workers=nw)
        qf, ql = extract_clip_features(self.obj.encoder, queries, batch_size=bs, num_workers=nw)
        return knn_top1(bf.mean(1), bl, qf.mean(1), ql, k=self.cfg.eval.knn_k, t=self.cfg.eval.knn_t)

    def _knn_due(self) -> bool:
        """After epoch ``self.epoch`` (already incremented): every knn_every epochs and the last."""
        k = self.cfg.eval.knn_every
        return bool(k) and (self.epoch % k == 0 or self.epoch == self.cfg.epochs)

    # ---- the loop -------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Resume (if a checkpoint was chosen), train to ``epochs``, release the run folder.

        SIGTERM and SIGUSR1 (a scheduler's preemption, ``docker stop``) stop the run after the
        current step, with a checkpoint: :class:`ctrlaug.errors.StoppedBySignal`. A run that
        aborts on non-finite values names the newest good checkpoint and the command that
        recovers from it."""
        old = _install_stop_handlers(self)
        try:
            return self._fit()
        except NonFiniteLossError as e:
            if not self.main:
                raise
            raise NonFiniteLossError(f"{e}. {self.recovery_advice()}") from None
        finally:
            _restore_handlers(old)
            self.release()

    # ---- stopping on a signal ---------------------------------------------------------------------
    def request_stop(self, signum: int) -> None:
        """What the SIGTERM / SIGUSR1 handler does: ask the loop to stop after the current step."""
        self._stop_signal = signum

    def _stop_due(self) -> int:
        """The signal to stop on after this step (0: none). Under DDP every rank stops at the same
        step: the flag is reduced over the ranks (one scalar per step, only when distributed)."""
        sig = getattr(self, "_stop_signal", 0) or 0
        if self.world > 1:
            flag = torch.tensor([float(sig)], device=self.device)
            sig = int(round(float(dist_utils.all_reduce_max(flag)[0])))
        return sig

    def _stop_now(self, signum: int) -> None:
        """Checkpoint this step (atomic) and raise :class:`StoppedBySignal` (exit 128 + signum)."""
        name = signal.Signals(signum).name  # only SIGTERM / SIGUSR1 are handled (STOP_SIGNALS)
        path = self.save()
        if self.main:
            where = (
                f"checkpoint {path} written"
                if path
                else f"no checkpoint inside a run of non-finite steps (newest: "
                f"{next(iter(list_checkpoints(self.cfg.out_dir)), '(none)')})"
            )
        else:
            where = "checkpoint written by rank 0"
        raise StoppedBySignal(
            f"{name} received: stopped after step {self.step}, {where}; the same command with "
            "resume=auto (the default) continues from it",
            signum,
        )

    def _fit(self) -> dict:
        cfg = self.cfg
        self.maybe_resume()
        files = not get_format(cfg.dataset).rendered  # a rendered set has no bad videos to report
        writer = self._open_logs(files)
        steps_per_epoch = self.batches.steps
        done = self.epoch * steps_per_epoch + self.step_in_epoch
        bar = ProgressBar(
            cfg.epochs * steps_per_epoch, enabled=self.main and cfg.log.progress, every=cfg.log.every
        )
        bad = BadVideoLog()
        try:
            while self.epoch < cfg.epochs:
                self.batches.epoch, self.batches.start = self.epoch, self.step_in_epoch
                self.obj.train()
                t_wait = time.perf_counter()
                for batch in self.loader:
                    t_data = time.perf_counter() - t_wait
                    bad.update(batch)
                    m = self.run_step(batch)
                    done += 1
                    self._after_step(m, t_data, done, writer, bar)
                    t_wait = time.perf_counter()
                self._end_epoch(bad if files else None, writer, bar)
        finally:
            bar.close()
            writer.close()
        if self.main and cfg.log.plot and os.path.exists(writer.path):
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

    def _open_logs(self, files: bool) -> MetricWriter:
        """The run folder's config.yaml and provenance.json (rank 0), and the metric writer
        (metrics.csv, TensorBoard) with one column per loss term and statistic, and a bad_videos
        column when the dataset is read from ``files`` (a rendered one has none)."""
        cfg = self.cfg
        if self.main:
            os.makedirs(cfg.out_dir, exist_ok=True)
            self.set_aside_history()
            save_config(cfg, os.path.join(cfg.out_dir, "config.yaml"))
            write_provenance(cfg.out_dir, self.device, world_size=self.world)
        fields = ["loss"] + [f"loss_{n}" for n in self.obj.enabled] + list(self.obj.stat_names)
        fields += ["lr", "clips_per_s", "skipped"] + (["knn_top1"] if cfg.eval.knn_every else [])
        fields += ["bad_videos"] if files else []
        writer = MetricWriter(
            cfg.out_dir,
            fields,
            enabled=self.main,
            tensorboard=cfg.log.tensorboard,
            resume_step=self.step if self.resumed_from else None,
        )
        if self.main:
            self._banner(writer)
        return writer

    def _after_step(self, m: dict, t_data: float, done: int, writer: MetricWriter, bar: ProgressBar) -> None:
        """Count the step, complete and log its metrics, call ``on_step``, and write the extra
        checkpoint of ``ckpt_every_steps`` (never at an epoch's end, which saves anyway)."""
        cfg = self.cfg
        steps_per_epoch = self.batches.steps
        self.step += 1
        self.step_in_epoch += 1
        dt = t_data + m["time_step"]
        m["clips_per_s"] = cfg.batch_size * (1 + cfg.augment.num_clips) / max(dt, 1e-9)
        m["time_data"] = t_data
        m["lr"] = self.optimizer.param_groups[0]["lr"]
        m["epoch"] = self.epoch
        m["step"] = self.step
        self.history.append(m)
        if self.main and (self.step % cfg.log.every == 0 or self.step_in_epoch == steps_per_epoch):
            writer.log(self.step, self.epoch, {k: v for k, v in m.items() if k not in ("step", "epoch")})
        bar.update(done, self.epoch, m["clips_per_s"], f"loss {m['loss']:.4f}")
        if self.on_step is not None:
            self.on_step(self.step, self.epoch, m)
        sig = self._stop_due()
        if sig:
            self._stop_now(sig)
        if (
            cfg.log.ckpt_every_steps
            and self.step % cfg.log.ckpt_every_steps == 0
            and self.step_in_epoch < steps_per_epoch
        ):
            self.save()

    def _end_epoch(self, bad: BadVideoLog | None, writer: MetricWriter, bar: ProgressBar) -> None:
        """Epoch end: the lr schedule steps, the bad videos are reported (``bad`` None for a
        rendered dataset), the kNN monitor runs when due, and the epoch's checkpoint is saved."""
        cfg = self.cfg
        self.epoch += 1
        self.step_in_epoch = 0
        self.sched.step()
        if bad is not None:
            self._report_bad_videos(bad, writer, bar)
        if self._knn_due():
            if self.main:
                acc = self.knn_monitor()
                self.knn_history.append((self.epoch, self.step, acc))
                writer.log(self.step, self.epoch - 1, {"knn_top1": acc})
                bar.note(f"epoch {self.epoch}: kNN top-1 {acc:.1f}% (k={cfg.eval.knn_k})")
            if self.world > 1:
                dist_utils.barrier()
        self.save()

    def _report_bad_videos(self, bad: BadVideoLog, writer: MetricWriter, bar: ProgressBar) -> None:
        """Epoch end (every rank): the bad videos all ranks met this epoch, each replaced by another
        sample, go to the ``bad_videos`` column of metrics.csv (distinct videos) and, if any, to
        the log with their reasons; then the log starts over."""
        every = BadVideoLog()
        for rank_log in dist_utils.all_gather_object(bad):
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
            f"[ctrlaug.train] {cfg.model.arch} width {cfg.model.width} ({n_params / 1e6:.2f}M params) on {self.device}"
            f" x{self.world}, amp={self.amp_dtype}, losses={'+'.join(on)}, dataset={cfg.dataset} "
            f"({len(self.dataset)} videos, {self.batches.steps} steps/epoch x {cfg.epochs} epochs), "
            f"ops: cpp={st['cpp']} cuda={st['cuda_kernels']}, out_dir={cfg.out_dir}"
            + (f", resumed from {self.resumed_from}" if self.resumed_from else ""),
            file=sys.stderr,
        )
        if writer.tb_note:
            print(f"[ctrlaug.train] {writer.tb_note}", file=sys.stderr)


#: What a run writes in its folder besides checkpoints (which are written by temp + rename).
RUN_FILES = ("metrics.csv", "config.yaml", "provenance.json", "probe.json", "loss_curve.png", "tb")

STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGUSR1") if hasattr(signal, n))


def _install_stop_handlers(trainer: Trainer) -> dict:
    """SIGTERM / SIGUSR1 -> ``trainer.request_stop`` while it trains (main thread only: Python
    delivers signals there); returns the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    ref = weakref.ref(trainer)

    def handler(signum, frame):
        t = ref()
        if t is not None:
            t.request_stop(signum)

    old = {}
    for s in STOP_SIGNALS:
        old[s] = signal.signal(s, handler)
    return old


def _restore_handlers(old: dict) -> None:
    for s, h in old.items():
        signal.signal(s, h if h is not None else signal.SIG_DFL)


def _ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader workers leave SIGTERM / SIGUSR1 to the main process, which stops after its step
    (a worker that died of the signal would crash the step first)."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


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


def train(cfg: TrainConfig, on_step: Callable[[int, int, dict], None] | None = None) -> dict:
    """Run (or resume) pretraining; returns ``{"history", "out_dir", "steps", "resumed_from",
    "trainer"}``. ``on_step(step, epoch, metrics)`` is called after every step (tests use it
    to interrupt a run)."""
    trainer = Trainer(cfg, on_step)
    result = trainer.fit()
    result["trainer"] = trainer
    return result
