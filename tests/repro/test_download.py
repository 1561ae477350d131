"""``--download`` and ``download=True``, for real, from a server on 127.0.0.1.

Each test writes a small archive in an official layout (CIFAR-10's ``cifar-10-python.tar.gz``
holding ``cifar-10-batches-py/``; MNIST's four ``.gz`` IDX files), serves it from a local HTTP
server in a thread, and points torchvision's own URL and MD5 attributes at it, so that the whole
of torchvision's download path runs (request, progress, MD5 of the archive, extraction, MD5 of
every extracted file) without the internet. Also: the one-line messages when the data is
missing, incomplete, or cannot be downloaded, and that a failed download leaves nothing behind.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import pickle
import socket
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from perturbnn.repro.cli import main as cli_main
from perturbnn.repro.data import (
    DataCorruptError,
    DataDownloadError,
    DataNotFoundError,
    download_dataset,
    load_dataset,
)
from perturbnn.repro.data.download import TEMP_PREFIX

N_TRAIN_PER_BATCH = 6  # five batches: 30 training images
N_TEST = 20
CIFAR_CLASSES = "airplane automobile bird cat deer dog frog horse ship truck".split()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@dataclass
class Server:
    """Files served on 127.0.0.1 (path -> bytes) and the number of requests per path."""

    files: dict[str, bytes] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)
    port: int = 0

    def url(self, name: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    @property
    def total_hits(self) -> int:
        return sum(self.hits.values())


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            name = self.path.lstrip("/")
            state.hits[name] = state.hits.get(name, 0) + 1
            body = state.files.get(name)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep the test output clean

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = int(httpd.server_address[1])
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def _closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ----------------------------------------------------------------- CIFAR-10's official archive


@dataclass
class CifarArchive:
    archive: bytes
    members: dict[str, bytes]  # file name in cifar-10-batches-py/ -> bytes
    n_train: int
    n_test: int


def make_cifar10_archive() -> CifarArchive:
    """``cifar-10-python.tar.gz`` as the official one is laid out, with a few dozen images."""
    rng = np.random.default_rng(0)
    members: dict[str, bytes] = {}

    def batch(n: int, offset: int) -> bytes:
        rows = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)  # CHW rows, as official
        labels = [(offset + i) % 10 for i in range(n)]
        return pickle.dumps({"batch_label": b"test", "data": rows, "labels": labels})

    for i in range(1, 6):
        members[f"data_batch_{i}"] = batch(N_TRAIN_PER_BATCH, i)
    members["test_batch"] = batch(N_TEST, 0)
    members["batches.meta"] = pickle.dumps({"label_names": CIFAR_CLASSES})
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return CifarArchive(buffer.getvalue(), members, 5 * N_TRAIN_PER_BATCH, N_TEST)


@pytest.fixture
def cifar10(server: Server, monkeypatch: pytest.MonkeyPatch) -> CifarArchive:
    """Serve the archive and point torchvision's ``CIFAR10`` at it (URL and every MD5)."""
    import torchvision.datasets as tvd

    made = make_cifar10_archive()
    server.files["cifar-10-python.tar.gz"] = made.archive
    monkeypatch.setattr(tvd.CIFAR10, "url", server.url("cifar-10-python.tar.gz"))
    monkeypatch.setattr(tvd.CIFAR10, "tgz_md5", _md5(made.archive))
    train = [[f"data_batch_{i}", _md5(made.members[f"data_batch_{i}"])] for i in range(1, 6)]
    monkeypatch.setattr(tvd.CIFAR10, "train_list", train)
    monkeypatch.setattr(
        tvd.CIFAR10, "test_list", [["test_batch", _md5(made.members["test_batch"])]]
    )
    meta = {"filename": "batches.meta", "key": "label_names"}
    monkeypatch.setattr(tvd.CIFAR10, "meta", {**meta, "md5": _md5(made.members["batches.meta"])})
    return made


