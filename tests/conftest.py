"""Shared fixtures. Every test that declares row classes gets a clean registry afterwards."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from modelrows import _schema as schema


@pytest.fixture(autouse=True)
def _isolated_registry() -> Iterator[None]:
    """Declarations made by a test vanish after it, so tests can reuse schema names."""
    saved = dict(schema._registry)
    yield
    schema._registry.clear()
    schema._registry.update(saved)


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)
