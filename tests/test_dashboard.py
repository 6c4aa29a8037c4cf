"""The web dashboard in a real headless browser (Debian's chromium driven by
Playwright): the pages render, live figures change while jobs run, and a
dead letter is retried through the page. Screenshots of the main pages go to
``$TANDEM_SCREENSHOTS`` (default ``.make/screenshots``) for a person to look at."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import tandem
from harness import ROOT, Stack, debug_fail_params, eventually, sleep_params
from tandem._stack import free_port

pytestmark = [pytest.mark.timeout(240)]

CHROMIUM = os.environ.get("TANDEM_CHROMIUM", "/usr/bin/chromium")
SHOTS = Path(os.environ.get("TANDEM_SCREENSHOTS", str(ROOT / ".make" / "screenshots")))
# What the workplace's Chromium needs to start headless without reaching out.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    assert os.access(CHROMIUM, os.X_OK), (
        f"no chromium at {CHROMIUM}: make test installs it (apt chromium)"
    )
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _stack(new_stack: Callable[..., Stack]) -> tuple[Stack, str]:
    port = free_port()
    stack = new_stack(orchestrator_args=("--dashboard-listen", f"127.0.0.1:{port}"))
    return stack, f"http://127.0.0.1:{port}"


def test_dashboard_live_figures_job_page_and_dlq_retry(
    new_stack: Callable[..., Stack], browser: Any
) -> None:
    stack, base = _stack(new_stack)
    client = stack.client()
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    requests_elsewhere: list[str] = []
    page.on(
        "request", lambda r: None if r.url.startswith(base) else requests_elsewhere.append(r.url)
    )

    page.goto(base + "/")
    page.wait_for_selector('#queues tr[data-queue="default"]')
    depth = page.locator('#queues tr[data-queue="default"] .depth')
    before = depth.inner_text()

    # Live figures: queue work on the single-worker queue and watch the page change.
    slow = [tandem.Step("debug.sleep", sleep_params(client, 300))]
    handles = [client.submit(slow, f"live {i}".encode(), queue="single") for i in range(12)]
    single = page.locator('#queues tr[data-queue="single"] .depth')
    eventually(lambda: single.inner_text() not in ("", "0"), 30, "the depth on the page to rise")
    page.screenshot(path=str(SHOTS / "queues.png"), full_page=True)
    client.wait([h.id for h in handles], timeout=120)
    eventually(lambda: single.inner_text() == "0", 30, "the depth on the page to fall back to 0")
    svg_lines = page.locator('#charts figure[data-queue="single"] svg polyline')
    eventually(lambda: svg_lines.count() == 4, 30, "the chart to draw its four lines")
    assert before is not None

    # A job's page.
    done = handles[0].id
    page.goto(base + "/jobs/" + done)
    assert page.locator("#job-state").inner_text() == "SUCCEEDED"
    assert re.fullmatch(r"[0-9a-f]{32}", page.locator("#trace-id").inner_text())
    page.screenshot(path=str(SHOTS / "job.png"), full_page=True)

    # Search by state.
    page.goto(base + "/jobs?queue=single&state=succeeded")
    assert page.locator(f'#jobs a[href="/jobs/{done}"]').count() == 1
    page.screenshot(path=str(SHOTS / "jobs.png"), full_page=True)

    # A dead letter, retried with a click.
    fail = tandem.Step("debug.fail", debug_fail_params(client, "UNAVAILABLE", until_attempt=1))
    dead = client.submit(fail, b"dlq", max_attempts=1)
    with pytest.raises(tandem.JobFailed):
        dead.result(timeout=60)
    page.goto(base + "/queues/default/dlq")
    page.check(f'input[value="{dead.id}"]')
    page.screenshot(path=str(SHOTS / "dlq.png"), full_page=True)
    page.click("#retry-selected")
    page.wait_for_selector("#done")
    assert page.locator("#done").inner_text() == "retried 1"
    assert dead.result(timeout=60), "the retried job runs again and succeeds"
    assert not requests_elsewhere, f"the pages loaded from elsewhere: {requests_elsewhere}"


def test_dashboard_pause_and_resume_through_the_page(
    new_stack: Callable[..., Stack], browser: Any
) -> None:
    stack, base = _stack(new_stack)
    client = stack.client()
    page = browser.new_page()
    page.goto(base + "/")
    page.click('#queues tr[data-queue="default"] button.pause')
    page.wait_for_selector('#queues tr[data-queue="default"] button.resume')
    assert next(q for q in client.queues() if q.name == "default").paused
    page.click('#queues tr[data-queue="default"] button.resume')
    page.wait_for_selector('#queues tr[data-queue="default"] button.pause')
    assert not next(q for q in client.queues() if q.name == "default").paused
