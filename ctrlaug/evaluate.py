"""Downstream evaluation of a pretrained encoder (paper §4.2-4.3): linear probe, finetuning,
nearest-neighbour retrieval and weighted kNN.

``python -m ctrlaug.evaluate {linear,finetune,retrieval,knn} --checkpoint RUN_OR_CKPT`` loads the
encoder of a pretraining checkpoint (or a random-init one with ``--random-init``), builds the
datasets of the checkpoint's own config (or ``--dataset FORMAT --data-root ROOT``) in evaluation
mode (``eval_clips`` = 10 uniformly spaced clips per video, centre crop at the configured size),
and writes ``<out>/eval_<protocol>.json`` and ``.md``. Bad input (missing checkpoint, checkpoint
not matching the model config, bad dataset) prints one ``error:`` line and exits with code 2.

Protocols (see docs/evaluation.md):

* linear: frozen encoder; a linear classifier on the global-average-pooled last feature map,
  trained on every train clip; test: softmax of each of the 10 clips, averaged per video.
  Top-1 at clip level and video level.
* finetune: the whole encoder + a linear layer end to end on one random clip of each train video
  per epoch (plus horizontal flip); tested like linear.
* retrieval: test videos query the train set; video feature = mean of its 10 clips' pooled
  features, cosine similarity; R@k = a top-k neighbour shares the query's class (k = 1,5,10,20,50).
* knn: temperature-weighted kNN (k=20, t=0.07) on the same L2-normalised video features.

A thin entry point (nothing imports it): the protocols are :mod:`ctrlaug.eval.protocols`.
"""

from __future__ import annotations

import argparse
import sys

from ctrlaug.cli import run_cli
from ctrlaug.eval.features import PRECISIONS
from ctrlaug.eval.finetune import SCHEDULES
from ctrlaug.eval.protocols import PROTOCOLS, EvalOptions, run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ctrlaug.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("protocol", choices=PROTOCOLS)
    p.add_argument("--checkpoint", help="ckpt_*.pt file or a run folder (its newest checkpoint)")
    p.add_argument("--config", help="model/data config YAML (default: the checkpoint's own)")
    p.add_argument("--random-init", action="store_true", help="random-init encoder baseline")
    p.add_argument("--dataset", help="dataset format (default: the checkpoint config's)")
    p.add_argument("--data-root", help="dataset root (default: the checkpoint config's)")
    p.add_argument("--train-split", help="train / gallery split (default: config split)")
    p.add_argument("--test-split", help="test / query split (default: config eval.split)")
    p.add_argument("--clips", type=int, default=10, help="uniformly spaced clips per video (paper: 10)")
    p.add_argument(
        "--crops",
        type=int,
        choices=(1, 3),
        default=1,
        help="crops per test clip: 1 = centre (paper), 3 = left/centre/right along the longer side; "
        "softmax (linear, finetune) or features (knn, retrieval) averaged over clips x crops",
    )
    p.add_argument("--epochs", type=int, default=0, help="epochs (default: linear 100, finetune 5)")
    p.add_argument(
        "--lr", type=float, default=0.0, help="learning rate (default: linear 1e-2, finetune 1e-3)"
    )
    p.add_argument("--batch-size", type=int, default=4, help="videos per batch")
    p.add_argument(
        "--finetune-aug",
        choices=("crop", "centre"),
        default="crop",
        help="finetune training clips: 'crop' = the pretraining sampler's local clips (random temporal "
        "position, random resized crop, flip; default), 'centre' = one of the --clips centre crops + flip",
    )
    p.add_argument(
        "--flip",
        choices=("auto", "yes", "no"),
        default="auto",
        help="random horizontal flip while finetuning; auto = no when the dataset says a mirror can "
        "change the class (the synthetic set: right/left), yes otherwise",
    )
    p.add_argument("--k", type=int, default=20, help="knn neighbours")
    p.add_argument("--t", type=float, default=0.07, help="knn vote temperature")
    p.add_argument("--cache", action="store_true", help="cache clip features in the out folder")
    p.add_argument("--out", help="output folder (default: the checkpoint's run folder)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument(
        "--device",
        default="auto",
        help="'auto' (cuda if available), 'cpu', 'cuda' or 'cuda:N' (default auto)",
    )
    p.add_argument(
        "--workers", type=int, default=0, help="DataLoader worker processes for decoding (default 0)"
    )
    p.add_argument(
        "--fold", type=int, default=0, help="official split of ucf101/hmdb51 (default: the config's fold)"
    )
    p.add_argument(
        "--folds",
        help="comma-separated official splits, e.g. 1,2,3 (ucf101/hmdb51): one run per fold in "
        "<out>/fold<N>/, then eval_<protocol>_folds.json with mean and std",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="forward precision of feature extraction and testing: fp32 (default), bf16, fp16 "
        "(CUDA), auto (bf16 on a CUDA device that has it, else fp32)",
    )
    p.add_argument(
        "--chunk",
        type=int,
        default=0,
        help="knn/retrieval: queries per similarity block (memory chunk x gallery; 0 = auto, "
        "blocks of at most 256 MB); results do not depend on it",
    )
    p.add_argument("--weight-decay", type=float, default=0.0, help="finetune weight decay (default 1e-5)")
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam", help="finetune optimizer")
    p.add_argument(
        "--schedule", choices=SCHEDULES, default="constant", help="finetune lr schedule (per iteration)"
    )
    p.add_argument("--warmup-epochs", type=int, default=0, help="finetune linear lr warm-up epochs")
    p.add_argument("--dropout", type=float, default=0.0, help="finetune dropout before the linear layer")
    p.add_argument(
        "--amp",
        choices=("off", "bf16", "fp16"),
        default="off",
        help="finetune mixed precision on CUDA (fp16 with a gradient scaler)",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), lambda args: run(EvalOptions(**vars(args))), argv)


if __name__ == "__main__":
    sys.exit(main())
