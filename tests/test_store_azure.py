"""obsml's store on real Azure Blob (Azurite) through adlfs: spans and offloaded payloads land whole."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from adlfs import AzureBlobFileSystem
from apps import make_app
from azure.storage.blob import ContainerClient
from azurite import Azurite
from conftest import running_server

import obsml

OPTIONS = {"service": "credit", "model": "best_model", "version": "10"}
TRACE_PART = re.compile(r"obsml/traces/\d{4}/\d\d/\d\d/\d\d/[^/]+\.jsonl")


@pytest.fixture
def blob_store(azurite: Azurite, azure_container: ContainerClient, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``abfs://<container>/obsml``; adlfs finds the account in ``AZURE_STORAGE_CONNECTION_STRING``."""
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    # fsspec caches filesystems by constructor arguments (none here), not by environment.
    AzureBlobFileSystem.clear_instance_cache()
    yield f"abfs://{azure_container.container_name}/obsml"
    AzureBlobFileSystem.clear_instance_cache()


def read_blob_spans(container: ContainerClient) -> list[dict[str, Any]]:
    """Every span in the container's trace part files, in start order (read with azure-storage-blob)."""
    spans = [
        json.loads(line)
        for blob in container.list_blobs(name_starts_with="obsml/traces/")
        if TRACE_PART.fullmatch(blob.name)
        for line in container.download_blob(blob.name).readall().split(b"\n")
        if line
    ]
    return sorted(spans, key=lambda span: span["start_time"])


def blob_span_by_correlation_id(container: ContainerClient, correlation_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        obsml.flush()
        spans = read_blob_spans(container)
        matches = [s for s in spans if s["attributes"]["obsml.correlation_id"] == correlation_id]
        if matches or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(matches) == 1, f"{len(matches)} spans for {correlation_id!r}"
    return matches[0]


def test_spans_and_offloaded_payloads_land_whole_in_azure_blob(
    blob_store: str, azure_container: ContainerClient
) -> None:
    big, small = os.urandom(100 * 1024), b'{"rows": [{"income": 52000, "age": 41}]}'
    with running_server(make_app(store=blob_store, **OPTIONS)) as url, httpx.Client(base_url=url, timeout=30) as client:
        for correlation_id, body in (("big-1", big), ("small-1", small)):
            headers = {"x-correlation-id": correlation_id, "content-type": "application/octet-stream"}
            assert client.post("/echo", content=body, headers=headers).content == body
        assert obsml.flush(30)

        container = azure_container.container_name
        names = [blob.name for blob in azure_container.list_blobs()]
        assert any(TRACE_PART.fullmatch(name) for name in names), names
        leftovers = [name for name in names if name.rpartition("/")[2].startswith(".")]
        assert not leftovers, f"temporary objects left behind: {leftovers}"

        small_span = blob_span_by_correlation_id(azure_container, "small-1")
        attributes = small_span["attributes"]
        assert attributes["obsml.request.body"] == small.decode()
        assert attributes["obsml.request.body.sha256"] == hashlib.sha256(small).hexdigest()
        assert "obsml.request.body.uri" not in attributes

        big_span = blob_span_by_correlation_id(azure_container, "big-1")
        attributes = big_span["attributes"]
        assert "obsml.request.body" not in attributes
        assert attributes["obsml.request.body.size"] == len(big)
        uri = attributes["obsml.request.body.uri"]
        match = re.fullmatch(rf"abfs://{container}/(obsml/payloads/\d{{4}}/\d\d/\d\d/"
                             rf"{big_span['trace_id']}-{big_span['span_id']}-request\.bin)", uri)
        assert match, uri
        stored = azure_container.download_blob(match[1]).readall()
        assert stored == big
        assert hashlib.sha256(stored).hexdigest() == attributes["obsml.request.body.sha256"]
        response_uri = attributes["obsml.response.body.uri"]
        assert response_uri.endswith("-response.bin")
        response_blob = response_uri.removeprefix(f"abfs://{container}/")
        assert azure_container.download_blob(response_blob).readall() == big


def test_an_abfs_store_without_credentials_says_what_adlfs_says(monkeypatch: pytest.MonkeyPatch) -> None:
    """adlfs is installed: the error is adlfs's own complaint, not an install hint."""
    for name in list(os.environ):
        if name.startswith(("AZURE_", "FSSPEC_ABFS")):
            monkeypatch.delenv(name)
    AzureBlobFileSystem.clear_instance_cache()  # an earlier test's filesystem would be reused
    with pytest.raises(obsml.ConfigError) as raised:
        obsml.ObsmlMiddleware(make_app(), store="abfs://container/obsml")
    message = str(raised.value)
    assert "Must provide either a connection_string or account_name with credentials" in message
    assert "pip install" not in message

