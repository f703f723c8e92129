"""The options of one evaluation run (what ``python -m ctrlaug.evaluate`` parses), shared by the
protocols and the feature cache key."""

from __future__ import annotations

import dataclasses

from ctrlaug.errors import EvalError

__all__ = ["PROTOCOLS", "EvalOptions"]


PROTOCOLS = ("linear", "finetune", "retrieval", "knn")


@dataclasses.dataclass
class EvalOptions:
    """One evaluation run (the ``python -m ctrlaug.evaluate`` arguments; see ``ctrlaug.evaluate.build_parser``
    for each field's help). ``epochs``/``lr`` 0 = the protocol's default."""

    protocol: str  # one of PROTOCOLS
    checkpoint: str | None = None  # ckpt_*.pt or a run folder (its newest checkpoint)
    config: str | None = None  # model/data config YAML (default: the checkpoint's own)
    random_init: bool = False  # random-init encoder baseline
    dataset: str | None = None  # dataset format (default: the checkpoint config's)
    data_root: str | None = None
    train_split: str | None = None  # default: config split
    test_split: str | None = None  # default: config eval.split
    clips: int = 10  # uniformly spaced clips per video
    crops: int = 1  # spatial crops per clip at test time: 1 (centre) or 3 (left/centre/right)
    epochs: int = 0  # linear 100, finetune 5
    lr: float = 0.0  # linear 1e-2, finetune 1e-3
    batch_size: int = 4
    finetune_aug: str = "crop"  # "crop" or "centre"
    flip: str = "auto"  # "auto", "yes" or "no"
    k: int = 20  # knn neighbours
    t: float = 0.07  # knn vote temperature
    cache: bool = False  # cache clip features in the out folder
    out: str | None = None  # default: the checkpoint's run folder
    threads: int = 0  # torch CPU threads (0 = default)
    device: str = "auto"
    workers: int = 0  # DataLoader worker processes
    fold: int = 0  # official split of ucf101/hmdb51 (0 = the config's `fold`)
    folds: str | None = None  # "1,2,3": one run per fold, then mean and spread
    precision: str = "fp32"  # forward precision of feature extraction: fp32, bf16, fp16, auto
    chunk: int = 0  # queries per similarity block of knn/retrieval (0 = auto, <= 256 MB blocks)
    weight_decay: float = 0.0  # finetune (0 = 1e-5)
    optimizer: str = "adam"  # finetune: adam or sgd
    schedule: str = "constant"  # finetune lr schedule: constant, cosine, step
    warmup_epochs: int = 0  # finetune linear warm-up
    dropout: float = 0.0  # finetune: dropout before the linear layer
    amp: str = "off"  # finetune mixed precision (CUDA): off, bf16, fp16
    progress: bool = True  # progress bars on stderr

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise EvalError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if self.crops not in (1, 3):
            raise EvalError(f"--crops must be 1 or 3, got {self.crops!r}")
