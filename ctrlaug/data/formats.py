"""The dataset-format registry: every format's names and defaults, in one place.

Each :class:`DatasetFormat` says which spellings name it (``aliases`` are accepted by
:func:`ctrlaug.data.load_records` and :func:`ctrlaug.data.build_dataset`; ``config_names`` are the
values ``TrainConfig.dataset`` accepts), whether it is rendered on the fly (no files, no
``data_root``), its official train/test folds (passed on as ``fold``), its splits, and the
fraction of the epochs after which the paper divides the learning rate by 10 (§4.2: 150 of 200
epochs on UCF-101, 70 of 100 on Kinetics-400). The readers themselves live in
:mod:`ctrlaug.data.records`; this module imports nothing of the package but its error family.
"""

from __future__ import annotations

from dataclasses import dataclass

from ctrlaug.errors import UsageError

__all__ = ["DatasetFormat", "REGISTRY", "get_format", "canonical_format", "config_names", "rendered_names"]


@dataclass(frozen=True)
class DatasetFormat:
    """Names and defaults of one dataset format."""

    name: str  # canonical name
    aliases: tuple[str, ...] = ()  # other spellings load_records / build_dataset accept
    config_names: tuple[str, ...] | None = None  # spellings TrainConfig.dataset accepts (None: name)
    rendered: bool = False  # drawn on the fly: no files, no data_root
    folds: tuple[int, ...] = ()  # official train/test folds; TrainConfig.fold is passed when non-empty
    splits: tuple[str, ...] = ("train", "test")  # the splits a dataset of this format has
    lr_decay_fraction: float = 0.75  # paper rule: lr / 10 after this fraction of the epochs

    @property
    def names(self) -> tuple[str, ...]:
        """Every spelling, canonical name first."""
        return (self.name, *self.aliases)


#: Every format, in the order the config lists them.
REGISTRY: tuple[DatasetFormat, ...] = (
    DatasetFormat("shapes", rendered=True),
    DatasetFormat("synthetic", rendered=True),
    DatasetFormat("ucf101", ("ucf", "ucf-101"), folds=(1, 2, 3)),
    DatasetFormat("hmdb51", ("hmdb", "hmdb-51"), folds=(1, 2, 3)),
    DatasetFormat(
        "kinetics400",
        ("k400", "kinetics", "kinetics-400"),
        config_names=("k400", "kinetics400"),
        splits=("train", "val", "test"),
        lr_decay_fraction=0.7,
    ),
    DatasetFormat("diving48", ("diving", "diving-48")),
    # folder, csv and list splits are whatever the root holds (records.format_splits looks on disk)
    DatasetFormat("folder", ("generic",), splits=("train", "val", "test")),
    DatasetFormat("csv", splits=("train", "val", "test")),
    # headerless 'path label' / 'dir num_frames label' lists (MMAction2, PyTorchVideo, VideoMAE)
    DatasetFormat("list", ("txt",), splits=("train", "val", "test")),
)

_BY_NAME = {n: f for f in REGISTRY for n in f.names}


def get_format(name: str) -> DatasetFormat:
    """The format a name or alias (any case) stands for; :class:`~ctrlaug.errors.UsageError` (a
    ValueError) naming the known ones."""
    f = _BY_NAME.get(name.lower())
    if f is None:
        raise UsageError(f"unknown dataset format {name!r}; known: {[f.name for f in REGISTRY]}")
    return f


def canonical_format(name: str) -> str:
    """The canonical name of a format name or alias (``"k400"`` -> ``"kinetics400"``)."""
    return get_format(name).name


def config_names() -> tuple[str, ...]:
    """The values ``TrainConfig.dataset`` accepts, in registry order."""
    return tuple(n for f in REGISTRY for n in (f.config_names or (f.name,)))


def rendered_names() -> tuple[str, ...]:
    """Formats drawn on the fly (no files)."""
    return tuple(f.name for f in REGISTRY if f.rendered)
