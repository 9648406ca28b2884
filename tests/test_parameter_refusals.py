"""Bad parameters are refused by a real ``prefect server`` (409) before any run exists.

Every deployment of ``deployments.specs`` is registered (under a unique name) on the session's
``prefect server``; each case asks it for a run with ``create_flow_run_from_deployment`` and
expects: 409, a short message saying what is expected (never the refused value: not a
password, not a 5,000-id list), and no flow run. Afterwards no refused secret is anywhere in
the server's SQLite files or its log. Valid values (the forms the README shows, the UI's
date-times) are still accepted. The rules live in ``flows/parameters.py``.

Fast: one shared server (~20 s to start, shared with the other server tests), then ~0.1 s a case.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.exceptions import PrefectHTTPStatusError
from prefect.settings import PREFECT_API_URL, temporary_settings

from deployments import load_flow, specs
from rtk_archiver.settings import Settings
from tests.fixtures.prefect_server import PrefectServer

MANUAL, POLL, BACKFILL = "archive-manual/manual", "poll-recordings/scheduled-poll", "backfill-recordings/backfill"
WINDOW, VERIFY, CHECK = "archive-recordings/archive-window", "verify-archive/weekly-verify", "check-destinations/check-destinations"

PASSWORD = "a destination URL without a password"
WHERE_CREDENTIALS_GO = "SFTP_PASSWORD"
DESTINATION = "a destination URL such as `file:///path`"
CONTROL = "without control characters"
TOO_LONG = "of at most 2,048 characters"
BAD_ID = "an id of 1 to 64 letters"
EMPTY = "recording_ids, a meeting_id, or both"
DATETIME = "an ISO 8601 date or date-time"


def _secret() -> str:
    return f"Sekr1t{uuid.uuid4().hex}"


@dataclass
class Case:
    deployment: str
    parameters: dict
    expected: str
    secret: str | None = None  # a value that must be stored and echoed nowhere
    echo: list[str] = field(default_factory=list)  # other parts of the value the answer must not repeat


def manual(**request) -> dict:
    return {"request": {"recording_ids": ["rec-1"], **request}}


def _secret_cases() -> dict[str, Case]:
    cases = {}

    def add(name: str, deployment: str, make, expected: str = PASSWORD) -> None:
        s = _secret()
        cases[name] = Case(deployment, make(s), expected, secret=s)

    add("manual-sftp-password", MANUAL, lambda s: manual(destination=f"sftp://archiver:{s}@sftp.example.com/~/rec"))
    add("manual-s3-key-and-secret", MANUAL, lambda s: manual(destination=f"s3://AKIAEXAMPLE:{s}@bucket/prefix"))
    add("manual-percent-encoded-colon", MANUAL, lambda s: manual(destination=f"sftp://archiver%3A{s}@sftp.example.com/x"))
    add("manual-percent-encoded-lowercase", MANUAL, lambda s: manual(destination=f"sftp://archiver%3a{s}@h/x"))
    add("manual-password-user-with-at", MANUAL, lambda s: manual(destination=f"sftp://me@corp:{s}@h:2222/x"))
    add("manual-gcs-password", MANUAL, lambda s: manual(destination=f"gs://user:{s}@bucket/p"))
    add("manual-file-password", MANUAL, lambda s: manual(destination=f"file://u:{s}@localhost/tmp"))
    add("manual-unknown-scheme-password", MANUAL, lambda s: manual(destination=f"ftp://u:{s}@host/x"))
    add("manual-password-and-no-ids", MANUAL, lambda s: {"request": {"destination": f"sftp://u:{s}@h/x"}}, EMPTY)
    add("manual-password-and-5000-ids", MANUAL,
        lambda s: {"request": {"recording_ids": [f"r{i}" for i in range(5000)], "destination": f"sftp://u:{s}@h/x"}},
        "at most 1,000 recording ids")
    add("manual-secret-in-query", MANUAL, lambda s: manual(destination=f"s3://bucket/p?aws_secret_access_key={s}"),
        DESTINATION)
    add("manual-secret-as-unknown-key", MANUAL, lambda s: manual(password=s), "Additional properties are not allowed")
    add("manual-secret-with-newline", MANUAL, lambda s: manual(destination=f"sftp://u@h/x\n{s}"), CONTROL)
    add("poll-password", POLL, lambda s: {"overlap_minutes": 30, "destination": f"sftp://u:{s}@h/x"})
    add("window-password", WINDOW, lambda s: {"destination": f"s3://k:{s}@bucket/p"})
    add("backfill-password", BACKFILL,
        lambda s: {"start": "2026-01-01", "end": "2026-01-02", "destination": f"sftp://u:{s}@h/x"})
    add("check-password", CHECK, lambda s: {"destination": f"az://acct:{s}@container/p"})
    add("verify-password-in-list", VERIFY,
        lambda s: {"destinations": ["file:///srv/archive", f"sftp://u:{s}@h/x"]})
    add("verify-password-in-long-list", VERIFY,
        lambda s: {"destinations": [f"sftp://u:{s}@h/x"] * 101}, "at most 100 destinations")
    return cases


SECRET_CASES = _secret_cases()

CASES: dict[str, Case] = {
    **SECRET_CASES,
    # an empty manual request
    "manual-empty": Case(MANUAL, {"request": {}}, EMPTY),
    "manual-empty-lists": Case(MANUAL, {"request": {"recording_ids": [], "meeting_id": None}}, EMPTY),
    "manual-ui-form-empty": Case(MANUAL, {"request": {"recording_ids": [], "meeting_id": None, "destination": None,
                                                      "dry_run": False}}, EMPTY),
    # a blank meeting id is not given: the request is still empty
    "manual-blank-meeting-id": Case(MANUAL, {"request": {"recording_ids": [], "meeting_id": "  ", "destination": ""}}, EMPTY),
    # too many ids: said in a line, not echoed
    "manual-5000-ids": Case(MANUAL, {"request": {"recording_ids": [f"id-{i:05d}" for i in range(5000)]}},
                            "at most 1,000 recording ids", echo=["id-00000", "id-04999"]),
    "manual-1001-ids": Case(MANUAL, {"request": {"recording_ids": [f"id-{i}" for i in range(1001)]}},
                            "at most 1,000 recording ids", echo=["id-1000"]),
    # bad ids
    "manual-id-path": Case(MANUAL, {"request": {"recording_ids": ["ok-1", "../etc/passwd"]}}, BAD_ID),
    "manual-id-empty": Case(MANUAL, {"request": {"recording_ids": [""]}}, BAD_ID),
    "manual-id-65-chars": Case(MANUAL, {"request": {"recording_ids": ["a" * 65]}}, BAD_ID),
    "manual-id-very-long": Case(MANUAL, {"request": {"recording_ids": ["b" * 200_000]}}, BAD_ID, echo=["b" * 100]),
    "manual-id-newline": Case(MANUAL, {"request": {"recording_ids": ["abc\ndef"]}}, BAD_ID),
    "manual-id-unicode": Case(MANUAL, {"request": {"recording_ids": ["rec\u00e9"]}}, BAD_ID),
    "manual-meeting-id": Case(MANUAL, {"request": {"meeting_id": "meeting/../x"}}, BAD_ID),
    "manual-meeting-id-very-long": Case(MANUAL, {"request": {"meeting_id": "m" * 100_000}}, BAD_ID, echo=["m" * 100]),
    "manual-meeting-id-padded": Case(MANUAL, {"request": {"meeting_id": " meeting-1"}}, BAD_ID),  # not trimmed
    # destinations the archiver cannot use
    "unknown-scheme-ftp": Case(MANUAL, manual(destination="ftp://host/x"), DESTINATION),
    "unknown-scheme-https": Case(POLL, {"destination": "https://example.com/archive"}, DESTINATION),
    "no-scheme": Case(WINDOW, {"destination": "/srv/archive"}, DESTINATION),
    "uppercase-not-a-url": Case(CHECK, {"destination": "S3 bucket please"}, DESTINATION),
    "s3-user-without-password": Case(MANUAL, manual(destination="s3://AKIAEXAMPLE@bucket/p"), DESTINATION),
    "s3-port": Case(MANUAL, manual(destination="s3://bucket:9000/p"), DESTINATION),
    "s3-unknown-option": Case(MANUAL, manual(destination="s3://bucket/p?region=eu-west-1"), DESTINATION),
    "s3-empty-option": Case(MANUAL, manual(destination="s3://bucket/p?storage_class="), DESTINATION),
    "file-option": Case(MANUAL, manual(destination="file:///srv/a?sse=AES256"), DESTINATION),
    "file-host": Case(MANUAL, manual(destination="file://otherhost/srv/a"), DESTINATION),
    "fragment": Case(MANUAL, manual(destination="s3://bucket/p#frag"), DESTINATION),
    "dot-dot": Case(MANUAL, manual(destination="file:///srv/archive/../etc"), DESTINATION),
    "dot-dot-encoded": Case(MANUAL, manual(destination="s3://bucket/a/%2e%2E/b"), DESTINATION),
    "sftp-no-user": Case(MANUAL, manual(destination="sftp://host/x"), DESTINATION),
    "sftp-port-0": Case(MANUAL, manual(destination="sftp://u@host:0/x"), DESTINATION),
    "sftp-port-70000": Case(MANUAL, manual(destination="sftp://u@host:70000/x"), DESTINATION),
    "sftp-query": Case(MANUAL, manual(destination="sftp://u@host/x?sse=AES256"), DESTINATION),
    "control-newline": Case(MANUAL, manual(destination="file:///srv/a\nb"), CONTROL),
    "control-nul": Case(POLL, {"destination": "file:///srv/a\u0000"}, CONTROL),
    "control-c1": Case(WINDOW, {"destination": "file:///srv/a\u0085b"}, CONTROL),
    "very-long-destination": Case(MANUAL, manual(destination="file:///" + "d" * 100_000), TOO_LONG, echo=["d" * 100]),
    "verify-bad-scheme-in-list": Case(VERIFY, {"destinations": ["ftp://x/y"]}, DESTINATION),
    "verify-101-destinations": Case(VERIFY, {"destinations": [f"file:///srv/a{i}" for i in range(101)]},
                                    "at most 100 destinations", echo=["/srv/a100"]),
    # times that are not times
    "window-since-words": Case(WINDOW, {"since": "yesterday"}, DATETIME),
    "check-until-words": Case(CHECK, {"until": "next week"}, DATETIME),
    # numbers out of range (refused on main already; kept so they stay refused)
    "poll-negative-overlap": Case(POLL, {"overlap_minutes": -5}, "less than the minimum of 0"),
    "backfill-negative-window": Case(BACKFILL, {"start": "2026-01-01", "end": "2026-01-02", "window_hours": -1},
                                     "less than or equal to the minimum of 0"),
    "backfill-zero-parallelism": Case(BACKFILL, {"start": "2026-01-01", "end": "2026-01-02", "parallelism": 0},
                                      "less than the minimum of 1"),
}

# Values the rules must still accept (the README's forms, the UI's values).
ACCEPTED: dict[str, tuple[str, dict]] = {
    "manual-ids": (MANUAL, {"request": {"recording_ids": ["bbb3ee4b-4e6b-4e5f-9e0e-8ee1c4a3b5f1", "rec_2"]}}),
    "manual-1000-ids": (MANUAL, {"request": {"recording_ids": [f"id-{i}" for i in range(1000)]}}),
    "manual-meeting": (MANUAL, {"request": {"meeting_id": "meeting-1", "recording_ids": []}}),
    # what the forms send: V2 leaves out an empty text box, V1 sends its default ("") or leaves
    # it out; null, as the former str/None toggle sent, is still valid in the request
    "manual-ui-form": (MANUAL, {"request": {"recording_ids": ["r1"], "meeting_id": None, "destination": None, "dry_run": True}}),
    "manual-ui-form-v2": (MANUAL, {"request": {"recording_ids": ["r1"], "dry_run": False}}),
    "manual-blank-texts": (MANUAL, {"request": {"recording_ids": ["r1"], "meeting_id": "", "destination": "  "}}),
    "manual-meeting-and-blank-destination": (MANUAL, {"request": {"meeting_id": "meeting-1", "destination": ""}}),
    "manual-file": (MANUAL, manual(destination="file:///srv/rtk archive/2026")),
    "manual-file-localhost": (MANUAL, manual(destination="file://localhost/srv/archive")),
    "manual-s3-options": (MANUAL, manual(destination="s3://my-bucket/rec/2026?storage_class=STANDARD_IA&sse=aws:kms&kms_key_id=arn:aws:kms:eu-west-1:1:key/x")),
    "manual-gs": (MANUAL, manual(destination="gs://bucket")),
    "manual-gcs-option": (MANUAL, manual(destination="gcs://bucket/p?storage_class=NEARLINE")),
    "manual-az": (MANUAL, manual(destination="az://container/p?access_tier=Cool")),
    "manual-sftp": (MANUAL, manual(destination="sftp://archiver@sftp.example.com:2222/~/recordings")),
    "manual-sftp-ipv6": (MANUAL, manual(destination="sftp://archiver@[::1]:22/srv/rec")),
    "manual-sftp-email-user": (MANUAL, manual(destination="sftp://me%40corp.example@h/x")),
    # a flow's own text parameter has the default "" in the schema: the server takes a string
    # (blank: not given) and no null for it
    "poll": (POLL, {"overlap_minutes": 0, "destination": ""}),
    "poll-blank-destination": (POLL, {"destination": " "}),
    "window-blank-destination": (WINDOW, {"destination": ""}),
    "backfill-blank-destination": (BACKFILL, {"start": "2026-01-01", "end": "2026-01-02", "destination": ""}),
    "check-blank-destination": (CHECK, {"destination": "   "}),
    "verify-empty-list": (VERIFY, {"destinations": []}),
    "window-dates": (WINDOW, {"since": "2026-01-31", "until": "2026-02-01T12:00:00.123456+02:00", "dry_run": True}),
    "window-ui-datetime": (WINDOW, {"since": "2026-01-31T10:00:00.000Z", "until": "2026-01-31T11:00:00Z"}),
    "backfill": (BACKFILL, {"start": "2026-01-01T00:00:00Z", "end": "2026-01-02", "window_hours": 6, "parallelism": 2,
                            "destination": "s3://bucket/p"}),
    "verify": (VERIFY, {"destinations": ["file:///srv/archive", "sftp://u@h/x"], "deep": True}),
    "verify-default": (VERIFY, {}),
    "check": (CHECK, {"since": "2026-01-01", "destination": "gs://bucket/p", "include_recordings": False}),
}


@dataclass
class Deployed:
    server: PrefectServer
    client: SyncPrefectClient  # one client for the module (a new one per request costs ~1 s)
    ids: dict[str, str]  # full name -> deployment id (a run an accepted case creates is deleted at once)

    def runs(self, deployment_id: str) -> int:
        return len(self.client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))))

    def ask(self, deployment_id: str, parameters: dict) -> tuple[int, str]:
        """Ask for a run: (409, the server's answer) or (201, ...) with the run deleted again."""
        try:
            run = self.client.create_flow_run_from_deployment(deployment_id, parameters=parameters)
        except PrefectHTTPStatusError as exc:
            return exc.response.status_code, exc.response.text
        self.client.delete_flow_run(run.id)
        return 201, f"accepted: run {run.id} was created"


def _register(tag: str) -> dict[str, str]:
    ids = {}
    for spec in specs(Settings(cloudflare_api_token="t", cloudflare_account_id="a", realtimekit_app_id="b")):
        deployment = load_flow(spec.entrypoint).to_deployment(name=f"{spec.name}-{tag}", parameters=spec.parameters)
        ids[spec.full_name] = str(deployment.apply())
    return ids


@pytest.fixture(scope="module")
def deployed(prefect_server: PrefectServer) -> Iterator[Deployed]:
    tag = uuid.uuid4().hex[:8]
    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}), get_client(sync_client=True) as client:
        found = Deployed(prefect_server, client, _register(f"refusals-{tag}"))
        yield found
        for dep in found.ids.values():
            client.delete_deployment(dep)


