"""The ASGI adapter under granian: files stream through obsml, ports are integers."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import body_bytes, span_by_correlation_id
from servers import BIN, RunningCommand, free_port, running_command, store_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def granian(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningCommand, Path]]:
    store = tmp_path_factory.mktemp("granian") / "store"
    port = free_port()
    command = [str(BIN / "granian"), "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port), "apps:app"]
    with running_command(command, port, store.parent / "granian.log", store_env(store)) as server:
        yield server, store


@pytest.fixture
def model_card(tmp_path: Path) -> Path:
    path = tmp_path / "model-card.bin"
    path.write_bytes(bytes(range(256)) * 400)  # 100 KB
    return path


def test_a_file_response_is_captured_whole_though_the_server_offers_pathsend(
    granian: tuple[RunningCommand, Path], model_card: Path
) -> None:
    server, store = granian
    with httpx.Client(base_url=server.url, timeout=30) as client:
        response = client.get("/file", params={"path": str(model_card)}, headers={"x-correlation-id": "file"})
    assert response.content == model_card.read_bytes()
    attributes = span_by_correlation_id(store, "file")["attributes"]
    assert attributes["obsml.response.body.size"] == len(response.content)
    assert attributes["obsml.response.body.sha256"] == hashlib.sha256(response.content).hexdigest()
    assert body_bytes(span_by_correlation_id(store, "file"), "response") == response.content


def test_a_file_sent_past_obsml_anyway_is_marked_not_captured_never_empty(
    granian: tuple[RunningCommand, Path], model_card: Path
) -> None:
    server, store = granian
    with httpx.Client(base_url=server.url, timeout=30) as client:
        response = client.get(
            "/file-by-path", params={"path": str(model_card)}, headers={"x-correlation-id": "by-path"}
        )
    assert response.content == model_card.read_bytes()  # granian sent it from the path
    attributes = span_by_correlation_id(store, "by-path")["attributes"]
    assert attributes["obsml.response.body.not_captured"] == "http.response.pathsend"
    assert not {"obsml.response.body.size", "obsml.response.body.sha256", "obsml.response.body"} & attributes.keys()
    assert "obsml.client.disconnected" not in attributes


def test_ports_are_integers_and_the_server_is_named_by_the_host_header(granian: tuple[RunningCommand, Path]) -> None:
    server, store = granian
    port = int(server.url.rsplit(":", 1)[1])
    with httpx.Client(base_url=server.url, timeout=30) as client:
        client.get("/status/200", headers={"x-correlation-id": "ports"})
        client.get("/status/200", headers={"x-correlation-id": "named", "host": "[::1]:8443"})
    attributes = span_by_correlation_id(store, "ports")["attributes"]
    assert (attributes["server.address"], attributes["server.port"]) == ("127.0.0.1", port)
    assert attributes["client.address"] == "127.0.0.1"
    assert isinstance(attributes["client.port"], int)  # granian's scope has it as a string
    named = span_by_correlation_id(store, "named")["attributes"]
    assert (named["server.address"], named["server.port"]) == ("::1", 8443)
