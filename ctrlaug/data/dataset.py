"""Map-style datasets producing, per video, the global view, the K local clips and their parameters.

``dataset[i]`` decodes only the frames its views need, draws tau_p with
:func:`ctrlaug.augment.sample_views`, and (by default) cuts the views in the worker with one
resize-crop each, returning uint8. tau_l is left to the device (:func:`ctrlaug.augment.augment_batch`)
with levels drawn per training step for the global batch by :meth:`ctrlaug.engine.trainer.Trainer.prepare_views`
(through :func:`ctrlaug.augment.sample_batch_levels`).

Bad videos (missing, empty, truncated, not a video, too short) are reported by path and reason,
replaced by another sample, and listed in the sample's ``"skipped"`` entry; the epoch completes.
:class:`BadVideoLog` counts them per epoch (pretraining reports it at every epoch end, in the log
and in the ``bad_videos`` column of metrics.csv).
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np
import torch
from torch.utils.data import Dataset

from ..augment import AugmentConfig, apply_views, sample_eval_views, sample_views
from ..utils.cfgtools import SEED_MAX, config, opt
from .decode import BadVideoError, open_video
from .formats import canonical_format, get_format
from .records import RecordList, VideoRecord, load_records
from .shapes import ShapesConfig, ShapesReader, render_shapes, shape_factors, write_shapes
from .synthetic import SyntheticConfig, SyntheticReader

__all__ = [
    "DataConfig",
    "VideoDataset",
    "SyntheticMotion",
    "SyntheticShapes",
    "build_dataset",
    "build_train_dataset",
    "BadVideoLog",
]

log = logging.getLogger("ctrlaug.data")


@config
class DataConfig:
    """Decoding and robustness settings of the video datasets."""

    short_side: int = opt(128, "decode-time resize of the shorter frame side, once (0 = native size)", min=0)
    upscale: bool = opt(False, "also enlarge videos whose short side is below short_side")
    min_frames: int = opt(8, "videos with fewer frames are reported as too short and skipped", min=1)
    max_retries: int = opt(10, "replacement samples tried after a bad video before raising", min=0)
    crop_in_worker: bool = opt(
        True,
        "resize-crop views in the DataLoader worker (uint8 views); false returns the decoded frames "
        "so the crop runs on the device",
    )
    decode_threads: int = opt(1, "FFmpeg threads per decoder (1 suits DataLoader workers; 0 = auto)")
    decoder: str = opt(
        "pyav", "video decoder: pyav, or torchcodec (optional; docs/data.md)", choices=("pyav", "torchcodec")
    )
    strict_frame_count: bool = opt(True, "fewer readable packets than the container declares = truncated")
    seed: int | None = opt(
        None,
        "if set, sample i of epoch e draws its views from seed (seed, e, i): reproducible across runs "
        "and worker counts; null uses torch's RNG",
        min=0,
        max=SEED_MAX,
    )
    label_offset: int | None = opt(
        None,
        "list format: subtracted from every label; null = detected (1 when none of the dataset's "
        "lists has a label 0, else 0)",
        min=0,
    )
    list_prefix: str = opt(
        "",
        "list format: folder the relative paths resolve against (empty: the list's folder, then "
        "its videos/ and rawframes/)",
    )


class VideoDataset(Dataset):
    """Videos of a :class:`RecordList` turned into view samples.

    Args:
        source: records (paths, labels, windows) and class names, e.g. from
            :func:`ctrlaug.data.records.load_records`.
        augment: :class:`AugmentConfig` (tau_p parameters and the output size).
        data: :class:`DataConfig` (decoding, robustness).
        mode: "pretrain" (global view + K clips, random) or "eval" (``augment.eval_clips`` uniformly
            spaced centre-cropped clips, deterministic; paper §4.2).

    Each sample is a dict:

    * ``views``: uint8 [V, 3, F, S, S] -- pretrain: V = 1 + K, view 0 is the global view; eval: V = N
      clips (absent when ``crop_in_worker=False``: then ``frames`` uint8 [U, h, w, 3] and
      ``frame_pos`` int64 [V, F] positions into it, for :func:`ctrlaug.augment.apply_views`);
    * ``boxes``: float32 [V, 7] ``(t0, t1, y0, y1, x0, x1, flip)``; ``frame_indices``: int64 [V, F];
    * ``num_frames``: int (T); ``video_index``: int (the video actually used); ``label``: int (-1 if
      unknown); ``skipped``: list of ``(path, reason)`` of bad videos replaced on the way.

    ``mirror_changes_labels``: whether a horizontal flip can change a video's class (then
    supervised training must not flip); False here, True for the synthetic motion set.
    """

    mirror_changes_labels: bool = False
    eval_crops: int = 1  # eval mode: 1 = centre crop, 3 = left/centre/right (sample_eval_views)
    primary_factor: str = "class"  # the factor the probes call primary (see factor_labels)

    def __init__(
        self,
        source: RecordList,
        augment: AugmentConfig | None = None,
        data: DataConfig | None = None,
        mode: str = "pretrain",
    ) -> None:
        if mode not in ("pretrain", "eval"):
            raise ValueError(f"mode must be 'pretrain' or 'eval', got {mode!r}")
        self.source = source
        self.records: list[VideoRecord] = list(source.records)
        self.classes = list(source.classes)
        self.missing = list(source.missing)
        self.augment = augment or AugmentConfig()
        self.data = data or DataConfig()
        self.mode = mode
        self.epoch = 0
        self._bad: dict[int, tuple[str, str]] = {}  # per process: index -> (path, reason)
        if not self.records:
            raise ValueError(
                f"{source.name}: the dataset holds no usable videos ({len(self.missing)} missing)"
            )

    # -- sizes ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def labels(self) -> list[int]:
        return [r.label for r in self.records]

    def factor_labels(self) -> dict[str, torch.Tensor]:
        """Every labelled factor of every video, in index order: ``{name: int64 [N]}``. Real
        datasets have one, ``"class"``; the synthetic benchmarks name theirs."""
        return {self.primary_factor: torch.tensor(self.labels, dtype=torch.int64)}

    def factor_classes(self) -> dict[str, list[str]]:
        """Class names of every factor of :meth:`factor_labels`."""
        return {self.primary_factor: list(self.classes)}

    def set_epoch(self, epoch: int) -> None:
        """Epoch number used in the per-sample seed when ``DataConfig.seed`` is set."""
        self.epoch = int(epoch)

    # -- reading ----------------------------------------------------------------------------------
    def open(self, index: int):
        """A reader (``num_frames``, ``height``, ``width``, ``get``) for video ``index``."""
        rec = self.records[index]
        return open_video(
            rec.path,
            decoder=self.data.decoder,
            threads=self.data.decode_threads,
            strict_frame_count=self.data.strict_frame_count,
            **rec.window(),
        )

    def _generator(self, index: int) -> torch.Generator | None:
        if self.data.seed is None:
            return None
        s = np.random.SeedSequence([int(self.data.seed), self.epoch, int(index)]).generate_state(2)
        return torch.Generator().manual_seed(int(s[0]) << 32 | int(s[1]))

    def load(self, index: int, generator: torch.Generator | None = None) -> dict:
        """Build the sample of video ``index`` or raise :class:`BadVideoError`."""
        rec = self.records[index]
        with self.open(index) as r:
            T = int(r.num_frames)
            if T < self.data.min_frames:
                raise BadVideoError(
                    rec.path, f"too short: {T} frames < DataConfig.min_frames={self.data.min_frames}"
                )
            try:
                if self.mode == "pretrain":
                    views = sample_views(T, r.height, r.width, cfg=self.augment, generator=generator)
                    boxes, frames = views.boxes, views.frames
                else:
                    views = sample_eval_views(T, r.height, r.width, cfg=self.augment, crops=self.eval_crops)
                    boxes, frames = views.clip_boxes, views.clip_frames
            except ValueError as e:  # short_video="skip"
                raise BadVideoError(rec.path, str(e)) from None
            uniq, pos = torch.unique(frames, return_inverse=True)
            pixels = r.get(uniq.tolist(), self.data.short_side, upscale=self.data.upscale)
        pix = torch.from_numpy(np.ascontiguousarray(pixels))
        sample = {
            "boxes": boxes,
            "frame_indices": frames,
            "num_frames": T,
            "video_index": index,
            "label": rec.label,
        }
        if self.data.crop_in_worker:
            sample["views"] = apply_views(pix, pos, boxes, self.augment.size)
        else:
            sample["frames"] = pix
            sample["frame_pos"] = pos
        return sample

    def __getitem__(self, index: int) -> dict:
        gen = self._generator(index)
        skipped: list[tuple[str, str]] = []
        idx = int(index)
        rng = np.random.default_rng(None if self.data.seed is None else [self.data.seed, self.epoch, idx, 1])
        for _ in range(self.data.max_retries + 1):
            if idx in self._bad:
                skipped.append(self._bad[idx])
            else:
                try:
                    sample = self.load(idx, gen)
                    sample["skipped"] = skipped
                    return sample
                except BadVideoError as e:
                    self._bad[idx] = (e.path, e.reason)
                    skipped.append((e.path, e.reason))
                    log.warning("skipping bad video %s: %s", e.path, e.reason)
            good = len(self.records) - len(self._bad)
            if good <= 0:
                break
            idx = int(rng.integers(len(self.records)))
            for _ in range(8):  # prefer a video not known to be bad
                if idx not in self._bad:
                    break
                idx = int(rng.integers(len(self.records)))
        reasons = "; ".join(f"{p}: {r}" for p, r in skipped[-5:])
        raise RuntimeError(
            f"{self.source.name}: {len(skipped)} bad videos in a row while loading sample {index} "
            f"(DataConfig.max_retries={self.data.max_retries}); last: {reasons}"
        )


class SyntheticMotion(VideoDataset):
    """The synthetic motion set (see :mod:`ctrlaug.data.synthetic`), rendered on the fly.

    ``SyntheticMotion("train")`` gives ``train_per_class * num_classes`` videos with labels; the
    views, parameters and robustness are those of :class:`VideoDataset`. :meth:`render` returns a raw
    video and :meth:`write` saves the whole set as mp4 for the real decoding path.
    """

    # right/left and clockwise/anticlockwise are mirror images of each other
    mirror_changes_labels = True
    primary_factor = "motion"

    def __init__(
        self,
        split: str = "train",
        synth: SyntheticConfig | None = None,
        augment: AugmentConfig | None = None,
        data: DataConfig | None = None,
        mode: str = "pretrain",
    ) -> None:
        self.synth = synth or SyntheticConfig()
        self.split = split
        n = self.synth.split_size(split)
        recs = [VideoRecord(f"synthetic://{split}/{i}", i % self.synth.num_classes) for i in range(n)]
        super().__init__(RecordList(recs, self.synth.classes, [], "synthetic"), augment, data, mode)

    def open(self, index: int):
        return SyntheticReader(self.synth, self.split, index)

    def render(self, index: int) -> tuple[np.ndarray, int]:
        """(uint8 [T, S, S, 3], label) of video ``index``."""
        from .synthetic import render_video

        return render_video(self.synth, self.split, index)

    def write(self, root: str | os.PathLike) -> str:
        """Write this config's train and test splits as mp4 under ``root`` (class-per-folder)."""
        from .synthetic import write_synthetic

        return write_synthetic(root, self.synth)