def _train(data_dir: Path, out_dir: Path, *extra: str) -> int:
    return cli_main(
        [
            "train", "--net-type", "lenet", "--nfilters", "2", "--nepochs", "1",
            "--batch-size", "8", "--data-dir", str(data_dir), "--out-dir", str(out_dir),
            "--no-progress", "--device", "cpu", "--threads", "1", *extra,
        ]
    )  # fmt: skip


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def _leftovers(data_dir: Path) -> list[Path]:
    return list(data_dir.rglob("*")) if data_dir.exists() else []


def test_train_downloads_cifar10_once_and_trains_on_it(
    tmp_path: Path, server: Server, cifar10: CifarArchive, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    assert _train(data, tmp_path / "run1", "--download") == 0, capsys.readouterr().err[-2000:]
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "run1" / "summary.json").read_text())
    # It trained and tested on the served images, all of them.
    assert f"data: {cifar10.n_train} train and {cifar10.n_test} test samples" in out
    assert (summary["train_samples"], summary["test_samples"]) == (cifar10.n_train, cifar10.n_test)
    assert summary["config"]["download"] is True and summary["epochs"] == 1
    # One download for both splits (torchvision requests a URL twice: redirects, then data).
    assert list(server.hits) == ["cifar-10-python.tar.gz"]
    hits = server.total_hits
    folder = data / "cifar-10-batches-py"
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == cifar10.members
    assert sorted(p.name for p in data.iterdir()) == ["cifar-10-batches-py"]  # no archive, no temp
    # A second run finds the data and never downloads again, with or without --download.
    assert _train(data, tmp_path / "run2", "--download") == 0
    assert _train(data, tmp_path / "run3") == 0
    assert server.total_hits == hits


def test_load_dataset_downloads_into_data_dir(
    tmp_path: Path, server: Server, cifar10: CifarArchive
) -> None:
    test_set = load_dataset("cifar-10", tmp_path / "d", train=False, download=True)
    rows = np.frombuffer(pickle.loads(cifar10.members["test_batch"])["data"], np.uint8)
    assert test_set.images.numpy().tobytes() == rows.tobytes()  # the served pixels, CHW
    hits = server.total_hits
    assert len(load_dataset("CIFAR10", tmp_path / "d", train=True, download=True)) == 30
    assert download_dataset("CIFAR10", tmp_path / "d", train=True) == tmp_path / "d"
    assert server.total_hits == hits


def test_corrupt_archive_is_one_line_and_leaves_nothing(
    tmp_path: Path, server: Server, cifar10: CifarArchive, capsys: pytest.CaptureFixture[str]
) -> None:
    damaged = bytearray(cifar10.archive)
    damaged[len(damaged) // 2] ^= 0xFF  # the MD5 torchvision was given no longer matches
    server.files["cifar-10-python.tar.gz"] = bytes(damaged)
    data = tmp_path / "data"
    assert _train(data, tmp_path / "run", "--download") == 2
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1, errors
    assert "downloading CIFAR-10 failed" in errors[0] and "MD5" in errors[0]
    assert "cifar-10-python.tar.gz" in errors[0]  # where to get it by hand
    assert _leftovers(data) == [] and not (tmp_path / "run").exists()
    with pytest.raises(DataDownloadError, match="MD5"):  # also a DataNotFoundError
        load_dataset("CIFAR10", data, train=True, download=True)
    assert _leftovers(data) == []


def test_unreachable_server_is_one_line_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import torchvision.datasets as tvd

    url = f"http://127.0.0.1:{_closed_port()}/cifar-10-python.tar.gz"
    monkeypatch.setattr(tvd.CIFAR10, "url", url)
    data = tmp_path / "existing"
    data.mkdir()
    assert _train(data, tmp_path / "run", "--download") == 2
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1, errors
    line = errors[0]
    assert "downloading CIFAR-10 failed: cannot reach the server" in line
    assert url in line and str(data) in line and "on a machine with network" in line
    assert f"its MD5 is {tvd.CIFAR10.tgz_md5}" in line  # what to check the copy by hand against
    assert _leftovers(data) == []


def test_missing_data_names_download_and_data_dir_first(
    tmp_path: Path, server: Server, cifar10: CifarArchive, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "nothing"
    assert _train(data, tmp_path / "run") == 2
    assert server.total_hits == 0  # without --download, nothing is requested
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1
    head, _, looked = errors[0].partition("Looked for:")
    assert head.startswith(f"error: CIFAR-10 train split not found in {data}: pass --download")
    assert "--data-dir" in head and "cifar-10-batches-py" in head and "170 MB" in head
    assert "cifar10/cifar10_train_1.npz" in looked and "shared" not in errors[0]


# ----------------------------------------------------------------- incomplete official folders


def _write_cifar100(root: Path) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rows = np.zeros((4, 3072), np.uint8)
    for name in ("train", "test"):
        (folder / name).write_bytes(pickle.dumps({"data": rows, "fine_labels": [0, 1, 2, 3]}))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [str(i) for i in range(100)]}))
    return folder


