"""Content-addressed, atomic artifact files (artifacts.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from resnetkit.errors import IntegrityError, RegistryError
from resnetkit.registry import ArtifactStore


@pytest.fixture
def artifacts(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "store")


def test_put_names_the_file_by_its_sha256_and_leaves_no_temp_file(
    artifacts: ArtifactStore, tmp_path: Path
) -> None:
    source = tmp_path / "weights.bin"
    source.write_bytes(b"x" * 3_000_000)
    seen: list[int] = []
    stored = artifacts.put(source, seen.append)
    assert stored.digest == hashlib.sha256(source.read_bytes()).hexdigest()
    assert stored.size_bytes == 3_000_000
    assert seen[-1] == 3_000_000 and len(seen) == 3
    assert artifacts.path_for(stored.digest).read_bytes() == source.read_bytes()
    assert [(p.name, t) for p, t in artifacts.iter_files()] == [(stored.digest, False)]


def test_put_is_idempotent_and_repairs_a_corrupt_copy(
    artifacts: ArtifactStore, tmp_path: Path
) -> None:
    source = tmp_path / "a.json"
    source.write_bytes(b'{"a": 1}')
    stored = artifacts.put(source)
    target = artifacts.path_for(stored.digest)
    target.chmod(0o644)
    target.write_bytes(b'{"a": 2}')
    assert artifacts.check(stored.digest) is not None
    assert artifacts.put(source) == stored
    assert artifacts.check(stored.digest) is None


def test_read_verified_refuses_a_flipped_byte(artifacts: ArtifactStore, tmp_path: Path) -> None:
    source = tmp_path / "w"
    source.write_bytes(bytes(range(256)))
    stored = artifacts.put(source)
    target = artifacts.path_for(stored.digest)
    target.chmod(0o644)
    target.write_bytes(bytes([1]) + bytes(range(1, 256)))
    with pytest.raises(IntegrityError, match="m:1/w is corrupt"):
        artifacts.read_verified(stored.digest, "m:1/w")


def test_malformed_digests_never_become_paths(artifacts: ArtifactStore) -> None:
    with pytest.raises(RegistryError, match="malformed"):
        artifacts.path_for("../../etc/passwd")


def test_an_unreadable_source_is_a_registry_error(artifacts: ArtifactStore, tmp_path: Path):
    with pytest.raises(RegistryError, match="cannot store"):
        artifacts.put(tmp_path / "missing")
    assert [t for _, t in artifacts.iter_files()] == []