class SyntheticShapes(VideoDataset):
    """The factorised shapes benchmark (see :mod:`ctrlaug.data.shapes`), rendered on the fly.

    ``label`` is the primary factor (the object's shape); :meth:`factor_labels` gives every factor
    (shape, motion, colour, background) and :meth:`render` the raw video with its object masks.
    """

    primary_factor = "shape"

    def __init__(
        self,
        split: str = "train",
        shapes: ShapesConfig | None = None,
        augment: AugmentConfig | None = None,
        data: DataConfig | None = None,
        mode: str = "pretrain",
    ) -> None:
        self.shapes = shapes or ShapesConfig()
        self.split = split
        n = self.shapes.split_size(split)
        recs = [VideoRecord(f"shapes://{split}/{i}", i % self.shapes.num_shapes) for i in range(n)]
        super().__init__(RecordList(recs, self.shapes.classes, [], "shapes"), augment, data, mode)

    def open(self, index: int):
        return ShapesReader(self.shapes, self.split, index)

    def factor_labels(self) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(v) for k, v in shape_factors(self.shapes, self.split).items()}

    def factor_classes(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.shapes.factor_values.items()}

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
        """(uint8 [T, S, S, 3], bool object mask [T, S, S], factors) of video ``index``."""
        return render_shapes(self.shapes, self.split, index)

    def write(self, root: str | os.PathLike) -> str:
        """Write this config's train and test splits as mp4 under ``root`` (class-per-folder by
        shape, with a factors CSV per split)."""
        return write_shapes(root, self.shapes)