def test_incomplete_cifar100_names_the_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _write_cifar100(tmp_path)
    (folder / "test").unlink()
    with pytest.raises(
        DataCorruptError, match=r"cifar-100-python: CIFAR-100 is incomplete: test missing"
    ):
        load_dataset("CIFAR100", tmp_path, train=True)  # the train split needs it too
    status = _train(
        tmp_path, tmp_path / "run", "--dataset-train", "CIFAR100", "--dataset-test", "CIFAR100"
    )
    errors = _error_lines(capsys.readouterr().err)
    assert status == 2 and len(errors) == 1
    assert "test missing" in errors[0] and "--download" in errors[0]
    assert "cannot read the train split" not in errors[0]
    # --download leaves a folder the user put there alone, and says the same.
    with pytest.raises(DataCorruptError, match="test missing"):
        load_dataset("CIFAR100", tmp_path, train=True, download=True)
    assert sorted(p.name for p in folder.iterdir()) == ["meta", "train"]


def test_unreadable_cifar100_says_which_split_and_what_to_do(tmp_path: Path) -> None:
    _write_cifar100(tmp_path)  # complete, but not the official files: the MD5s differ
    with pytest.raises(DataCorruptError) as info:
        load_dataset("CIFAR100", tmp_path, train=False)
    message = str(info.value)
    assert "test split" in message and "MD5" in message and "download=True" in message
    assert "You can use download=True" not in message  # torchvision's advice, not ours