@pytest.mark.parametrize("name", list(CASES))
def test_refused_before_a_run_exists(deployed, name):
    case = CASES[name]
    dep = deployed.ids[case.deployment]
    status, body = deployed.ask(dep, case.parameters)
    assert status == 409, f"{name}: {status} {body[:500]}"
    assert case.expected in body, body
    assert len(body) < 1200, f"{name}: a {len(body):,}-character answer: {body[:300]}..."
    for part in ([case.secret] if case.secret else []) + case.echo:
        assert part not in body, f"{name}: the answer repeats the refused value: {body[:500]}"
    if case.expected == PASSWORD:
        assert WHERE_CREDENTIALS_GO in body and "credentials block" in body  # says where credentials go
    assert deployed.runs(dep) == 0


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_valid_parameters_are_accepted(deployed, name):
    deployment, parameters = ACCEPTED[name]
    status, body = deployed.ask(deployed.ids[deployment], parameters)
    assert status == 201, f"{name}: {body}"


def test_refused_secrets_are_stored_and_logged_nowhere(deployed):
    """Each secret is sent again here (so the test stands alone), then looked for in every
    file of the server's database (SQLite + WAL) and in its log."""
    for name, case in SECRET_CASES.items():
        status, body = deployed.ask(deployed.ids[case.deployment], case.parameters)
        assert status == 409 and case.secret not in body, name
    files = [p for p in Path(deployed.server.home).rglob("*") if p.is_file() and ".db" in p.name]
    assert files, f"no database under {deployed.server.home}"
    stored = b"".join(p.read_bytes() for p in files) + deployed.server.log_path.read_bytes()
    for name, case in SECRET_CASES.items():
        assert case.secret.encode() not in stored, f"{name}: the refused secret is in the server's database or log"
    # the check can see: a value that was accepted is found in the database
    marker = f"marker-{uuid.uuid4().hex}"
    run = deployed.client.create_flow_run_from_deployment(deployed.ids[MANUAL], parameters=manual(meeting_id=marker))
    try:
        assert marker.encode() in b"".join(p.read_bytes() for p in files)
    finally:
        deployed.client.delete_flow_run(run.id)


