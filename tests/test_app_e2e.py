"""End to end: serve the app with `streamlit run`, drive it in headless Chromium (Debian's chromium via
Playwright's Python package; Playwright's own browsers are not used), launch a tiny run through the
form (two seeds), follow the Runs page (no reload) until both are done, open Compare with the two runs
and export a figure, and save screenshots under artifacts/.

Chromium missing: the test fails under CI (CI=true: .ci/run installs it) and is skipped elsewhere.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from data_fixtures import make_eurosat
from workbench.runs import Registry
from process_helpers import stop_process_group  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "app" / "main.py"
ARTIFACTS = REPO / "artifacts"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RUN_TIMEOUT_S = 300  # the launched run: process start, imports, 1 epoch on the tiny backbone, on a busy CPU


def _under_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _missing(reason: str):
    if _under_ci():
        pytest.fail(f"{reason} (CI=true: the end-to-end app test must run; .ci/run installs chromium with apt-get)")
    pytest.skip(reason)


def _chromium() -> str:
    path = os.environ.get("WORKBENCH_CHROMIUM", "/usr/bin/chromium")
    if not Path(path).exists():
        path = shutil.which("chromium") or shutil.which("chromium-browser") or ""
    if not path:
        _missing("headless Chromium not found at /usr/bin/chromium (apt-get install chromium)")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"streamlit exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=5) as r:
                if r.status == 200:
                    return
        time.sleep(0.5)
    raise AssertionError(f"streamlit did not become healthy in {timeout} s:\n{log.read_text()[-3000:]}")


def _kill_launched(registry_root: Path) -> None:
    """End the background runs this test launched (by the pids in their launch records), if still alive."""
    for record in (registry_root / "launches").glob("*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            pid = int(json.loads(record.read_text())["pid"])
            if b"workbench" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.killpg(pid, signal.SIGTERM)


@pytest.fixture
def served_app(tmp_path):
    data = tmp_path / "data"
    make_eurosat(data)
    runs = tmp_path / "runs"
    port = _free_port()
    log = tmp_path / "streamlit.log"
    env = {**os.environ, "WORKBENCH_RUNS": str(runs), "WORKBENCH_DATA": str(data), "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true",
             "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
             "--server.fileWatcherType", "none"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, log)
        yield url, runs, data, log
    finally:
        _kill_launched(runs)
        stop_process_group(proc)


def _settle(page, timeout_s: float = 120) -> None:
    """Wait until the app has rendered and its script is no longer running."""
    page.wait_for_selector("[data-testid='stApp']", timeout=timeout_s * 1000)
    page.wait_for_selector("h1", timeout=timeout_s * 1000)
    deadline = time.time() + timeout_s
    busy = "[data-testid='stStatusWidget'], [data-testid='stSkeleton']"
    while time.time() < deadline and page.locator(busy).count():
        time.sleep(0.3)


def test_launch_a_run_in_the_browser_and_watch_it_finish(served_app, tmp_path):
    chromium = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the Python package playwright is not installed (pip install -e '.[app]')")
    url, runs, data, server_log = served_app
    ARTIFACTS.mkdir(exist_ok=True)

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=chromium, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1300})  # the width the issue named
        try:
            page = context.new_page()
            page.set_default_timeout(120_000)
            page.goto(f"{url}/launch")
            _settle(page)
            assert page.locator("h1").first.inner_text().strip() == "Launch runs"

            # the form: method coop and protocol base_to_novel are the defaults
            datasets = page.get_by_test_id("stMultiSelect").filter(has_text="Dataset(s)")
            datasets.get_by_role("button", name="Clear all").click()  # drop the default toy_objects
            datasets.locator("input").fill("eurosat")
            datasets.locator("input").press("Enter")
            page.keyboard.press("Escape")
            page.get_by_test_id("stSelectbox").filter(has_text="Shots per class").click()
            page.get_by_role("option", name="2", exact=True).click()
            page.get_by_role("textbox", name="Backbone", exact=True).fill("wb-tiny-vit")
            page.get_by_role("textbox", name="Seeds", exact=True).fill("1 2")  # two runs, to compare
            page.get_by_test_id("stTextArea").locator("textarea").fill("train.epochs=1\ntrain.batch_size=4")
            assert page.get_by_role("textbox", name="Data root", exact=True).input_value() == str(data)  # from WORKBENCH_DATA
            page.get_by_role("button", name="Launch", exact=True).click()
            page.get_by_text("Started", exact=False).first.wait_for()
            page.screenshot(path=str(ARTIFACTS / "app_e2e_launch.png"))

            # the runs table, reached in-app (no reload): the runs appear and finish by themselves
            page.get_by_text("Follow it on the Runs page").click()
            page.locator("h1", has_text="Runs").wait_for()
            deadline = time.time() + RUN_TIMEOUT_S
            state = ""
            while time.time() < deadline:
                body = page.locator("[data-testid='stMain']").inner_text()
                if "2 done" in body:
                    state = "done"
                    break
                if "failed" in body and "run(s) shown" in body:
                    state = "failed"
                    break
                time.sleep(2)
            launch_logs = "\n".join(p.read_text()[-2000:] for p in (runs / "launches").glob("*.log"))
            assert state == "done", (f"run did not finish ({state or 'timeout'}); launch log:\n{launch_logs}\n"
                                     f"server log:\n{server_log.read_text()[-2000:]}")
            page.get_by_test_id("stDataFrame").first.wait_for()
            page.wait_for_timeout(1500)  # let the data grid paint
            shot = ARTIFACTS / "app_e2e_runs.png"
            page.screenshot(path=str(shot))
            print(f"\nscreenshot: {shot}")

            page.get_by_role("button", name="Open run detail").click()
            page.locator("h1", has_text="Run detail").wait_for()
            _settle(page)
            page.get_by_test_id("stPlotlyChart").first.wait_for()
            detail = ARTIFACTS / "app_e2e_run_detail.png"
            page.screenshot(path=str(detail), full_page=True)
            print(f"screenshot: {detail}")

            # Compare: the two seeds side by side, their curves, identical settings; export a figure
            page.goto(f"{url}/compare")
            _settle(page)
            page.get_by_test_id("stPlotlyChart").first.wait_for()
            main = page.locator("[data-testid='stMain']").inner_text()
            assert "Metrics" in main and "The resolved settings are identical" in main  # seeds differ only
            assert page.get_by_test_id("stDataFrame").count() >= 1  # the metrics table (a canvas grid)
            chart = page.get_by_test_id("stPlotlyChart").first
            chart.hover()
            with page.expect_download(timeout=60_000) as download:
                chart.locator(".modebar-btn[data-title^='Download plot']").first.click()
            assert download.value.suggested_filename.startswith("compare_")
            page.screenshot(path=str(ARTIFACTS / "app_e2e_compare.png"), full_page=True)
        finally:
            context.close()

    # what the browser started is exactly what the form said
    launched = sorted((Registry(runs).get(h) for h in Registry(runs).list()["hash"]), key=lambda r: r.spec.seed)
    assert [r.spec.seed for r in launched] == [1, 2]
    run = launched[0]
    spec = run.spec
    assert (spec.method, spec.protocol, spec.datasets, spec.shots, spec.seed, spec.backbone) == (
        "coop", "base_to_novel", ("eurosat",), 2, 1, "wb-tiny-vit")
    assert spec.settings == {"train.epochs": 1, "train.batch_size": 4} and run.status == "done"
    assert spec.train_config["epochs"] == 1 and spec.train_config["batch_size"] == 4  # applied
    assert list(Registry(runs).history(run)["epoch"]) == [0]
