"""Frame-accurate decoding of only the frames a sample needs: PyAV (mp4/avi/webm/mkv/...) and
frame folders (one JPEG/PNG per frame).

Frame numbering comes from the container, not from metadata: opening a video demuxes its packets
once (no decoding; a few ms) to get every frame's presentation timestamp and which ones are
keyframes. Frame ``i`` is the i-th distinct timestamp in presentation order. :meth:`VideoReader.get`
then seeks to the last keyframe before each needed run of frames and decodes forward only as far as
needed, jumping ahead with another seek when the next needed frame starts a later GOP.

Frames are converted to RGB and resized so that the short side is ``short_side`` in the same
swscale call (area filter), once; views are later cut from these with one resampling.

Every failure is a :class:`BadVideoError` carrying the path and a one-line reason.
"""

from __future__ import annotations

import bisect
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

__all__ = [
    "BadVideoError",
    "VIDEO_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "VideoInfo",
    "VideoReader",
    "FrameFolderReader",
    "TorchCodecReader",
    "DECODERS",
    "open_video",
    "probe_video",
    "read_frames",
    "resized_hw",
    "write_video",
    "is_video_file",
    "is_frame_folder",
]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".ogv", ".3gp")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class BadVideoError(Exception):
    """A video that cannot be used: ``path`` and a one-line ``reason``."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # picklable across DataLoader workers
        return (BadVideoError, (self.path, self.reason))


@dataclass(frozen=True)
class VideoInfo:
    """num_frames (after trimming), height, width (native pixels), fps (frames/s; 0 if unknown)."""

    num_frames: int
    height: int
    width: int
    fps: float


def is_video_file(path: str | os.PathLike) -> bool:
    return os.fspath(path).lower().endswith(VIDEO_EXTENSIONS)


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _list_images(folder: str) -> list[str]:
    return sorted((f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS)), key=_natural_key)


def is_frame_folder(path: str | os.PathLike) -> bool:
    """A directory that holds at least one image file."""
    p = os.fspath(path)
    if not os.path.isdir(p):
        return False
    with os.scandir(p) as it:
        return any(e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS) for e in it)


def resized_hw(height: int, width: int, short_side: int | None, upscale: bool = False) -> tuple[int, int]:
    """(h, w) with the short side scaled to ``short_side`` (aspect kept, rounded); unchanged when
    ``short_side`` is falsy, or when the frame is already smaller and ``upscale`` is False."""
    if not short_side:
        return height, width
    s = min(height, width)
    if s <= short_side and not (upscale and s < short_side):
        return height, width
    scale = short_side / s
    if height <= width:
        return short_side, max(1, round(width * scale))
    return max(1, round(height * scale)), short_side


SEEK_MIN_SKIP = 8  # frames a seek must skip to be worth it (measured; see VideoReader._decode_seeking)


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise BadVideoError(path, "file not found")
    if os.path.isdir(path):
        raise BadVideoError(path, "is a directory, not a video file")
    if os.path.getsize(path) == 0:
        raise BadVideoError(path, "empty file (0 bytes)")


def _check_range(path: str, idx: list[int], n: int) -> None:
    bad = [i for i in idx if not 0 <= i < n]
    if bad:
        raise IndexError(f"{path}: frame indices {bad[:5]} outside [0, {n})")


def _window(n: int, start: int | None, end: int | None) -> tuple[int, int]:
    lo = 0 if start is None else max(0, min(int(start), n))
    hi = n if end is None else max(lo, min(int(end), n))
    return lo, hi


class VideoReader:
    """Random access to the frames of one video file (PyAV).

    Args:
        path: the file.
        start_sec, end_sec: optional time window (seconds, end exclusive) -- e.g. Kinetics'
            ``time_start``/``time_end`` on an untrimmed download.
        start_frame, end_frame: optional frame window (end exclusive), applied after the time window.
        threads: FFmpeg decoder threads (1 in DataLoader workers; 0 lets FFmpeg choose).
        strict_frame_count: report a file whose container declares more frames than it has readable
            packets as truncated.

    Frames inside the window are numbered ``0 .. num_frames - 1``. Use as a context manager.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        start_sec: float | None = None,
        end_sec: float | None = None,
        start_frame: int | None = None,
        end_frame: int | None = None,
        threads: int = 1,
        strict_frame_count: bool = True,
    ) -> None:
        import av  # imported here so that the package imports without PyAV

        self.path = os.fspath(path)
        self._av = av
        self._container = None
        self._sws = _Converter()  # one swscale context for every frame of this reader
        self.frames_decoded = 0  # frames the decoder produced so far (seeking keeps this small)
        _check_file(self.path)
        try:
            self._container = av.open(self.path, mode="r")
        except av.FFmpegError as e:
            raise BadVideoError(self.path, f"not a readable video ({type(e).__name__}: {e})") from None
        except (OSError, ValueError) as e:
            raise BadVideoError(self.path, f"cannot open ({type(e).__name__}: {e})") from None
        try:
            self._setup(threads, strict_frame_count, start_sec, end_sec, start_frame, end_frame)
        except BadVideoError:
            self.close()
            raise
        except (av.FFmpegError, OSError, ValueError, ZeroDivisionError) as e:
            self.close()
            raise BadVideoError(self.path, f"unreadable container ({type(e).__name__}: {e})") from None

    def _setup(self, threads, strict, start_sec, end_sec, start_frame, end_frame) -> None:
        c = self._container
        if not c.streams.video:
            raise BadVideoError(self.path, "no video stream")
        st = c.streams.video[0]
        st.thread_type = "AUTO" if threads != 1 else "SLICE"
        st.thread_count = max(0, int(threads))
        self._stream = st
        cc = st.codec_context
        self.height, self.width = int(cc.height or 0), int(cc.width or 0)
        if self.height <= 0 or self.width <= 0:
            raise BadVideoError(self.path, f"invalid frame size {self.width}x{self.height}")
        # one demux pass: timestamps of every frame and the keyframes (no decoding)
        pts_list: list[int] = []
        key_list: list[bool] = []
        missing_ts = False
        for pkt in c.demux(st):
            if pkt.size == 0:
                continue
            ts = pkt.pts if pkt.pts is not None else pkt.dts
            if ts is None:
                missing_ts = True
                ts = len(pts_list)
            pts_list.append(int(ts))
            key_list.append(bool(pkt.is_keyframe))
        declared = int(st.frames or 0)
        if strict and declared > 0 and len(pts_list) < declared:
            raise BadVideoError(
                self.path,
                f"truncated: container declares {declared} frames but only {len(pts_list)} are readable",
            )
        order = np.argsort(np.asarray(pts_list, dtype=np.int64), kind="stable")
        pts_sorted = np.asarray(pts_list, dtype=np.int64)[order]
        keys = np.asarray(key_list, dtype=bool)[order]
        uniq, first = np.unique(pts_sorted, return_index=True)
        self._pts = uniq  # presentation timestamps, frame i -> _pts[i]
        self._keys = np.flatnonzero(np.logical_or.reduceat(keys, first) if len(keys) else keys)
        self._sequential = missing_ts
        tb = st.time_base or Fraction(1, 1)
        self._tb = float(tb)
        rate = st.average_rate or st.guessed_rate or st.base_rate
        self.fps = float(rate) if rate else 0.0
        # trimming: time window first, then frame window
        n = len(self._pts)
        lo, hi = 0, n
        if start_sec is not None or end_sec is not None:
            t0 = self._pts[0] if n else 0
            times = (self._pts - t0) * self._tb
            if start_sec is not None:
                lo = int(np.searchsorted(times, float(start_sec) - 1e-6, side="left"))
            if end_sec is not None:
                hi = int(np.searchsorted(times, float(end_sec) - 1e-6, side="left"))
            hi = max(lo, hi)
        flo, fhi = _window(hi - lo, start_frame, end_frame)
        self._offset = lo + flo
        self.num_frames = fhi - flo
        if n == 0:
            raise BadVideoError(self.path, "no decodable frames (0 video packets)")

    # -- public -----------------------------------------------------------------------------------
    @property
    def info(self) -> VideoInfo:
        return VideoInfo(self.num_frames, self.height, self.width, self.fps)

    def get(
        self,
        indices: Sequence[int],
        short_side: int | None = None,
        *,
        upscale: bool = False,
    ) -> np.ndarray:
        """Decode frames ``indices`` (inside the window) as uint8 RGB [len(indices), h, w, 3], the short
        side resized to ``short_side`` once (area filter). Duplicates and any order are allowed."""
        idx = [int(i) for i in indices]
        h, w = resized_hw(self.height, self.width, short_side, upscale)
        out = np.empty((len(idx), h, w, 3), np.uint8)
        if not idx:
            return out
        _check_range(self.path, idx, self.num_frames)
        slots: dict[int, list[int]] = {}  # container frame index -> positions in ``out``
        for k, i in enumerate(idx):
            slots.setdefault(i + self._offset, []).append(k)
        self._decode(sorted(slots), h, w, out, {j: ks[0] for j, ks in slots.items()})
        for ks in slots.values():
            for k in ks[1:]:
                out[k] = out[ks[0]]
        return out

    def frames(self):
        """Every frame of the file from the start, in presentation order, as PyAV ``VideoFrame``s
        (the window is not applied): the input of a transcode or a full decode check. Decoding
        errors raise :class:`BadVideoError`."""
        c, st = self._container, self._stream
        try:
            c.seek(0)
            for frame in c.decode(st):
                self.frames_decoded += 1
                yield frame
        except self._av.FFmpegError as e:
            raise BadVideoError(self.path, f"decoding failed ({type(e).__name__}: {e})") from None

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # -- internals --------------------------------------------------------------------------------
    def _index_of(self, frame) -> int:
        ts = frame.pts if frame.pts is not None else frame.dts
        if ts is None:
            return -1
        j = int(np.searchsorted(self._pts, ts))
        if j < len(self._pts) and self._pts[j] == ts:
            return j
        # not an exact timestamp (rare): nearest frame
        if j == 0:
            return 0
        if j >= len(self._pts):
            return len(self._pts) - 1
        return j if (self._pts[j] - ts) < (ts - self._pts[j - 1]) else j - 1

    def _decode(self, needed: list[int], h: int, w: int, out: np.ndarray, slot: dict[int, int]) -> None:
        """Decode the sorted container frame indices ``needed`` into ``out[slot[i]]``. Seeks only
        when it saves work."""
        av = self._av
        done: set[int] = set()
        try:
            if self._sequential:
                self._decode_sequential(needed, h, w, out, slot, done)
            else:
                self._decode_seeking(needed, h, w, out, slot, done)
        except av.FFmpegError as e:
            raise BadVideoError(self.path, f"decoding failed ({type(e).__name__}: {e})") from None
        missing = [i for i in needed if i not in done]
        if missing:
            raise BadVideoError(
                self.path,
                f"truncated or corrupt: frames {missing[:5]} of {len(self._pts)} could not be decoded",
            )

    def _decode_sequential(self, needed, h, w, out, slot, done) -> None:
        # no timestamps (rare): decode from the start and count frames
        c, st = self._container, self._stream
        c.seek(0)
        last = needed[-1]
        for i, frame in enumerate(c.decode(st)):
            self.frames_decoded += 1
            if i in slot:
                self._sws.fill(frame, out[slot[i]])
                done.add(i)
            if i >= last:
                return

    def _decode_seeking(self, needed, h, w, out, slot, done) -> None:
        # Seek to the keyframe before a target only when that skips more than SEEK_MIN_SKIP frames
        # the decoder would otherwise decode on its way: a seek (demuxer jump + decoder flush +
        # keyframe) measured 5-7 frames' worth of decoding on 128-640 px h264 (docs/data.md).
        c, st = self._container, self._stream
        keys = self._keys.tolist() or [0]
        gen = None
        pos = -1  # last frame index the current decode generator produced
        for target in needed:
            if target in done:
                continue
            kb = max(bisect.bisect_right(keys, target) - 1, 0)
            if gen is not None and (target <= pos or keys[kb] > pos + 1 + SEEK_MIN_SKIP):
                gen = None  # behind us, or a GOP far enough ahead: cheaper to seek
            while target not in done:
                fresh = gen is None
                if fresh:
                    c.seek(int(self._pts[keys[kb]]), stream=st, backward=True, any_frame=False)
                    gen = c.decode(st)
                    pos = -1
                overshoot = False
                for frame in gen:
                    self.frames_decoded += 1
                    j = self._index_of(frame)
                    if j < 0:
                        continue
                    if fresh and pos < 0 and j > target:
                        overshoot = True  # the seek landed after the target (open GOP, bad index)
                        break
                    pos = j
                    if j in slot and j not in done:
                        self._sws.fill(frame, out[slot[j]])
                        done.add(j)
                    if j >= target:
                        break
                else:
                    gen = None  # end of stream
                if target in done:
                    break
                if overshoot and kb > 0:
                    kb -= 1  # back off one keyframe and try again
                    gen = None
                    continue
                if overshoot and keys[kb] != 0:
                    keys = [0, *keys]
                    kb = 0
                    gen = None
                    continue
                return  # cannot reach it: reported as missing by the caller