def test_a_direct_call_checks_the_same_rules():
    """Calling the flow (CLI, tests, subflows) checks the same rules in Python, without
    repeating the refused value."""
    from pydantic import ValidationError

    from flows.manual import ManualRequest

    secret = _secret()
    with pytest.raises(ValidationError) as info:
        ManualRequest(recording_ids=["a"], destination=f"sftp://u:{secret}@h/x")
    assert PASSWORD in str(info.value) and secret not in str(info.value)
    with pytest.raises(ValidationError, match="at most 1,000"):
        ManualRequest(recording_ids=[f"r{i}" for i in range(1001)])
    with pytest.raises(ValidationError, match=EMPTY):
        ManualRequest()
    assert ManualRequest(recording_ids=["a"], destination="sftp://u@h:2222/~/x").destination == "sftp://u@h:2222/~/x"


# URLs the schema accepts must be URLs the archiver can use (else the run is accepted and fails
# later), and the README's forms must stay accepted.
USABLE = [
    "file:///srv/archive", "file:/srv/archive", "file://localhost/srv/a b", " s3://bucket/p ", "S3://bucket/p",
    "s3://bucket", "s3://bucket/p?", "s3://b/p?storage_class=STANDARD_IA&sse=AES256", "gs://b/p?kms_key_name=k",
    "gcs://b", "az://container/p?access_tier=Hot", "azure://c", "sftp://u@h", "sftp://u@h:/x", "sftp://u@h:65535/~/x",
    "sftp://u%40corp@[2001:db8::1]:22/x", "SFTP://u@h/x",
]
UNUSABLE = [
    "sftp://u:pw@h/x", "sftp://u%3Apw@h/x", "s3://k:s@b/p", "s3://k@b/p", "s3://b:9000/p", "s3://b/p?x=1",
    "s3://b/p?storage_class=", "s3://b/p#f", "file://host/x", "file:///a/../b", "file:///x?sse=AES256", "ftp://h/x",
    "sftp://h/x", "sftp://u@h:0/x", "sftp://u@h:65536/x", "sftp://u@h/x?y=1", "file:///a\tb", "", " ", "s3:/b",
    "gs://", "file://", "az://c/%2E%2e/x",
]


@pytest.mark.parametrize("url", USABLE)
def test_what_the_schema_accepts_the_archiver_can_use(url):
    from flows.parameters import DESTINATION_RULES, Checked
    from storage_backends import parse_destination_url

    assert Checked(DESTINATION_RULES).first_refusal(url) is None
    parse_destination_url(url)


@pytest.mark.parametrize("url", UNUSABLE)
def test_what_the_schema_refuses(url):
    from flows.parameters import DESTINATION_RULES, Checked

    assert Checked(DESTINATION_RULES).first_refusal(url) is not None
