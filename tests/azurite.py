"""A real Azure Blob service for the tests: Azurite (npm package ``azurite``), no mocks.

``make test`` installs it into ``.tools/`` (see the Makefile). The fixtures here start
``azurite-blob`` on a free 127.0.0.1 port with telemetry disabled and stop it by process group.

- ``azurite`` (session): one shared in-memory instance. Tests must not stop it; each test
  works in its own container (``azure_container``).
- ``azurite_on_disk`` (per test): a private instance persisting to a temporary ``--location``
  directory, for outage tests that ``stop()`` and ``start()`` it and expect earlier blobs back.

adlfs reads ``AZURE_STORAGE_CONNECTION_STRING`` by itself, but fsspec caches filesystem
instances by constructor arguments, not by environment: call
``AzureBlobFileSystem.clear_instance_cache()`` after pointing that variable at another instance.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient

ROOT = Path(__file__).resolve().parent.parent
BINARY = ROOT / ".tools" / "node_modules" / ".bin" / "azurite-blob"

# Azurite's well-known development account. Public (documented by Microsoft), fine in tests;
# copy it exactly: a typo in the key gives 403 AuthorizationFailure on every request.
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

START_TIMEOUT_S = 60


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Azurite:
    """One ``azurite-blob`` process on 127.0.0.1, restartable on the same port.

    With ``location=None`` it runs with ``--inMemoryPersistence``: :meth:`stop` then loses every
    container and blob, and a :meth:`start` afterwards comes back empty. Give ``location`` (a
    directory) to persist there instead, so that blobs written before a :meth:`stop` are still
    there after the :meth:`start` (what an outage test needs).
    """

    def __init__(self, log: Path, location: Path | None = None, port: int | None = None) -> None:
        if not BINARY.exists():
            pytest.fail(f"Azurite is not installed ({BINARY.relative_to(ROOT)} is missing): run `make test`, "
                        "which installs it into .tools/ (or `make azurite` to install only that)", pytrace=False)
        self.port = port or _free_port()
        self.location = location
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_seconds = 0.0  # how long the last start() took until the port accepted connections

    @property
    def blob_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT_NAME}"

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
                f"BlobEndpoint={self.blob_endpoint};")

    def command(self) -> list[str]:
        storage = ["--location", str(self.location)] if self.location else ["--inMemoryPersistence"]
        return [str(BINARY), "--blobHost", "127.0.0.1", "--blobPort", str(self.port), *storage,
                "--skipApiVersionCheck", "--loose", "--disableTelemetry"]

    def start(self) -> None:
        """Start (or restart after :meth:`stop`) on :attr:`port`; returns once it accepts connections."""
        if self.running:
            return
        if self.location:
            self.location.mkdir(parents=True, exist_ok=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        began = time.monotonic()
        with open(self.log, "ab") as log:
            # Own session (= process group), so stop() reaches anything node spawns.
            self.process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, cwd=self.log.parent, start_new_session=True)
        deadline = began + START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                self.process = None
                raise RuntimeError(f"azurite-blob exited at start-up on port {self.port}:\n{self._log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"azurite-blob did not listen within {START_TIMEOUT_S} s:\n{self._log_tail()}"
                    ) from None
                time.sleep(0.02)
        self.startup_seconds = time.monotonic() - began

    def stop(self) -> None:
        """Stop the process group (SIGTERM, then SIGKILL). In-memory mode loses every blob here."""
        process, self.process = self.process, None
        if process is None:
            return
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            try:
                process.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # Whatever the node process left behind in its group must go too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def service_client(self) -> BlobServiceClient:
        return BlobServiceClient.from_connection_string(self.connection_string)

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"


def new_container(azurite: Azurite, prefix: str = "test") -> ContainerClient:
    """A freshly created, empty container with a unique name (3-63 of a-z 0-9 -)."""
    name = f"{prefix}-{uuid.uuid4().hex}"[:63]
    container = ContainerClient.from_connection_string(azurite.connection_string, name)
    container.create_container()
    return container


def _running(azurite: Azurite) -> Iterator[Azurite]:
    atexit.register(azurite.stop)  # even when the session is interrupted
    azurite.start()
    try:
        yield azurite
    finally:
        azurite.stop()
        atexit.unregister(azurite.stop)


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """The shared in-memory Azurite of the session. Do not stop it: use ``azurite_on_disk`` for that."""
    yield from _running(Azurite(tmp_path_factory.mktemp("azurite") / "azurite.log"))


@pytest.fixture
def azurite_on_disk(tmp_path: Path) -> Iterator[Azurite]:
    """A private Azurite persisting to a temp directory: blobs survive ``stop()`` / ``start()``."""
    yield from _running(Azurite(tmp_path / "azurite.log", location=tmp_path / "azurite-data"))


@pytest.fixture
def azure_container(azurite: Azurite) -> Iterator[ContainerClient]:
    """A fresh container in the shared Azurite, unique to the test, deleted after it."""
    container = new_container(azurite)
    try:
        yield container
    finally:
        if azurite.running:
            container.delete_container()
        container.close()
