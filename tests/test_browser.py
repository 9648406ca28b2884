"""The Prefect UI in a real browser, as a user drives it: ``prefect server`` (the session's,
with its UI) and ``rtk-archiver serve`` against the simulator, headless Chromium (Debian's
``chromium``, driven by ``playwright``; no browser download).

- Deployments -> manual -> Run -> Custom run, one recording id, Submit: the run reaches
  Completed on its page, its ``rtk-archive-report`` artifact is listed, the file is archived.
- The manual form's Meeting Id and Destination are text boxes at once (no str/None toggle, no
  'Property is type "None"'), the destination's help shows its URL examples as text (no link
  to "ftp://..." cut out of "sftp://..."); a meeting id typed into its box and submitted: the
  run has it as its parameter, Completes, and the meeting's recording is archived.
- The same form in the V1 UI ("Switch to V1 UI"), which renders the help as Markdown: text
  boxes, the URL examples as code, no ftp:// link.
- The same with a recording whose destination cannot be written: the run ends Failed, and its
  report artifact is still listed; opened, its table shows the reason on screen at 1400 px and
  the destination the recording was going to.
- A poll started on the server: its own run page lists the report (no subflow).
- Deployments -> backfill -> Run -> Custom run: the parameters have readable titles
  ("Recordings per window", not ``recordings_per_window``); start and end picked in the date
  pickers, Submit: the backfill (one past day, no recordings) reaches Completed, and its
  Parameters tab shows the range picked.

The form steps and the outcome checks (state, artifacts) go through the UI only (roles, labels,
visible text); the archived file is checked on disk. A failing step leaves a full-page
screenshot in ``<tmp_path>/screenshots``, named in the failure message.

End-to-end and slow: about 90 s of CPU in all (the session server's start included; Chromium
a few s of it, the flow-run subprocesses most). Wall time measured with the 2 cores shared at
load 20-30: 140-250 s. The UI is Prefect 3.8.8's default ("V2", React); its create_flow_run
can answer 503 while the server's SQLite database is busy, and the form is then submitted
again, as a user would.
"""

from __future__ import annotations

import re
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.fixtures import wait_until
from tests.fixtures.prefect_server import running_serve

CHROMIUM = shutil.which("chromium")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(480),  # with the session server's start when this is its first user
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="Debian's chromium is not installed (scripts/install-system-deps.sh, run by `make test`, installs it)",
    ),
]

# A storage_config the archiver cannot write to (no credentials): the recording fails.
NO_CREDENTIALS = {"type": "sftp", "host": "127.0.0.1", "port": 1, "username": "u", "auth_method": "KEY"}
SERVE_ENV = {
    "PREFECT_RUNNER_POLL_FREQUENCY": "1",  # the runner asks for due runs every second (default 10)
    "ARCHIVE_POLL_INTERVAL_MINUTES": "1440",  # no scheduled poll archives our recordings meanwhile
}
FINAL = re.compile(r"^(Completed|Failed|Crashed|Cancelled|Cancelling)$")
RUN_TIMEOUT_S = 150
UI_TIMEOUT_MS = 60_000  # a page of the UI on 2 busy cores


class Steps:
    """Named steps; a failing one leaves a full-page screenshot and names it in the failure."""

    def __init__(self, page, shots: Path, serve) -> None:
        self.page, self.shots, self.serve, self.n = page, shots, serve, 0
        self.took: list[tuple[str, float]] = []
        self.trouble: list[str] = []  # what went wrong in the page: failed requests, API errors
        page.on("requestfailed", lambda r: "127.0.0.1" in r.url and self.trouble.append(f"{r.method} {r.url}: {r.failure}"))
        page.on("response", lambda r: r.status >= 400 and "/api/" in r.url and self.trouble.append(f"{r.request.method} {r.url}: {r.status}"))
        page.on("pageerror", lambda e: self.trouble.append(f"page error: {e}"))

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.n += 1
        started = time.monotonic()
        try:
            yield
            self.took.append((name, time.monotonic() - started))
        except Exception as exc:
            self.shots.mkdir(parents=True, exist_ok=True)
            shot = self.shots / f"{self.n:02d}-{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}.png"
            try:
                self.page.screenshot(path=str(shot), full_page=True)
            except Exception as shot_error:  # the browser itself is gone
                shot = f"(no screenshot: {shot_error})"
            took = ", ".join(f"{n} {t:.1f} s" for n, t in self.took)
            raise AssertionError(
                f"step {self.n} '{name}' failed after {time.monotonic() - started:.1f} s: {type(exc).__name__}: {exc}\n"
                f"(steps before: {took})\n"
                f"screenshot: {shot}\npage: {self.page.url}\n"
                f"in the page: {chr(10).join(self.trouble[-10:]) or 'no failed request'}\n"
                f"--- rtk-archiver serve log (tail) ---\n{self.serve.log_text()[-3000:]}"
            ) from exc


