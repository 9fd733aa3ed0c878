"""The content-addressed blob store: blobs are published only whole and
verified, under their SHA-256, whatever happened to the store's folders."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from crc.jobs.store import BlobStore, StoreError


def receive(store: BlobStore, data: bytes, chunk: int = 3) -> str:
    sha = hashlib.sha256(data).hexdigest()
    partial = store.begin(sha, len(data))
    for offset in range(0, len(data), chunk):
        partial.write(offset, data[offset:offset + chunk])
    store.commit(partial)
    return sha


def test_a_blob_received_in_chunks_is_published_under_its_hash(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    sha = receive(store, b"int main(void) { return 0; }\n")
    assert store.has(sha) and store.path(sha).read_bytes().startswith(b"int main")
    assert store.path(sha).parent.name == sha[:2] and store.partials == {}


def test_a_blob_with_another_hash_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    claimed = hashlib.sha256(b"expected").hexdigest()
    partial = store.begin(claimed, 8)
    partial.write(0, b"tampered")
    with pytest.raises(StoreError, match="different hash"):
        store.commit(partial)
    assert not store.has(claimed) and list((tmp_path / "blobs" / "tmp").iterdir()) == []


def test_a_fan_out_folder_removed_behind_the_stores_back_is_made_again(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    first = receive(store, b"first")
    shutil.rmtree(store.path(first).parent)              # someone cleaned the store by hand
    assert receive(store, b"first") == first and store.has(first)
    source = tmp_path / "made.o"
    source.write_bytes(b"second")
    sha, size = store.add_file(source)
    shutil.rmtree(store.path(sha).parent)
    assert store.add_file(source) == (sha, size) and store.has(sha)