class _Converter:
    """Decoded frame -> uint8 RGB at the output size, written into a caller's array.

    One swscale context per reader, reused for every frame (a fresh context per frame -- what
    ``VideoFrame.to_ndarray(width=..., format=...)`` does -- cost more than decoding the frame),
    single-threaded (parallelism comes from DataLoader workers), and one swscale pass that converts
    to RGB and resizes together (area filter when shrinking, bilinear when enlarging).

    Resizing writes planar RGB (``gbrp``): swscale's packed ``rgb24`` output with scaling was 2-4x
    slower here, and takes a SIMD branch for even output widths only, so its pixels depended on the
    parity of the width; the planar path gives the same pixels for every width (identical to the
    packed path's odd-width output). At the native size the packed path is used: it is cheaper to
    copy and its pixels equal the planar ones. Measurements and tolerances: docs/data.md,
    "Decoding".
    """

    def __init__(self) -> None:
        from av.video.reformatter import VideoReformatter

        self._rf = VideoReformatter()
        self._kw: dict[str, object] = {"threads": 1}

    def _reformat(self, frame, w: int, h: int, fmt: str):
        interp = "AREA" if h <= frame.height else "BILINEAR"
        try:
            return self._rf.reformat(frame, width=w, height=h, format=fmt, interpolation=interp, **self._kw)
        except TypeError:  # PyAV < 13 has no ``threads`` argument
            if not self._kw:
                raise
            self._kw = {}
            return self._rf.reformat(frame, width=w, height=h, format=fmt, interpolation=interp)

    def fill(self, frame, dst: np.ndarray) -> None:
        """Write ``frame`` as uint8 RGB into ``dst`` [h, w, 3]."""
        h, w = dst.shape[:2]
        if (h, w) == (frame.height, frame.width):
            p = self._reformat(frame, w, h, "rgb24").planes[0]
            dst.reshape(h, w * 3)[:] = np.frombuffer(p, np.uint8).reshape(h, p.line_size)[:, : w * 3]
            return
        f = self._reformat(frame, w, h, "gbrp")
        for c, p in zip((1, 2, 0), f.planes):  # planes G, B, R -> channels 1, 2, 0
            dst[:, :, c] = np.frombuffer(p, np.uint8).reshape(h, p.line_size)[:, :w]