def _group(page, label: re.Pattern):
    """The innermost form group of the field whose label matches (the form nests groups)."""
    return page.locator("div.group").filter(has=page.get_by_text(label)).last


def _follow(page, link, url: re.Pattern) -> None:
    """Click a link in a list that the UI re-renders while it polls the server (the Runs and
    Deployments lists: a new run's row moves the others, activity bars redraw): a click that
    lands while the rows move opens nothing. Click again until the link's page opens, up to 3
    times, as a user would. (Seen in full test runs: the click on a run's row, and on a
    deployment's, left the list on screen.)"""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    before = page.url  # (a page of the same kind may be open already: wait for another one)
    for attempt in range(3):
        link.click()
        try:
            page.wait_for_url(lambda now: now != before and url.search(now) is not None, timeout=UI_TIMEOUT_MS // 3)
            return
        except PlaywrightTimeout:
            if attempt == 2:
                raise


def _open_custom_run(page, deployment: str) -> None:
    page.get_by_role("link", name="Deployments", exact=True).first.click()
    _follow(page, page.get_by_role("link", name=deployment, exact=True), re.compile(r"/deployments/deployment/[0-9a-f-]{36}"))
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Custom run").click()


def _submit(page, run_name: str) -> dict:
    """Name the run, submit the form; the UI goes back to the deployment's page once the
    server has created the run. A 503 (the server's SQLite database busy, on a loaded machine)
    leaves the form as it was, with an error toast: submit again, as a user would. Returns the
    parameters the form sent."""
    page.get_by_label("Run Name").fill(run_name)
    for _ in range(5):
        with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/create_flow_run")) as answer:
            page.get_by_role("button", name="Submit").click()
        if answer.value.status != 503:
            break
        time.sleep(1)
    assert answer.value.status == 201, f"the server answered {answer.value.status} to the form: {answer.value.text()}"
    page.wait_for_url(re.compile(r"/deployments/deployment/[0-9a-f-]{36}(\?|$)"))
    return answer.value.request.post_data_json["parameters"]


def _open_run(page, run_name: str):
    """Runs -> the run, by its name; the state badge in the run page's header."""
    from playwright.sync_api import expect

    page.get_by_role("link", name="Runs", exact=True).first.click()
    _follow(page, page.get_by_role("link", name=run_name, exact=True), re.compile(r"/runs/flow-run/[0-9a-f-]{36}"))
    # the run's own page (the list's rows have breadcrumbs and state badges too): its tabs
    expect(page.get_by_role("tab", name="Artifacts")).to_be_visible(timeout=UI_TIMEOUT_MS)
    title = page.get_by_role("navigation", name="breadcrumb").filter(has=page.get_by_text(run_name, exact=True))
    return page.locator("div").filter(has=title).last.get_by_text(FINAL)


def _assert_text_box(group) -> None:
    """The field of ``group`` is a text box at once: no str/None toggle to switch first (V2:
    tabs; V1: a button group), no 'Property is type "None"'."""
    from playwright.sync_api import expect

    expect(group.get_by_role("textbox")).to_be_visible(timeout=UI_TIMEOUT_MS)
    expect(group.get_by_role("textbox")).to_be_editable()
    expect(group.get_by_role("tab")).to_have_count(0)
    expect(group.get_by_role("button", name=re.compile(r"^(str|None)$"))).to_have_count(0)
    expect(group.get_by_text('Property is type "None"')).to_have_count(0)


def _assert_url_examples_are_text(page, group) -> None:
    """The destination's help shows ``sftp://user@host:port/path`` as text; nothing on the page
    links to "ftp://..." (Markdown's autolink cut it out of "sftp://...": "s" and a link)."""
    from playwright.sync_api import expect

    expect(group.get_by_text(re.compile(r"sftp://user@host:port/path")).first).to_be_visible(timeout=UI_TIMEOUT_MS)
    expect(page.locator('a[href^="ftp://"], a[href^="ftp:"]')).to_have_count(0)


def _switch_ui(page, to: str) -> None:
    """The sidebar's "Switch to V1 UI" / "Switch to V2 UI", as a user does (the V2 UI asks why
    first: no feedback given)."""
    page.get_by_text(f"Switch to {to} UI", exact=True).click()
    if to == "V1":
        page.get_by_role("button", name="Skip feedback and switch").click()
        page.wait_for_url(lambda url: "/v2/" not in url)
    else:
        page.wait_for_url(re.compile(r"/v2/"))


def _pick_date(page, label: re.Pattern, day: datetime) -> None:
    """Pick midnight (UTC) of ``day`` in a date-time parameter's picker."""
    from playwright.sync_api import expect

    field = _group(page, label)
    field.get_by_role("button").filter(has_text=re.compile(r"MM/DD/YYYY|\d\d/\d\d/\d{4}")).click()
    picker = page.get_by_role("dialog")
    day_button = picker.get_by_role("button", name=re.compile(rf"{day:%B} {day.day}\w\w, {day:%Y}$"))
    for _ in range(3):  # the picker opens on this month
        if day_button.count():
            break
        picker.get_by_role("button", name="Go to the Previous Month").click()
    day_button.click()
    page.keyboard.press("Escape")
    expect(field.get_by_text(f"{day:%m/%d/%Y} 12:00 AM")).to_be_visible(timeout=UI_TIMEOUT_MS)
    expect(field.get_by_role("button", name="Select timezone")).to_contain_text("UTC", timeout=UI_TIMEOUT_MS)


def _final_state(page, run_name: str, timeout: float) -> str:
    """The state the run's page shows once the run is over."""
    badge = _open_run(page, run_name)
    deadline = time.monotonic() + timeout
    while True:
        try:
            badge.wait_for(state="visible", timeout=30_000)  # the page follows the run's state
            return badge.inner_text()
        except Exception:
            if time.monotonic() > deadline:
                raise AssertionError(f"{run_name} did not end within {timeout:.0f} s") from None
            print(f"reloading the page of {run_name}")
            page.reload()  # in case the page stopped following the run


def _artifacts(page) -> None:
    page.get_by_role("tab", name="Artifacts").click()


def test_manual_and_backfill_runs_from_the_prefect_ui(prefect_server, archiver_env, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    sim = archiver_env
    good = sim.state.add_recording(file_size=50_000)
    bad = sim.state.add_recording(file_size=1_000, storage_config=NO_CREDENTIALS)
    # the session's server is shared: our runs by unique names
    tag = uuid.uuid4().hex[:8]
    good_run, bad_run, backfill_run = f"browser-ok-{tag}", f"browser-failing-{tag}", f"browser-backfill-{tag}"
    meeting, meeting_run = f"meeting-{tag}", f"browser-meeting-{tag}"
    of_meeting = sim.state.add_recording(file_size=30_000, meeting_id=meeting)
    day = (datetime.now(timezone.utc) - timedelta(days=3)).replace(hour=0, minute=0, second=0, microsecond=0)

    with running_serve(prefect_server.api_url, cwd=tmp_path, env=SERVE_ENV) as serve, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000}, timezone_id="UTC")
            context.set_default_timeout(UI_TIMEOUT_MS)
            # nothing leaves the machine (the UI asks an analytics service for its config)
            context.route(re.compile(r"^(?!https?://127\.0\.0\.1[:/])"), lambda route: route.abort())
            page = context.new_page()
            step = Steps(page, tmp_path / "screenshots", serve)

            with step("open the UI"):  # while serve starts
                page.goto(prefect_server.api_url.removesuffix("/api") + "/")
                expect(page.get_by_role("link", name="Deployments", exact=True).first).to_be_visible(timeout=UI_TIMEOUT_MS)

            with step("serve registers the deployments"):
                wait_until(lambda: "rtk-archiver serve: serving" in serve.log_text() or serve.proc.poll() is not None,
                           90, "serve to register its deployments")
                assert serve.proc.poll() is None, f"serve exited with {serve.proc.returncode}"

            with step("manual custom run: one recording id"):
                _open_custom_run(page, "manual")
                ids = _group(page, re.compile(r"^Recording Ids"))
                ids.get_by_role("button", name="Add item").click()
                ids.get_by_role("textbox").fill(good["id"])
                _submit(page, good_run)

            with step("manual custom run: Meeting Id and Destination are text boxes, a meeting id typed in"):
                _open_custom_run(page, "manual")
                meeting_field, destination = _group(page, re.compile(r"^Meeting Id")), _group(page, re.compile(r"^Destination"))
                _assert_text_box(meeting_field)
                _assert_text_box(destination)
                expect(page.get_by_text('Property is type "None"')).to_have_count(0)
                _assert_url_examples_are_text(page, destination)
                meeting_field.get_by_role("textbox").fill(meeting)
                sent = _submit(page, meeting_run)
                assert sent["request"].get("meeting_id") == meeting, sent
                assert not sent["request"].get("destination"), sent  # the empty box: not given

            with step("the V1 UI: the same text boxes, the URL examples as code"):
                _open_custom_run(page, "manual")
                _switch_ui(page, "V1")
                expect(page.get_by_role("button", name="Submit")).to_be_visible(timeout=UI_TIMEOUT_MS)

                def v1_field(label: str):  # the innermost property of the V1 form with this label
                    return page.locator(".schema-form-property").filter(has=page.get_by_text(re.compile(rf"^{label}"))).last

                _assert_text_box(v1_field("Meeting Id"))
                _assert_text_box(v1_field("Destination"))
                expect(page.get_by_text('Property is type "None"')).to_have_count(0)
                _assert_url_examples_are_text(page, v1_field("Destination"))
                expect(v1_field("Destination").locator("code").filter(has_text="sftp://user@host:port/path")).to_have_count(1)
                _switch_ui(page, "V2")

            with step("manual custom run: a recording that fails"):
                _open_custom_run(page, "manual")
                ids = _group(page, re.compile(r"^Recording Ids"))
                ids.get_by_role("button", name="Add item").click()
                ids.get_by_role("textbox").fill(bad["id"])
                _submit(page, bad_run)

            with step("backfill custom run: readable titles, start and end"):
                _open_custom_run(page, "backfill")
                for title in ("Start of the range", "End of the range", "Recordings per window", "Child runs at once",
                              "Longest window (hours)", "Destination", "Dry run"):
                    expect(page.get_by_text(re.compile(rf"^{re.escape(title)}( \(Optional\))?$"))).to_be_visible(timeout=UI_TIMEOUT_MS)
                for name in ("recordings_per_window", "dry_run", "window_hours", "parallelism"):
                    expect(page.get_by_text(name, exact=True)).to_have_count(0)
                expect(page.get_by_text(re.compile("recordings_per_window|a backfill of no more runs"))).to_have_count(0)
                _assert_text_box(_group(page, re.compile(r"^Destination")))
                _pick_date(page, re.compile(r"^Start of the range$"), day)
                _pick_date(page, re.compile(r"^End of the range$"), day + timedelta(days=1))
                _submit(page, backfill_run)

            with step("the manual run completes and lists its report"):
                assert _final_state(page, good_run, RUN_TIMEOUT_S) == "Completed"
                _artifacts(page)
                expect(page.get_by_text("rtk-archive-report", exact=True)).to_be_visible(timeout=UI_TIMEOUT_MS)

            with step("the recording is archived"):
                archived = list(sim.archive.rglob(good["output_file_name"]))
                assert len(archived) == 1, f"{good['output_file_name']} not archived once under {sim.archive}: {archived}"
                assert archived[0].stat().st_size == 50_000
                assert list(sim.archive.rglob(good["output_file_name"] + ".metadata.json"))

            with step("the run of the meeting completes, with the meeting id typed, and archives its recording"):
                assert _final_state(page, meeting_run, RUN_TIMEOUT_S) == "Completed"
                page.get_by_role("tab", name="Parameters").click()
                expect(page.get_by_text(re.compile(rf'"meeting_id": "{meeting}"')).first).to_be_visible(timeout=UI_TIMEOUT_MS)
                archived = list(sim.archive.rglob(of_meeting["output_file_name"]))
                assert len(archived) == 1 and archived[0].stat().st_size == 30_000, archived

            with step("the manual run of the failing recording fails and lists its report"):
                assert _final_state(page, bad_run, RUN_TIMEOUT_S) == "Failed"
                _artifacts(page)
                expect(page.get_by_text("rtk-archive-report", exact=True)).to_be_visible(timeout=UI_TIMEOUT_MS)

            with step("its report shows the reason on screen at 1400 px, and where the recording was going"):
                _follow(page, page.get_by_text("rtk-archive-report", exact=True).first, re.compile(r"/artifacts/"))
                # the key's timeline, newest first: this run's (its card names the run), then its table
                card = page.locator("div").filter(has=page.get_by_role("link", name=bad_run, exact=True)).filter(
                    has=page.get_by_role("link", name=re.compile(r"^[0-9a-f]{8}$"))).last
                _follow(page, card.get_by_role("link", name=re.compile(r"^[0-9a-f]{8}$")).first,
                        re.compile(r"/artifacts/artifact/[0-9a-f-]{36}"))
                reason = page.get_by_role("cell").filter(has_text=re.compile(r"SFTP")).first
                expect(reason).to_be_visible(timeout=UI_TIMEOUT_MS)
                def box():
                    try:
                        return reason.bounding_box()  # None while the table re-renders
                    except Exception:  # noqa: BLE001 - detached meanwhile: ask again
                        return None

                found = wait_until(box, 30, "the reason cell to be laid out", interval=0.5)
                assert found["x"] + min(found["width"], 200) <= 1400, f"the reason is off-screen: {found}"
                expect(page.get_by_role("cell").filter(has_text=re.compile(r"^sftp://u@127\.0\.0\.1:1/"))).to_have_count(1)

            with step("the backfill completes, over the range picked"):
                assert _final_state(page, backfill_run, RUN_TIMEOUT_S) == "Completed"
                page.get_by_role("tab", name="Parameters").click()
                for name, when in (("start", day), ("end", day + timedelta(days=1))):
                    shown = re.compile(rf'"{name}": "{when:%Y-%m-%d}T00:00:00(Z|\+00:00)"')
                    expect(page.get_by_text(shown)).to_be_visible(timeout=UI_TIMEOUT_MS)
            with step("a poll: one run in the list, and its own page has the report"):
                sim.state.add_recording(file_size=20_000, stopped_time=datetime.now(timezone.utc) - timedelta(minutes=1))
                poll = prefect_server.request("GET", "/deployments/name/poll-recordings/scheduled-poll").json()["id"]
                run = prefect_server.request("POST", f"/deployments/{poll}/create_flow_run",
                                             json={"name": f"browser-poll-{tag}", "parameters": {}}).json()
                state = _final_state(page, f"browser-poll-{tag}", RUN_TIMEOUT_S)
                assert state in ("Completed", "Failed"), state  # Failed: the failing recording may be in its window
                _artifacts(page)
                expect(page.get_by_text("rtk-archive-report", exact=True)).to_be_visible(timeout=UI_TIMEOUT_MS)
                children = prefect_server.request("POST", "/flow_runs/filter", json={
                    "flow_runs": {"parent_flow_run_id": {"any_": [run["id"]]}}}).json()
                assert children == [], [c["name"] for c in children]  # no archive-recordings subflow
            print("\n".join(f"{took:6.1f} s  {name}" for name, took in step.took))
        finally:
            browser.close()
