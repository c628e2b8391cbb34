"""Test-wide settings: loopback-only networking for distributed tests, and no files left in the repository."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# Anything that opens sockets (gloo, torchrun) stays on loopback.
os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")

# Two OpenMP threads on a shared 2-core machine made training tests 4-10x slower: one thread per test process.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


def _untracked() -> set[str]:
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return set()
    return {line[3:] for line in out.splitlines() if line.startswith("??")}


@pytest.fixture(scope="session", autouse=True)
def _private_table_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The suite's latency tables go to a cache of its own, never the user's (~/.cache/hwdsa)."""
    before = os.environ.get("HWDSA_CACHE")
    os.environ["HWDSA_CACHE"] = str(tmp_path_factory.mktemp("hwdsa-cache"))
    yield
    if before is None:
        os.environ.pop("HWDSA_CACHE", None)
    else:
        os.environ["HWDSA_CACHE"] = before


@pytest.fixture(scope="session", autouse=True)
def _no_artefacts_left_in_repo() -> Iterator[None]:
    """Tests write under tmp_path only (Lightning Fabric's check): fail if the suite leaves files behind."""
    before = _untracked()
    yield
    left = sorted(_untracked() - before)
    assert not left, f"tests left files in the repository: {left[:10]}"