class FrameFolderReader:
    """Random access to a folder of frames (``img_00001.jpg`` ...; natural sort order).

    Same interface as :class:`VideoReader`; ``start_frame``/``end_frame`` select a window.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        start_frame: int | None = None,
        end_frame: int | None = None,
        fps: float = 0.0,
        **_: object,
    ) -> None:
        from PIL import Image

        self.path = os.fspath(path)
        self._Image = Image
        if not os.path.isdir(self.path):
            raise BadVideoError(self.path, "frame folder not found")
        files = _list_images(self.path)
        if not files:
            raise BadVideoError(self.path, f"frame folder holds no images ({'/'.join(IMAGE_EXTENSIONS)})")
        lo, hi = _window(len(files), start_frame, end_frame)
        self._files = files[lo:hi]
        self.num_frames = len(self._files)
        self.fps = fps
        first = os.path.join(self.path, files[0])
        try:
            with Image.open(first) as im:
                self.width, self.height = im.size
        except Exception as e:  # PIL raises many types for bad images
            raise BadVideoError(first, f"unreadable image ({type(e).__name__}: {e})") from None

    @property
    def info(self) -> VideoInfo:
        return VideoInfo(self.num_frames, self.height, self.width, self.fps)

    def get(
        self, indices: Sequence[int], short_side: int | None = None, *, upscale: bool = False
    ) -> np.ndarray:
        """uint8 RGB [len(indices), h, w, 3], short side resized to ``short_side`` (JPEG draft + PIL)."""
        Image = self._Image
        h, w = resized_hw(self.height, self.width, short_side, upscale)
        cache: dict[int, np.ndarray] = {}
        out = []
        for i in indices:
            i = int(i)
            if not 0 <= i < self.num_frames:
                raise IndexError(f"{self.path}: frame index {i} outside [0, {self.num_frames})")
            if i not in cache:
                fp = os.path.join(self.path, self._files[i])
                try:
                    with Image.open(fp) as im:
                        if im.format == "JPEG" and (h, w) != (self.height, self.width):
                            im.draft("RGB", (w, h))
                        im = im.convert("RGB")
                        if im.size != (w, h):
                            im = im.resize((w, h), Image.BILINEAR, reducing_gap=None)
                        arr = np.asarray(im, dtype=np.uint8)
                except Exception as e:
                    raise BadVideoError(fp, f"unreadable frame image ({type(e).__name__}: {e})") from None
                if arr.shape != (h, w, 3):
                    raise BadVideoError(
                        fp, f"frame size {arr.shape[1]}x{arr.shape[0]} differs from the first frame's"
                    )
                cache[i] = arr
            out.append(cache[i])
        return np.stack(out, 0)

    def close(self) -> None:
        pass

    def __enter__(self) -> FrameFolderReader:
        return self

    def __exit__(self, *exc) -> None:
        pass


DECODERS = ("pyav", "torchcodec")
TORCHCODEC_INSTALL = (
    "pip install torchcodec  (a build matching your torch, plus FFmpeg shared libraries on the "
    "system: the PyPI wheel is CUDA-enabled and loads only beside a CUDA torch)"
)


class TorchCodecReader:
    """Optional decoder: torchcodec's ``VideoDecoder`` (exact seek mode; CPU, or NVDEC with
    ``device="cuda"``) behind the :class:`VideoReader` interface.

    Frames are numbered in presentation order like :class:`VideoReader`; a resize to
    ``short_side`` uses torch's antialiased bilinear filter (not swscale's area filter), so pixels
    differ slightly from the PyAV path. Time windows (``start_sec``/``end_sec``) are not supported:
    use the PyAV decoder, or a trimmed copy of the dataset. Not the default: see docs/data.md.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        start_frame: int | None = None,
        end_frame: int | None = None,
        start_sec: float | None = None,
        end_sec: float | None = None,
        threads: int = 1,
        device: str = "cpu",
        **_: object,
    ) -> None:
        try:
            from torchcodec.decoders import VideoDecoder
        except (ImportError, OSError) as e:
            raise ImportError(
                f"data.decoder=torchcodec needs torchcodec, which is not usable here "
                f"({type(e).__name__}: {e}). Install it with: {TORCHCODEC_INSTALL}; "
                "or use data.decoder=pyav (the default)"
            ) from None
        self.path = os.fspath(path)
        if start_sec is not None or end_sec is not None:
            raise ValueError(
                f"{self.path}: data.decoder=torchcodec does not apply time windows (start_sec/end_sec); "
                "use data.decoder=pyav for untrimmed Kinetics videos"
            )
        _check_file(self.path)
        try:
            self._dec = VideoDecoder(
                self.path, dimension_order="NHWC", num_ffmpeg_threads=int(threads), device=device,
                seek_mode="exact",
            )  # fmt: skip
        except (RuntimeError, ValueError) as e:
            raise BadVideoError(self.path, f"not a readable video ({type(e).__name__}: {e})") from None
        md = self._dec.metadata
        n = int(md.num_frames or 0)
        if n == 0:
            raise BadVideoError(self.path, "no decodable frames")
        self.height, self.width = int(md.height), int(md.width)
        self.fps = float(md.average_fps or 0.0)
        lo, hi = _window(n, start_frame, end_frame)
        self._offset, self.num_frames = lo, hi - lo

    @property
    def info(self) -> VideoInfo:
        return VideoInfo(self.num_frames, self.height, self.width, self.fps)

    def get(
        self, indices: Sequence[int], short_side: int | None = None, *, upscale: bool = False
    ) -> np.ndarray:
        """uint8 RGB [len(indices), h, w, 3] (see :meth:`VideoReader.get`)."""
        import torch
        import torch.nn.functional as F

        idx = [int(i) for i in indices]
        h, w = resized_hw(self.height, self.width, short_side, upscale)
        if not idx:
            return np.empty((0, h, w, 3), np.uint8)
        _check_range(self.path, idx, self.num_frames)
        try:
            x = self._dec.get_frames_at(indices=[i + self._offset for i in idx]).data
        except (RuntimeError, ValueError, IndexError) as e:
            raise BadVideoError(self.path, f"decoding failed ({type(e).__name__}: {e})") from None
        if (h, w) != tuple(x.shape[1:3]):
            x = F.interpolate(x.permute(0, 3, 1, 2), size=(h, w), mode="bilinear", antialias=True)
            x = x.permute(0, 2, 3, 1)
        return np.ascontiguousarray(x.to("cpu", torch.uint8).numpy())

    def close(self) -> None:
        self._dec = None

    def __enter__(self) -> TorchCodecReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_video(
    path: str | os.PathLike, *, decoder: str = "pyav", **kwargs
) -> VideoReader | FrameFolderReader | TorchCodecReader:
    """A :class:`FrameFolderReader` for a directory, else a :class:`VideoReader` (``decoder="pyav"``)
    or :class:`TorchCodecReader` (``decoder="torchcodec"``); kwargs forwarded."""
    p = os.fspath(path)
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; choose one of {DECODERS}")
    if os.path.isdir(p):
        kw = {k: v for k, v in kwargs.items() if k in ("start_frame", "end_frame")}
        return FrameFolderReader(p, **kw)
    if decoder == "torchcodec":
        return TorchCodecReader(p, **kwargs)
    return VideoReader(p, **kwargs)


