"""The expiry watchdog: finished recordings not archived whose files expire soon are at risk
(named with their deadline, an event each, the run fails); those whose files are already
gone are lost, reported once."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest

from flows.watchdog import EVENT_AT_RISK, EVENT_LOST, LOST_MEMORY_CHARS, assess, memory_token, remember_lost, remembered_lost
from rtk_archiver.models import ArchiveReport, OutcomeKind, Recording, RecordingOutcome, RecordingRisk, StorageConfig

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)


def rec(stopped_ago: timedelta = timedelta(hours=1), url: bool = True, expiry_in: timedelta | None = timedelta(days=30), status="UPLOADED") -> Recording:
    rid = str(uuid.uuid4())
    return Recording(
        id=rid, status=status, invoked_time=NOW - stopped_ago - timedelta(hours=1), stopped_time=NOW - stopped_ago,
        output_file_name=f"{rid[:8]}.mp4", download_url="https://rtk.example/v.mp4?sig=secret" if url else None,
        download_url_expiry=NOW + expiry_in if url and expiry_in is not None else None, file_size=10,
    )


def outcome(r: Recording, kind: OutcomeKind, reason: str | None = None) -> RecordingOutcome:
    return RecordingOutcome(recording_id=r.id, output_file_name=r.output_file_name, kind=kind, reason=reason)


def test_assess_names_what_expires_soon_with_its_deadline():
    url_soon = rec(expiry_in=timedelta(hours=3))
    retention_soon = rec(stopped_ago=timedelta(days=6))  # retention ends in 24 h
    far = rec(stopped_ago=timedelta(days=2))  # 5 days left
    archived = rec(expiry_in=timedelta(hours=1))
    already = rec(stopped_ago=timedelta(days=6, hours=12))
    uploading = rec(status="UPLOADING", url=False)
    outcomes = [
        outcome(url_soon, OutcomeKind.FAILED, "SFTP authentication failed"),
        outcome(retention_soon, OutcomeKind.SKIPPED, "storage type 'azure' is not supported"),
        outcome(far, OutcomeKind.FAILED, "boom"),
        outcome(archived, OutcomeKind.ARCHIVED),
        outcome(already, OutcomeKind.ALREADY_ARCHIVED),
        outcome(uploading, OutcomeKind.PENDING),
    ]
    watch = assess([url_soon, retention_soon, far, archived, already, uploading], outcomes, NOW, 48)
    assert watch.lost == []
    by_id = {r.recording_id: r for r in watch.at_risk}
    # the presigned URL's expiry is no deadline (the archiver fetches fresh URLs): the end of
    # RealtimeKit's retention is
    assert set(by_id) == {retention_soon.id}
    assert by_id[retention_soon.id].deadline == NOW + timedelta(days=1)
    assert "retention ends 2026-11-21 12:00 UTC" in by_id[retention_soon.id].reason and "azure" in by_id[retention_soon.id].reason
    assert "secret" not in str(watch.model_dump())
    # the horizon is the setting: 2 h does not see the 24 h deadline
    assert assess([url_soon, retention_soon], outcomes, NOW, 2).at_risk == []
    assert {r.recording_id for r in assess([far], outcomes, NOW, 24 * 6).at_risk} == {far.id}
    # a dry run's "would archive" is not archived either
    assert assess([retention_soon], [outcome(retention_soon, OutcomeKind.WOULD_ARCHIVE)], NOW, 48).at_risk


def test_assess_lost_when_files_are_gone_unless_archived():
    no_url = rec(url=False, stopped_ago=timedelta(days=7, hours=1))  # its files expired with the retention
    bucket_disabled = rec(url=False)  # no URL, no expiry: never on RealtimeKit's bucket, went to its storage_config
    bucket_disabled.storage_config = StorageConfig(type="aws", bucket="b")
    past_retention = rec(stopped_ago=timedelta(days=7, minutes=1), expiry_in=timedelta(hours=1))
    archived_before = rec(url=False, stopped_ago=timedelta(days=7, hours=2))
    recs = [no_url, bucket_disabled, past_retention, archived_before]
    outcomes = [outcome(r, OutcomeKind.SKIPPED, "no download_url") for r in recs]
    watch = assess(recs, outcomes, NOW, 48, archived_ids={archived_before.id})
    assert watch.at_risk == []
    by_id = {r.recording_id: r for r in watch.lost}
    assert set(by_id) == {no_url.id, past_retention.id}
    assert "no download URL" in by_id[no_url.id].reason
    assert "retention ended" in by_id[past_retention.id].reason
    assert by_id[past_retention.id].deadline == past_retention.stopped_time + timedelta(days=7)


def test_assess_tells_never_on_the_bucket_from_expired():
    """No URL and no expiry: RealtimeKit's bucket was disabled for it. Its RealtimeKit upload
    recorded (delivered) is safe at any age; found missing or damaged it is lost at any age;
    without a storage_config it is stored nowhere. An expiry without a URL: expired."""
    def disabled(age: timedelta, sc: bool = True) -> Recording:
        r = rec(url=False, stopped_ago=age)
        r.storage_config = StorageConfig(type="gcs", bucket="b") if sc else None
        return r

    delivered_old, missing_new, damaged_old, nowhere = disabled(timedelta(days=30)), disabled(timedelta(hours=1)), disabled(timedelta(days=9)), disabled(timedelta(hours=2), sc=False)
    expired = rec(url=False, stopped_ago=timedelta(days=2))
    expired.download_url_expiry = NOW - timedelta(hours=1)
    outcomes = [
        outcome(delivered_old, OutcomeKind.DELIVERED),
        outcome(missing_new, OutcomeKind.SKIPPED).model_copy(update={"upload": "missing"}),
        outcome(damaged_old, OutcomeKind.SKIPPED).model_copy(update={"upload": "damaged", "upload_note": "holds 5 bytes"}),
        outcome(nowhere, OutcomeKind.SKIPPED),
        outcome(expired, OutcomeKind.SKIPPED),
    ]
    watch = assess([delivered_old, missing_new, damaged_old, nowhere, expired], outcomes, NOW, 48)
    by_id = {r.recording_id: r.reason for r in watch.lost}
    assert set(by_id) == {missing_new.id, damaged_old.id, nowhere.id, expired.id}
    assert "not there" in by_id[missing_new.id] and "not intact (holds 5 bytes)" in by_id[damaged_old.id]
    assert "stored nowhere" in by_id[nowhere.id] and "expired" in by_id[expired.id]
    assert watch.at_risk == []


def test_a_timestamp_without_time_zone_is_utc():
    r = Recording.model_validate({"id": "a", "status": "UPLOADED", "invoked_time": "2026-12-06T18:40:00",
                                  "stopped_time": "2026-12-06T18:49:33.1", "download_url_expiry": "2026-12-07T18:49:33",
                                  "output_file_name": "x.mp4", "download_url": "https://x/y"})
    assert r.stopped_time == datetime(2026, 12, 6, 18, 49, 33, 100000, tzinfo=timezone.utc)
    assert assess([r], [], datetime(2026, 12, 13, 12, tzinfo=timezone.utc), 48).at_risk


def test_run_failure_message_counts_failed_at_risk_and_lost():
    ok = ArchiveReport(outcomes=[RecordingOutcome(recording_id="a", kind=OutcomeKind.ARCHIVED)])
    assert ok.run_failure_message() is None
    risky = ArchiveReport(at_risk=[RecordingRisk(recording_id="r1", deadline=NOW, reason="its download URL expires soon")])
    assert risky.run_failure_message() == "1 recording(s) at risk of expiring unarchived; first: r1: its download URL expires soon"
    both = ArchiveReport(
        outcomes=[RecordingOutcome(recording_id="f1", kind=OutcomeKind.FAILED, reason="disk full")],
        at_risk=risky.at_risk, lost=[RecordingRisk(recording_id="l1", reason="gone")],
    )
    msg = both.run_failure_message()
    assert msg.startswith("1 of 1 recording(s) failed, 1 recording(s) at risk of expiring unarchived, 1 recording(s) lost")
    assert msg.endswith("first: f1: disk full")
    assert ArchiveReport(dry_run=True, at_risk=risky.at_risk).run_failure_message() is None


@pytest.mark.usefixtures("prefect_harness")
def test_lost_memory_is_bounded():
    tokens = [memory_token(str(uuid.uuid4())) for _ in range(600)]
    remember_lost(tokens[:10])
    remember_lost(tokens)
    kept = remembered_lost()
    assert 300 <= len(kept) < 600 and kept[-1] == tokens[-1] and tokens[0] not in kept
    import json

    assert len(json.dumps(kept)) <= LOST_MEMORY_CHARS


# -- end to end: called the way flows/archive.py's archive_recordings calls it --------------


def archive_with_watchdog(**parameters) -> ArchiveReport:
    """A window run (the watchdog runs in every one), its report whether it Completed or Failed."""
    from flows.archive import archive_recordings
    from tests.fixtures import run_report

    return run_report(archive_recordings, **parameters)


@pytest.fixture
def events(monkeypatch):
    sent: list[tuple[str, str, dict]] = []
    import flows.watchdog

    monkeypatch.setattr(
        flows.watchdog, "emit_event",
        lambda event, resource, payload: sent.append((event, resource["prefect.resource.id"], payload)),
    )
    return sent


@pytest.mark.usefixtures("prefect_harness")
def test_watchdog_fires_before_expiry_and_reports_a_loss_once(archiver_env, events):
    sim = archiver_env
    sim.state.url_ttl_seconds = 30 * 86400  # URLs do not expire soon: the retention is what runs out
    now = datetime.now(timezone.utc)
    azure = {"type": "dropbox", "bucket": "b", "path": "p"}  # a storage type the archiver cannot write
    # unsupported destination, 6 days 20 h old: retention ends in ~4 h -> at risk
    nearly = sim.state.add_recording(file_size=1000, stopped_time=now - timedelta(days=6, hours=20), storage_config=azure)
    # unsupported, 1 day old: 6 days left, not yet at risk
    young = sim.state.add_recording(file_size=1000, stopped_time=now - timedelta(days=1), storage_config=azure)
    # never had files on RealtimeKit: lost
    # files gone from RealtimeKit (7 days over), never archived: lost
    no_files = sim.state.add_recording(file_size=1000, bucket_enabled=False,
                                       stopped_time=datetime.now(timezone.utc) - timedelta(days=7, hours=2))
    # RealtimeKit's bucket disabled: its files went straight to the customer's storage (a type
    # this run cannot read): not known to be lost
    sim.state.add_recording(file_size=1000, bucket_enabled=False, storage_config={"type": "dropbox", "bucket": "b"})
    # archived now, then its files expire on RealtimeKit: not a loss
    archived = sim.state.add_recording(file_size=1000, stopped_time=now - timedelta(days=6, hours=23))
    fine = sim.state.add_recording(file_size=1000)

    report = archive_with_watchdog()
    kinds = {o.recording_id: o.kind for o in report.outcomes}
    assert kinds[archived["id"]] == kinds[fine["id"]] == OutcomeKind.ARCHIVED
    at_risk = {r.recording_id: r for r in report.at_risk}
    assert set(at_risk) == {nearly["id"]}
    deadline = datetime.fromisoformat(nearly["stopped_time"].replace("Z", "+00:00")) + timedelta(days=7)
    assert at_risk[nearly["id"]].deadline == deadline
    assert "dropbox" in at_risk[nearly["id"]].reason
    assert [r.recording_id for r in report.lost] == [no_files["id"]]
    assert (EVENT_AT_RISK, f"rtk.recording.{nearly['id']}", ) == events[0][:2]
    assert {(e, r) for e, r, _ in events} == {(EVENT_AT_RISK, f"rtk.recording.{nearly['id']}"), (EVENT_LOST, f"rtk.recording.{no_files['id']}")}
    msg = report.run_failure_message()
    assert msg and "1 recording(s) at risk" in msg and "1 recording(s) lost" in msg
    assert young["id"] not in at_risk

    # a day later (simulated): the archived recording's files are gone from RealtimeKit, the
    # nearly-expired one too; the loss already reported is not reported again
    events.clear()
    for rid in (archived["id"], nearly["id"]):
        sim.state.recordings[rid].stopped_time -= timedelta(hours=6)  # past the 7 days: no URL any more
    again = archive_with_watchdog()
    assert {o.recording_id: o.kind for o in again.outcomes}[archived["id"]] == OutcomeKind.SKIPPED
    assert [r.recording_id for r in again.lost] == [nearly["id"]]  # archived: no loss; no_files: reported before
    assert "retention" in again.lost[0].reason or "no download URL" in again.lost[0].reason
    assert again.at_risk == []
    assert [(e, r) for e, r, _ in events] == [(EVENT_LOST, f"rtk.recording.{nearly['id']}")]

    events.clear()
    third = archive_with_watchdog()
    assert third.lost == [] and third.at_risk == [] and events == []
    assert third.run_failure_message() is None


@pytest.mark.usefixtures("prefect_harness")
def test_watchdog_dry_run_reports_without_events_or_memory(archiver_env, events):
    sim = archiver_env
    # files gone from RealtimeKit (7 days over), never archived: lost
    no_files = sim.state.add_recording(file_size=1000, bucket_enabled=False,
                                       stopped_time=datetime.now(timezone.utc) - timedelta(days=7, hours=2))
    # RealtimeKit's bucket disabled: its files went straight to the customer's storage (a type
    # this run cannot read): not known to be lost
    sim.state.add_recording(file_size=1000, bucket_enabled=False, storage_config={"type": "dropbox", "bucket": "b"})
    sim.state.url_ttl_seconds = 30 * 86400
    # the 7-day retention ends in ~4 h (a URL's expiry is no deadline: a fresh GET renews it)
    soon = sim.state.add_recording(file_size=1000, stopped_time=datetime.now(timezone.utc) - timedelta(days=6, hours=20))
    report = archive_with_watchdog(dry_run=True)
    assert [r.recording_id for r in report.lost] == [no_files["id"]]
    assert [r.recording_id for r in report.at_risk] == [soon["id"]]  # "would archive": not archived
    assert events == [] and memory_token(no_files["id"]) not in remembered_lost()
    assert report.run_failure_message() is None
    real = archive_with_watchdog()
    assert [r.recording_id for r in real.lost] == [no_files["id"]] and real.at_risk == []