def build_dataset(
    format: str,
    root: str | os.PathLike | None = None,
    split: str | None = "train",
    *,
    augment: AugmentConfig | None = None,
    data: DataConfig | None = None,
    mode: str = "pretrain",
    synth: SyntheticConfig | None = None,
    shapes: ShapesConfig | None = None,
    **format_kwargs,
) -> VideoDataset:
    """Build a view dataset.

    format: "ucf101" | "hmdb51" | "kinetics400" | "diving48" | "folder" | "csv" | "list" |
    "synthetic" | "shapes". root: dataset root (or CSV / list file); ignored for "synthetic" and "shapes". split: "train" / "test" ("val" for
    Kinetics). format_kwargs: ``fold`` (ucf101, hmdb51), ``version`` and ``use_frame_range``
    (diving48), ``annotation`` (kinetics400), ``split_dir`` (ucf101, hmdb51), ``label_offset`` and
    ``prefix`` (list).
    """
    fmt = canonical_format(format)
    if fmt == "synthetic":
        return SyntheticMotion(split or "train", synth, augment, data, mode)
    if fmt == "shapes":
        return SyntheticShapes(split or "train", shapes, augment, data, mode)
    if root is None:
        raise ValueError(f"build_dataset({format!r}) needs a root directory")
    return VideoDataset(load_records(fmt, os.fspath(root), split, **format_kwargs), augment, data, mode)


