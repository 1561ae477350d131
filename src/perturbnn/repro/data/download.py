"""Downloading a data set with torchvision, into a temporary folder first.

torchvision's own ``download=True`` machinery does the work (its URLs and mirrors, its MD5
checks of the archive and, for CIFAR and STL-10, of every extracted file, its progress bar). It
runs in a hidden temporary folder inside the data folder (``.perturbnn-download-*``), so that
an interrupted or failed download never leaves anything that could be taken for the data: the
official folder (``cifar-10-batches-py/``, ``MNIST/raw/``, ...) or file (SVHN's
``train_32x32.mat``) is moved into place only after torchvision's checks have passed, and the
temporary folder, with the archive, is removed in every case.
"""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Optional, Union

from perturbnn.repro.data.catalog import _official_files, _Spec, _spec
from perturbnn.repro.data.errors import DataCorruptError, DataDownloadError

__all__ = ["TEMP_PREFIX", "download_dataset", "source_urls"]

logger = logging.getLogger(__name__)
StrPath = Union[str, "os.PathLike[str]"]

#: Name prefix of the temporary folder a download runs in (inside the data folder).
TEMP_PREFIX = ".perturbnn-download-"


def source_urls(name: str, *, train: bool) -> list[str]:
    """The URLs torchvision downloads a data set's split from (``[]`` for ImageFolder).

    Read from the torchvision class at run time (``CIFAR10.url``, ``SVHN.split_list``,
    ``MNIST.mirrors`` and ``MNIST.resources``, ...), so they are torchvision's own, including
    any change a newer torchvision makes. For MNIST and FashionMNIST, the first mirror only.

    Args:
        name: one of :data:`~perturbnn.repro.data.DATASETS`, case-insensitive.
        train: the training split if ``True``, else the test split.

    Raises:
        ValueError: if ``name`` is unknown.
    """
    import torchvision.datasets as tvd

    spec = _spec(name)
    cls_name = spec.torchvision_class
    if cls_name in ("CIFAR10", "CIFAR100", "STL10"):
        return [str(getattr(tvd, cls_name).url)]
    if cls_name == "SVHN":
        return [str(tvd.SVHN.split_list["train" if train else "test"][0])]
    if cls_name in ("MNIST", "FashionMNIST"):
        cls = getattr(tvd, cls_name)
        return [f"{cls.mirrors[0]}{filename}" for filename, _ in cls.resources]
    return []


def _destination(spec: _Spec, data_dir: Path) -> Path:
    """The torchvision root the download goes to: the first place :func:`load_dataset` looks."""
    if spec.torchvision_folder and data_dir.name == spec.torchvision_folder:
        data_dir = data_dir.parent  # data_dir is the official folder itself
    sub = spec.torchvision_roots[0]
    return data_dir / sub if sub else data_dir


def _missing(root: Path, files: list[str]) -> list[str]:
    return [f for f in files if not (root / f).is_file()]


def _reason(exc: BaseException) -> str:
    """One line saying why torchvision's download failed."""
    # urllib's URLError (an OSError with .reason; HTTPError has a .code as well). The network
    # is torchvision's business: this module imports no network client.
    if isinstance(exc, OSError) and hasattr(exc, "reason") and not hasattr(exc, "code"):
        return f"cannot reach the server: {exc.reason}"
    text = " ".join(str(exc).split())
    if isinstance(exc, RuntimeError) and "corrupted" in text.lower():
        return (
            f"the downloaded files do not match torchvision's MD5 checksums (torchvision: {text})"
        )
    if isinstance(exc, RuntimeError) and text:
        return text  # torchvision's own messages (MNIST: every mirror tried, with its error)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _run_torchvision(spec: _Spec, root: Path, train: bool) -> None:
    """Let torchvision download, check and extract one split into ``root``."""
    import torchvision.datasets as tvd

    cls: Any = getattr(tvd, spec.torchvision_class)
    if spec.torchvision_class in ("SVHN", "STL10"):
        cls(root=str(root), split="train" if train else "test", download=True)
    else:
        cls(root=str(root), train=train, download=True)


