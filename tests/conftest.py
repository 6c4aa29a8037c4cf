"""Fixtures of the integration suite.

``stack``: one shared stack for tests that do not kill anything.
``new_stack``: a factory for a private stack (fault tests), stopped after the
test. On failure every active stack's process logs are attached to the report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import tandem
from harness import Stack, make_stack

_ACTIVE: list[Stack] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    outcome: Any = yield
    report = outcome.get_result()
    if report.failed:
        for stack in list(_ACTIVE):
            for title, text in stack.logs():
                report.sections.append((f"log {title}", text or "(empty)"))


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = make_stack(tmp_path_factory.mktemp("shared"), name="shared")
    _ACTIVE.append(s)
    try:
        s.start()
        yield s
    finally:
        s.stop()
        _ACTIVE.remove(s)


@pytest.fixture
def client(stack: Stack) -> tandem.Client:
    return stack.client()


@pytest.fixture
def new_stack(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    made: list[Stack] = []

    def factory(**kwargs: Any) -> Stack:
        s = make_stack(tmp_path / f"stack{len(made)}", name=f"stack{len(made)}", **kwargs)
        s.require_process_control()
        made.append(s)
        _ACTIVE.append(s)
        s.start()
        return s

    try:
        yield factory
    finally:
        for s in made:
            s.stop()
            _ACTIVE.remove(s)