def test_incomplete_mnist_and_stl10_name_the_missing_files(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        (raw / name).write_bytes(b"")
    with pytest.raises(DataCorruptError, match="t10k-labels-idx1-ubyte missing"):
        load_dataset("MNIST", tmp_path, train=True)
    stl = tmp_path / "stl10_binary"
    stl.mkdir()
    (stl / "train_X.bin").write_bytes(b"")
    with pytest.raises(DataCorruptError, match=r"train_y\.bin, unlabeled_X\.bin, test_X\.bin"):
        load_dataset("STL10", tmp_path, train=True)


@pytest.mark.parametrize(
    ("name", "wanted"),
    [
        ("SVHN", "svhn/train_32x32.mat"),
        ("STL10", "stl10_binary/"),
        ("FashionMNIST", "FashionMNIST/raw/"),
        ("CIFAR100", "cifar-100-python/"),
    ],
)
def test_not_found_names_the_data_sets_own_files(name: str, wanted: str, tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as info:
        load_dataset(name, tmp_path, train=True)
    message = str(info.value)
    assert "\n" not in message and "download=True" in message and wanted in message
    assert "cifar10/" not in message and "mnist/" not in message


def test_image_folder_cannot_be_downloaded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("ImageFolder", tmp_path, train=True)
    assert "cannot be downloaded" in str(info.value) and "train" in str(info.value)
    with pytest.raises(ValueError, match="download must be False for ImageFolder"):
        load_dataset("ImageFolder", tmp_path, train=True, download=True)
    status = _train(
        tmp_path, tmp_path / "run", "--download", "--dataset-train", "ImageFolder",
        "--dataset-test", "ImageFolder",
    )  # fmt: skip
    errors = _error_lines(capsys.readouterr().err)
    assert status == 2 and len(errors) == 1 and errors[0].startswith("error: --download must")


# ----------------------------------------------------------------- MNIST's mirrors


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    return header + array.astype(np.uint8).tobytes()


def test_mnist_downloads_from_torchvisions_mirror_list(
    tmp_path: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision.datasets as tvd

    rng = np.random.default_rng(1)
    raw_files = {
        "train-images-idx3-ubyte": _idx(rng.integers(0, 256, (12, 28, 28))),
        "train-labels-idx1-ubyte": _idx(np.arange(12) % 10),
        "t10k-images-idx3-ubyte": _idx(rng.integers(0, 256, (8, 28, 28))),
        "t10k-labels-idx1-ubyte": _idx(np.arange(8) % 10),
    }
    resources = []
    for name, data in raw_files.items():
        packed = gzip.compress(data)
        server.files[f"mnist/{name}.gz"] = packed
        resources.append((f"{name}.gz", _md5(packed)))
    dead = f"http://127.0.0.1:{_closed_port()}/"
    monkeypatch.setattr(tvd.MNIST, "mirrors", [dead, server.url("mnist/")])  # first one down
    monkeypatch.setattr(tvd.MNIST, "resources", resources)
    root = download_dataset("MNIST", tmp_path / "data", train=False)
    assert root == tmp_path / "data" and set(server.hits) == {f"mnist/{n}.gz" for n in raw_files}
    hits = server.total_hits
    raw = root / "MNIST" / "raw"
    assert {n: (raw / n).read_bytes() for n in raw_files} == raw_files
    assert not [p for p in root.iterdir() if p.name.startswith(TEMP_PREFIX)]
    assert download_dataset("MNIST", tmp_path / "data", train=True) == root
    assert server.total_hits == hits  # never again
    # What was downloaded is what is read (the official counts are checked: 8 is not 10,000).
    with pytest.raises(DataCorruptError, match="must hold 10000 images, got 8"):
        load_dataset("MNIST", tmp_path / "data", train=False)


# ----------------------------------------------------------------- where the download goes


def test_download_goes_to_the_named_folder_or_data_never_the_shared_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from perturbnn.repro.cli import demo as demo_cli
    from perturbnn.repro.cli import reproduce as reproduce_cli
    from perturbnn.repro.cli import train as train_cli
    from perturbnn.repro.config import RunConfig
    from perturbnn.repro.scales import SCALES

    monkeypatch.delenv("PERTURBNN_DATA_DIR", raising=False)
    work = tmp_path / "checkout"
    work.mkdir()
    (tmp_path / "shared" / "data").mkdir(parents=True)  # the fallback for reading only
    monkeypatch.chdir(work)
    assert RunConfig().data_dir == "../shared/data"
    assert RunConfig(download=True).data_dir == "./data"
    configs = {
        "train": train_cli.resolve_config(["--download", "--out-dir", "r"]),
        "demo": demo_cli.demo_config(demo_cli.build_parser().parse_args(["--download"])),
        "reproduce": reproduce_cli.make_config(
            "baseline",
            SCALES["cpu"],
            data_dir=reproduce_cli.build_parser().parse_args(["--download"]).data_dir,
            out_dir=Path("r"),
            progress=False,
            download=True,
        ),
    }
    for command, config in configs.items():
        assert (config.download, config.data_dir) == (True, "./data"), command
    named = train_cli.resolve_config(["--download", "--data-dir", "mine", "--out-dir", "r"])
    assert named.data_dir == "mine"
    monkeypatch.setenv("PERTURBNN_DATA_DIR", str(tmp_path / "env"))
    assert RunConfig(download=True).data_dir == str(tmp_path / "env")
    assert not (work / "data").exists()  # nothing is created before data is needed
