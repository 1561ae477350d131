"""What is missing: the errors of the data sets and the one-line messages that say where a data
set was looked for and how to get it.

:mod:`perturbnn.repro.data.files` raises them when a split is not found, incomplete or corrupt;
:mod:`perturbnn.repro.data.download` when a download fails. Both import this module; it imports
neither. The classes are importable from :mod:`perturbnn.repro.data` too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from perturbnn.repro.data.catalog import _official_files, _Spec

__all__ = ["DATA_DIR_ENV", "DataCorruptError", "DataDownloadError", "DataNotFoundError"]

#: Name of the environment variable read by :func:`resolve_data_dir`.
DATA_DIR_ENV = "PERTURBNN_DATA_DIR"


class DataNotFoundError(FileNotFoundError):
    """A data set is not where it was looked for.

    The message is one line: how to get the data (``download=True``, ``data_dir``), then the
    places that were looked at.

    Attributes:
        paths (list[Path]): the paths looked at, in search order.
    """

    def __init__(self, message: str, paths: Sequence[Path] = ()) -> None:
        super().__init__(message)
        self.paths: list[Path] = list(paths)


class DataDownloadError(DataNotFoundError):
    """A data set is missing and downloading it failed (no network, a checksum error, ...).

    The message is one line: the reason and where to put the files by hand. Nothing of the
    failed download is left in the data folder.

    Attributes:
        paths (list[Path]): where the data would have gone.
    """


class DataCorruptError(ValueError):
    """A data file or folder exists but cannot be read or holds the wrong arrays.

    The message names the file or folder.

    Attributes:
        path (Path): the file or folder at fault.
    """

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path: Path = path


def _check_complete(spec: _Spec, root: Path, train: bool) -> None:
    """Raise :class:`DataCorruptError` naming the files torchvision needs that are missing."""
    folder = root / spec.torchvision_marker[train]
    files = _official_files(spec, train)
    missing = [f for f in files if not (root / f).is_file()]
    if not missing:
        return
    split = "train" if train else "test"
    needs = (
        f"torchvision needs all {len(files)} files to read either split"
        if len(files) > 1
        else f"torchvision reads the {split} split from it"
    )
    names = ", ".join(os.path.relpath(root / f, folder) for f in missing)
    raise DataCorruptError(
        f"{folder}: {spec.label} is incomplete: {names} missing ({needs}); copy the missing "
        f"files again, or remove {folder} and pass download=True to download it again",
        folder,
    )


def _looked_for(data_dir: Path, looked: list[tuple[Path, bool]]) -> str:
    """The paths looked at, relative to ``data_dir``, a set of files in one folder on one entry
    (``cifar10/cifar10_train_1.npz .. cifar10_train_5.npz``), naming the missing ones of a set
    that is partly there. Every entry names its folder: one directly in ``data_dir`` starts
    with ``./``, so that the same files looked for in ``cifar10/`` and in ``data_dir`` itself
    read as two places (``./cifar10_train_1.npz .. cifar10_train_5.npz``)."""
    groups: dict[tuple[Path, str], list[tuple[str, bool]]] = {}
    for path, found in looked:
        groups.setdefault((path.parent, path.suffix), []).append((path.name, found))
    entries = []
    for (parent, _), members in groups.items():
        rel = os.path.relpath(parent, data_dir)
        first = os.path.join(rel, members[0][0])  # rel is "." for data_dir itself
        entry = first if len(members) == 1 else f"{first} .. {members[-1][0]}"
        missing = [name for name, found in members if not found]
        if len(missing) < len(members):
            entry += f" ({', '.join(missing)} missing)"
        entries.append(entry)
    return ", ".join(entries)


def _not_found(
    spec: _Spec, data_dir: Path, train: bool, looked: list[tuple[Path, bool]]
) -> DataNotFoundError:
    """One line: how to get the data first, then (briefly) where it was looked for."""
    split = "train" if train else "test"
    root = data_dir.absolute()
    if spec.info.name == "ImageFolder":
        how = (
            f"put the training images in {root / 'train'}{os.sep}<class>{os.sep} and the test "
            f"images in {root / 'val'}{os.sep}<class>{os.sep} (or test{os.sep}), or point "
            "data_dir at the folder that holds train/ and val/ (an ImageFolder cannot be "
            "downloaded)"
        )
    else:
        sub = spec.torchvision_roots[0]
        official = (
            os.path.join(sub, spec.torchvision_marker[train])
            if sub
            else spec.torchvision_marker[train]
        )
        folder = os.sep if spec.torchvision_class != "SVHN" else ""  # SVHN's marker is a file
        holding = f"torchvision's {official}{folder}"
        if spec.npz_files[train]:
            names = [f for f, _ in spec.npz_files[train]]
            npz = names[0] if len(names) == 1 else f"{names[0]} .. {names[-1]}"
            holding += f" or the offline {os.path.join(spec.npz_folder, npz)}"
        how = (
            f"pass download=True to fetch it ({spec.download_size}), or point data_dir (or "
            f"${DATA_DIR_ENV}) at a folder holding {holding}"
        )
    return DataNotFoundError(
        f"{spec.label} {split} split not found in {root}: {how}. Looked for: "
        f"{_looked_for(data_dir, looked)}",
        [p for p, _ in looked],
    )