def build_train_dataset(cfg, split: str | None = None, mode: str = "pretrain") -> VideoDataset:
    """The pretraining (or, with ``mode="eval"``, evaluation) dataset of a training config
    (:class:`ctrlaug.config.TrainConfig`: ``dataset``, ``data_root``, ``split``, ``fold`` (passed
    to the formats with official folds, see :mod:`ctrlaug.data.formats`), ``augment``, ``data``,
    ``synthetic``, ``shapes``, ``seed``). ``data.seed`` None = the run seed."""
    kw = {"fold": cfg.fold} if get_format(cfg.dataset).folds else {}
    if canonical_format(cfg.dataset) == "list":
        kw.update(label_offset=cfg.data.label_offset, prefix=cfg.data.list_prefix or None)
    data = dataclasses.replace(cfg.data, seed=cfg.seed if cfg.data.seed is None else cfg.data.seed)
    return build_dataset(
        cfg.dataset,
        cfg.data_root or None,
        split or cfg.split,
        augment=cfg.augment,
        data=data,
        mode=mode,
        synth=cfg.synthetic,
        shapes=cfg.shapes,
        **kw,
    )


class BadVideoLog:
    """Epoch log of skipped videos: feed it every batch (or a sample's ``skipped`` list), read
    ``count``/``paths``/``summary()``. :class:`ctrlaug.engine.trainer.Trainer` keeps one per epoch."""

    def __init__(self) -> None:
        self.events = 0
        self.reasons: dict[str, str] = {}

    def update(self, batch_or_skipped) -> None:
        skipped = (
            batch_or_skipped.get("skipped", []) if isinstance(batch_or_skipped, dict) else batch_or_skipped
        )
        for path, reason in skipped:
            self.events += 1
            self.reasons.setdefault(path, reason)

    @property
    def count(self) -> int:
        """Distinct bad videos met this epoch."""
        return len(self.reasons)

    @property
    def paths(self) -> list[str]:
        return sorted(self.reasons)

    def summary(self) -> str:
        if not self.reasons:
            return "bad videos: 0"
        lines = [f"bad videos: {self.count} ({self.events} skips)"]
        lines += [f"  {p}: {r}" for p, r in sorted(self.reasons.items())[:20]]
        if self.count > 20:
            lines.append(f"  ... and {self.count - 20} more")
        return "\n".join(lines)

    def merge(self, other: BadVideoLog) -> None:
        """Add another log's skips (e.g. another DDP rank's)."""
        self.events += other.events
        for path, reason in other.reasons.items():
            self.reasons.setdefault(path, reason)

    def reset(self) -> None:
        self.events = 0
        self.reasons.clear()
