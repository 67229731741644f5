"""The dashboard in headless Chromium (Playwright driving Debian's /usr/bin/chromium, never a
downloaded browser) against a real uvicorn on a free port: the overview draws the right number
of points for a known range, the grain switch works, a partial period is marked, a realtime tile
changes after track() + consume, the jobs page shows a failed run. Each page is screenshotted
into the test's tmp dir (and into METRICSMITH_SCREENSHOT_DIR when set, e.g. docs/images).

Without a chromium (``make browser`` installs it as root) the module is skipped, saying so."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import uvicorn
from test_api import TODAY, World, _job_rows

from metricsmith import grains
from metricsmith.api.app import create_app
from metricsmith.api.config import ApiSettings
from metricsmith.cache import TwoTierCache, load_cache_config
from metricsmith.config import load_settings
from metricsmith.query import MetricsQueryService
from metricsmith.realtime.stream import StreamConsumer, track

CHROMIUM = os.environ.get("METRICSMITH_CHROMIUM", "/usr/bin/chromium")
if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
    pytest.skip(f"no chromium at {CHROMIUM}: `make browser` installs Debian's chromium (as root), "
                "or point METRICSMITH_CHROMIUM at one", allow_module_level=True)

from playwright.sync_api import Browser, Page, sync_playwright  # noqa: E402

TIMEOUT_MS = 20_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(test_database: str) -> Iterator[tuple[str, World]]:
    with psycopg.connect(test_database, autocommit=True) as conn:
        world = World(conn).build()
        cache = TwoTierCache(config=load_cache_config())
        svc = MetricsQueryService(cache=cache, schema=world.schema, today=TODAY)
        app = create_app(query=svc, api_settings=ApiSettings(max_range_days=800))
        port = _free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
        srv = uvicorn.Server(config)
        thread = threading.Thread(target=srv.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not srv.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert srv.started, "uvicorn did not start"
        try:
            yield f"http://127.0.0.1:{port}", world
        finally:
            srv.should_exit = True
            thread.join(10)
            cache.close()
            world.drop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture()
def page(browser: Browser, server: tuple[str, World]) -> Iterator[Page]:
    _, world = server
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    context.add_init_script(f"sessionStorage.setItem('metricsmith_api_key', {world.keys['api_owner']!r});")
    p = context.new_page()
    p.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    yield p
    context.close()
    assert not errors, errors


def shot(page: Page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"dashboard-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    target = os.environ.get("METRICSMITH_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)
    return path


def points(page: Page, chart: str) -> tuple[int, int]:
    """(complete, partial) bars that plotly drew in ``chart`` (a partial one is orange)."""
    drawn: Any = page.evaluate(f"""() => {{ const t = document.getElementById('{chart}').data[0];
        const partial = t.marker.color.filter((c) => c === '#f0a330').length;
        return [t.x.length - partial, partial]; }}""")
    return int(drawn[0]), int(drawn[1])


def test_overview_points_grain_switch_and_partial_period(page: Page, server: tuple[str, World], tmp_path: Path) -> None:
    base, _ = server
    start, end = date(2024, 1, 1), date(2024, 3, 31)
    page.goto(f"{base}/#overview?grain=week&start={start}&end={end}")
    weeks = len(list(grains.get("week").periods_between(start, end)))
    page.wait_for_selector(f"#page-overview[data-ready='week:{weeks}']")
    assert points(page, "chart-total_events") == (weeks, 0)
    assert page.locator("#summary .tile").count() == 4
    growth = page.locator("#summary .tile .growth").first
    assert growth.get_attribute("data-basis") == "full" and "ᵗᵈ" not in (growth.text_content() or "")
    page.select_option("#grain", "month")
    page.wait_for_selector("#page-overview[data-ready='month:3']")
    assert points(page, "chart-revenue_cents") == (3, 0)
    page.fill("#start", "2024-09-01")
    page.fill("#end", str(TODAY))
    page.click("#apply-range")
    page.wait_for_selector("#page-overview[data-ready='month:4']")
    assert points(page, "chart-active_users") == (3, 1)  # December is still running: marked partial
    growth = page.locator("#summary .tile .growth").first  # so its growth is to date, and says so
    assert growth.get_attribute("data-basis") == "to_date"
    assert "%ᵗᵈ vs the" in (growth.text_content() or "") and "aligned days" in (growth.text_content() or "")
    assert page.get_attribute("#chart-active_users", "data-partial") == "1"
    assert page.locator(".legend .swatch.partial").is_visible()
    shot(page, tmp_path, "overview")


def test_custom_metrics_page(page: Page, server: tuple[str, World], tmp_path: Path) -> None:
    base, world = server
    page.goto(f"{base}/#custom")
    page.wait_for_selector("#page-custom[data-count]")
    assert int(page.get_attribute("#page-custom", "data-count") or 0) >= 4
    page.wait_for_function("() => document.getElementById('chart-custom').data !== undefined")
    page.select_option("#cm-dimension", "country")
    page.wait_for_function("() => document.getElementById('chart-custom').data.length === 3")
    shot(page, tmp_path, "custom")


def _events_tile(day: str) -> str:
    return f"metricsmith_events_total{{day={day}, event_type=page_view}}"


def test_realtime_tile_changes_after_track_and_consume(page: Page, server: tuple[str, World], tmp_path: Path) -> None:
    base, _ = server
    settings = load_settings()
    now = datetime.now(settings.tz)
    tile = f"#rt-tiles .tile[data-metric='{_events_tile(now.date().isoformat())}'] .value"
    track({"event_type": "page_view", "occurred_at": now.isoformat(), "user_id": "api-browser-user"})
    consumer = StreamConsumer(settings, name="api-browser-test", block_ms=100)
    try:
        consumer.run(until_idle=True)
        page.goto(f"{base}/#realtime")
        page.wait_for_selector(tile)
        before = float((page.text_content(tile) or "0").replace(",", ""))
        for _ in range(2):
            track({"event_type": "page_view", "occurred_at": datetime.now(settings.tz).isoformat(),
                   "user_id": "api-browser-user"})
        consumer.run(until_idle=True)
    finally:
        consumer.close()
    page.wait_for_function(
        "([sel, want]) => { const el = document.querySelector(sel);"
        " return el && Number(el.textContent.replace(/,/g, '')) === want; }", arg=[tile, before + 2])
    shot(page, tmp_path, "realtime")


def test_jobs_page_shows_the_failed_run(page: Page, server: tuple[str, World], tmp_path: Path) -> None:
    base, world = server
    _job_rows(world)
    page.goto(f"{base}/#jobs")
    page.wait_for_selector("#page-jobs[data-ready]")
    row = page.locator("#jobs-table tr[data-job='weekly-rollup']")
    assert row.locator("td.state-failing").text_content() == "failing"
    assert "boom 2" in (row.locator(".run-failed").first.text_content() or "")
    assert "boom 2" in (row.locator(".error").text_content() or "")
    shot(page, tmp_path, "jobs")


def test_no_key_shows_the_banner(browser: Browser, server: tuple[str, World]) -> None:
    base, _ = server
    context = browser.new_context()
    p = context.new_page()
    p.goto(f"{base}/#overview")
    p.wait_for_selector("#banner:not([hidden])", timeout=TIMEOUT_MS)
    assert "API key" in (p.text_content("#banner") or "")
    context.close()




def test_firing_alerts_show_on_every_page(page: Page, server: tuple[str, World], tmp_path: Path) -> None:
    from metricsmith.alerts.evaluate import evaluate
    from metricsmith.alerts.rules import parse_text

    base, world = server
    rules = ("channels:\n  quiet: {type: log}\nrules:\n"
             "  - {name: browser-always, kind: metric_threshold, grain: day, expr: total_events > -1,"
             " severity: critical, channels: [quiet]}\n")
    assert not evaluate(parse_text(rules), schema=world.schema, deliver=False).errors
    for where in ("overview", "jobs"):
        page.goto(f"{base}/#{where}")
        page.wait_for_selector("#alerts:not([hidden])")
        assert "FIRING browser-always (critical)" in page.inner_text("#alerts")
    shot(page, tmp_path, "alerts")