def probe_video(path: str | os.PathLike, **kwargs) -> VideoInfo:
    """:class:`VideoInfo` of a video file or frame folder (no decoding)."""
    with open_video(path, **kwargs) as r:
        return r.info


def read_frames(
    path: str | os.PathLike,
    indices: Sequence[int] | None = None,
    short_side: int | None = None,
    **kwargs,
) -> np.ndarray:
    """Decode ``indices`` (default: every frame) of a video file or frame folder.

    Returns uint8 RGB [N, h, w, 3]; ``short_side`` resizes the shorter side once. Raises
    :class:`BadVideoError` naming the path and reason on any failure.
    """
    with open_video(path, **kwargs) as r:
        idx = range(r.num_frames) if indices is None else indices
        return r.get(list(idx), short_side)


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: int = 25,
    *,
    codec: str | None = None,
    options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
) -> None:
    """Encode uint8 RGB frames [T, H, W, 3] with PyAV (fixtures, the synthetic set on disk).

    Codec by extension unless given: .mp4/.mkv/.mov libx264, .avi mpeg4, .webm libvpx-vp9.
    H and W must be even for the 4:2:0 codecs.
    """
    import av

    p = os.fspath(path)
    ext = os.path.splitext(p)[1].lower()
    codec = codec or {".avi": "mpeg4", ".webm": "libvpx-vp9"}.get(ext, "libx264")
    frames = np.asarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"write_video: frames must be uint8 [T, H, W, 3], got {frames.shape}")
    T, H, W, _ = frames.shape
    opts = dict(options or {})
    if codec == "libx264":
        opts.setdefault("crf", "18")
        opts.setdefault("preset", "veryfast")
    elif codec == "mpeg4":
        opts.setdefault("qscale", "2")
    elif codec.startswith("libvpx"):
        opts.setdefault("crf", "20")
        opts.setdefault("b", "0")
        opts.setdefault("deadline", "realtime")
        opts.setdefault("cpu-used", "8")
    os.makedirs(os.path.dirname(os.path.abspath(p)), exist_ok=True)
    with av.open(p, mode="w", options=container_options or {}) as out:
        st = out.add_stream(codec, rate=int(fps), options=opts)
        st.width, st.height = W, H
        st.pix_fmt = "yuv420p"
        for t in range(T):
            for pkt in st.encode(av.VideoFrame.from_ndarray(frames[t], format="rgb24")):
                out.mux(pkt)
        for pkt in st.encode():
            out.mux(pkt)