def download_dataset(name: str, data_dir: StrPath, *, train: bool) -> Path:
    """Download one split of a data set with torchvision, unless it is there already.

    The split is looked for in torchvision's layout under ``data_dir`` (SVHN: under
    ``data_dir/svhn/``). If every file torchvision needs is there, nothing is downloaded. Else
    ``torchvision.datasets.<Class>(root, download=True)`` runs in a temporary folder
    ``data_dir/.perturbnn-download-*`` (torchvision's URLs, mirrors, MD5 checks and progress bar
    on stderr), and the official folder is moved into ``data_dir`` once torchvision has checked
    it; the temporary folder is removed whether it succeeded or not. CIFAR-10, CIFAR-100 and
    STL-10 come as one archive holding both splits, MNIST and FashionMNIST as four files holding
    both, SVHN as one file per split.

    Args:
        name: one of :data:`~perturbnn.repro.data.DATASETS` except ``ImageFolder``,
            case-insensitive.
        data_dir: the data folder (created if missing).
        train: the training split if ``True``, else the test split.

    Returns:
        Path: the torchvision root now holding the split (``data_dir``, or ``data_dir/svhn``).

    Raises:
        ValueError: if ``name`` is unknown or is ``ImageFolder`` (which cannot be downloaded).
        DataCorruptError: if the official folder is there but lacks files; it is left alone
            (the message names the missing files).
        DataDownloadError: (a :class:`~perturbnn.repro.data.DataNotFoundError`) if the download
            or torchvision's checks fail, in one line with the reason and where to put the
            files by hand; nothing is left in ``data_dir``.
        ImportError: if torchvision needs a missing package to check the files (SVHN: scipy).

    Source: issue 21 ("first contact on a fresh machine"); torchvision's ``datasets``.
    """
    spec = _spec(name)
    if not isinstance(train, bool):
        raise TypeError(f"train must be a bool, got {type(train).__name__} {train!r}")
    if not spec.download_size:
        raise ValueError(
            f"{spec.label} cannot be downloaded: put the images in <data_dir>/train/<class>/ "
            "and <data_dir>/val/<class>/ yourself"
        )
    data_dir = Path(data_dir).absolute()  # messages name the folder whatever the cwd
    dest = _destination(spec, data_dir)
    files = _official_files(spec, train)
    missing = _missing(dest, files)
    if not missing:
        return dest
    marker = dest / spec.torchvision_marker[train]
    if marker.is_dir() and len(missing) < len(files):
        raise DataCorruptError(
            f"{marker}: {spec.label} is incomplete, {', '.join(missing)} missing; copy the "
            f"missing files again, or remove {marker} and download again",
            marker,
        )
    created = not data_dir.exists()
    data_dir.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{spec.info.name}-", dir=data_dir))
    logger.info(
        "downloading %s (%s) with torchvision into %s", spec.label, spec.download_size, dest
    )
    try:
        try:
            _run_torchvision(spec, temp, train)
        except ImportError:
            raise
        except (
            OSError,  # urllib's URLError and HTTPError among them
            RuntimeError,
            ValueError,
            EOFError,
            tarfile.TarError,
            zipfile.BadZipFile,
        ) as exc:
            raise _failed(spec, data_dir, dest, train, _reason(exc)) from exc
        still = _missing(temp, files)
        if still:
            raise _failed(
                spec, data_dir, dest, train, f"torchvision left {', '.join(still)} missing"
            )
        _move_into_place(spec, temp, dest, train)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        if created and not any(data_dir.iterdir()):
            data_dir.rmdir()  # a folder this call made for nothing
        raise
    shutil.rmtree(temp, ignore_errors=True)
    logger.info("%s is in %s", spec.label, dest / spec.torchvision_marker[train])
    return dest


def _move_into_place(spec: _Spec, temp: Path, dest: Path, train: bool) -> None:
    """Move the checked official folder (SVHN: file) from ``temp`` to ``dest``."""
    item = spec.torchvision_marker[train]  # "cifar-10-batches-py", "MNIST/raw", "train_32x32.mat"
    source, target = temp / item, dest / item
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        if target.exists():
            raise FileExistsError(f"{target} exists")
        source.rename(target)  # same file system: one step, never half there
    except OSError as exc:
        if not _missing(dest, _official_files(spec, train)):
            return  # another process put it there in the meantime
        raise DataDownloadError(
            f"downloaded {spec.label} but cannot move it to {target} ({exc}); nothing was kept",
            [target],
        ) from exc


def _archive_md5(spec: _Spec, train: bool) -> Optional[str]:
    """torchvision's MD5 of the one file to fetch by hand (``None`` for MNIST's four files)."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, spec.torchvision_class, None)
    if spec.torchvision_class in ("CIFAR10", "CIFAR100", "STL10"):
        return str(getattr(cls, "tgz_md5", "")) or None
    if spec.torchvision_class == "SVHN":
        return str(tvd.SVHN.split_list["train" if train else "test"][2])
    return None


def _failed(spec: _Spec, data_dir: Path, dest: Path, train: bool, reason: str) -> DataDownloadError:
    urls = source_urls(spec.info.name, train=train)
    if spec.torchvision_class in ("MNIST", "FashionMNIST"):
        raw = dest / spec.torchvision_marker[train]
        how = (
            f"the four .gz files from {urls[0].rsplit('/', 1)[0]}/, copy them here and gunzip "
            f"them into {raw}"
        )
    elif spec.torchvision_class == "SVHN":
        how = f"{urls[0]} and copy it into {dest}"
    else:
        how = (
            f"{urls[0]}, copy it here and extract it into {dest} (giving "
            f"{dest / spec.torchvision_folder}/)"
        )
    md5 = _archive_md5(spec, train)
    check = f"; its MD5 is {md5}" if md5 else " (MD5 checksums: docs/data.md)"
    return DataDownloadError(
        f"downloading {spec.label} failed: {reason}; nothing was kept in {data_dir}. Without "
        f"network here: on a machine with network, download {how}{check}",
        [dest / spec.torchvision_marker[train]],
    )
