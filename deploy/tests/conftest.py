"""Fixtures of the deploy checks (make test-deploy): no Docker engine needed."""

from __future__ import annotations

from typing import Any

import pytest

import _support as s


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    """docker-compose.yml as Compose sees it with an empty environment."""
    return s.load_compose()


@pytest.fixture(scope="session")
def svcs(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return s.services(compose)


@pytest.fixture(scope="session")
def readme() -> str:
    return s.DEPLOY_README.read_text()
