"""The simulator's HTTP API (Starlette): the Recordings endpoints and the media bucket.

Paths: ``/client/v4/accounts/{account_id}/realtime/kit/{app_id}/recordings...`` and
``/rtk-bucket/{recording_id}/{video|audio}.{ext}?X-Expires=..&X-Signature=..``.

Pagination: ``page_no`` starts at 1 (0 is served as the first page too), ``per_page``
defaults to 25 and is capped at 100. ``paging.start_offset`` / ``end_offset`` are the
1-based positions of the first and last item returned (0 and 0 for an empty page),
``total_count`` the number of recordings matching the filters.

The simulator's own controls, not part of RealtimeKit's API (no token, no injected faults;
``rtk-archiver simulator add / enlarge / list`` use them), under ``/_sim``:

- ``GET /_sim/recordings``: every recording's summary (id, status, real sizes, ...), newest first;
- ``POST /_sim/recordings`` ``{"file_size": N, "audio": bool, "audio_size": N, "status": "UPLOADED",
  "meeting_title": "..."}`` (all optional but ``file_size``): add a recording (201);
- ``GET /_sim/recordings/{id}``: one recording's summary;
- ``PATCH /_sim/recordings/{id}`` ``{"file_size": N}``: enlarge its video to N bytes.

Errors are answered as the API's are (``{"success": false, "errors": [...]}``), 404 for an
unknown recording, 400 for a bad request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timezone
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from email.utils import formatdate

from .content import iter_media, media_etag, media_source
from .state import ADDABLE_STATUSES, STATUSES, SimRecording, SimulatorState, _utc

PREFIX = "/client/v4/accounts/{account_id}/realtime/kit/{app_id}"


def _error(status: int, message: str, code: int | None = None) -> JSONResponse:
    return JSONResponse({"success": False, "errors": [{"code": code or status, "message": message}]}, status_code=status)


def create_app(state: SimulatorState) -> Starlette:
    async def guard(request: Request) -> Response | None:
        faults = state.faults
        if faults.api_delay:
            await asyncio.sleep(faults.api_delay)
        with state.lock:
            status = faults.api_errors.pop(0) if faults.api_errors else None
            reset = faults.api_resets > 0
            faults.api_resets -= int(reset)
            malformed = not reset and faults.api_malformed > 0
            faults.api_malformed -= int(malformed)
        if status is not None:
            resp = _error(status, "injected fault")
            if status in (429, 503):
                resp.headers["Retry-After"] = str(faults.retry_after)
            return resp
        if reset:
            return StreamingResponse(_broken(), media_type="application/json", headers={"Content-Length": "4096"})
        if malformed:
            return Response('{"success": true, "data": [{"id": ', media_type="application/json")
        if request.headers.get("authorization") != f"Bearer {state.token}":
            return _error(401, "Unauthorized: invalid or missing API token", 10000)
        p = request.path_params
        if p.get("account_id") != state.account_id or p.get("app_id") != state.app_id:
            return _error(404, "Unknown account or app", 7003)
        return None

    def base_url(request: Request) -> str:
        return f"{request.url.scheme}://{request.url.netloc}"

    def find(request: Request) -> SimRecording | None:
        with state.lock:
            return state.recordings.get(request.path_params["recording_id"])

    async def list_recordings(request: Request) -> Response:
        if (err := await guard(request)) is not None:
            return err
        q = request.query_params
        try:
            page_no = max(1, int(q.get("page_no", "1")))
            per_page = int(q.get("per_page", str(state.default_per_page)))
            if per_page < 0:
                raise ValueError
            per_page = min(per_page or state.default_per_page, state.max_per_page)
            start = _utc(q["start_time"]) if "start_time" in q else None
            end = _utc(q["end_time"]) if "end_time" in q else None
        except ValueError:
            return _error(400, "invalid query parameter", 1001)
        statuses = {s for v in q.getlist("status") + q.getlist("status[]") for s in v.split(",") if s}
        if statuses - set(STATUSES):
            return _error(400, f"invalid status: {sorted(statuses - set(STATUSES))}", 1001)
        with state.lock:
            recs = list(state.recordings.values())
        if statuses:
            recs = [r for r in recs if r.status in statuses]
        if start:
            recs = [r for r in recs if r.invoked_time >= start]
        if end:
            recs = [r for r in recs if r.invoked_time <= end]
        if "meeting_id" in q:
            recs = [r for r in recs if r.meeting_id == q["meeting_id"]]
        if "search" in q:
            needle = q["search"].lower()
            recs = [r for r in recs if needle in r.meeting_id.lower() or needle in r.meeting_title.lower()]
        if "expired" in q:
            want = q["expired"].lower() == "true"
            recs = [r for r in recs if r.expired == want]
        recs.sort(key=lambda r: (r.invoked_time, r.id), reverse=q.get("sort_order", "DESC").upper() != "ASC")
        if state.faults.on_list_page is not None:
            state.faults.on_list_page(page_no)
            with state.lock:  # the hook may have changed the data: list again, as a live server would
                recs = [r for r in state.recordings.values() if r.id in {x.id for x in recs} or _matches(r, q)]
            recs.sort(key=lambda r: (r.invoked_time, r.id), reverse=q.get("sort_order", "DESC").upper() != "ASC")
        first = (page_no - 1) * per_page
        page = recs[first : first + per_page]
        base = base_url(request)
        return JSONResponse(
            {
                "success": True,
                "data": [state.view(r, base_url=base) for r in page],
                "paging": {
                    "total_count": len(recs) + state.faults.total_count_offset,
                    "start_offset": first + 1 if page else 0,
                    "end_offset": first + len(page) if page else 0,
                },
            }
        )

    async def one_recording(request: Request) -> Response:
        if (err := await guard(request)) is not None:
            return err
        rec = find(request)
        if rec is None:
            return _error(404, "Recording not found", 7404)
        if request.method == "PUT":
            try:
                body = await request.json()
                action = body["action"]
            except (ValueError, KeyError, TypeError):
                return _error(400, "body must be {\"action\": \"stop\" | \"pause\" | \"resume\"}", 1001)
            if action not in ("stop", "pause", "resume"):
                return _error(400, f"unknown action {action!r}", 1001)
            if (problem := state.apply_action(rec, action)) is not None:
                return _error(400, problem, 1002)
        return JSONResponse({"success": True, "data": state.view(rec, base_url=base_url(request), detailed=True)})

    async def active_recording(request: Request) -> Response:
        if (err := await guard(request)) is not None:
            return err
        meeting_id = request.path_params["meeting_id"]
        with state.lock:
            active = [
                r for r in state.recordings.values()
                if r.meeting_id == meeting_id and r.status in ("INVOKED", "RECORDING", "PAUSED")
            ]
        if not active:
            return _error(404, "No active recording for this meeting", 7404)
        return JSONResponse({"success": True, "data": state.view(active[-1], base_url=base_url(request), detailed=True)})

    async def start_recording(request: Request) -> Response:
        if (err := await guard(request)) is not None:
            return err
        try:
            body: dict[str, Any] = await request.json()
            meeting_id = str(body["meeting_id"])
        except (ValueError, KeyError, TypeError):
            return _error(400, "meeting_id is required", 1001)
        now = datetime.now(timezone.utc)
        view = state.add_recording(
            meeting_id=meeting_id,
            status="RECORDING",
            invoked_time=now,
            started_time=now,
            stopped_time=None,
            storage_config=body.get("storage_config"),
            audio=bool((body.get("audio_config") or {}).get("export_file")),
            bucket_enabled=(body.get("realtimekit_bucket_config") or {}).get("enabled", True),
            output_file_name=f"{body.get('file_name_prefix') or 'recording'}_{int(now.timestamp())}.mp4",
        )
        rec = state.recordings[view["id"]]
        return JSONResponse({"success": True, "data": state.view(rec, base_url=base_url(request), detailed=True)}, status_code=201)

    async def start_track_recording(request: Request) -> Response:
        """``POST /recordings/track``: per-participant audio, always on RealtimeKit's bucket."""
        if (err := await guard(request)) is not None:
            return err
        try:
            body: dict[str, Any] = await request.json()
            meeting_id = str(body["meeting_id"])
        except (ValueError, KeyError, TypeError):
            return _error(400, "meeting_id is required", 1001)
        now = datetime.now(timezone.utc)
        view = state.add_recording(
            meeting_id=meeting_id, status="RECORDING", invoked_time=now, started_time=now, stopped_time=None,
            type="TRACK", file_name_prefix=str(body.get("file_name_prefix") or "rtk"),
        )
        rec = state.recordings[view["id"]]
        return JSONResponse({"success": True, "data": state.view(rec, base_url=base_url(request), detailed=True)}, status_code=201)

    async def media(request: Request) -> Response:
        rid = request.path_params["recording_id"]
        kind = request.path_params["kind"]
        try:
            expires = int(request.query_params.get("X-Expires", ""))
        except ValueError:
            return Response("missing or bad X-Expires", status_code=403)
        if not state.check_signature(rid, kind, expires, request.query_params.get("X-Signature", "")):
            return Response("SignatureDoesNotMatch", status_code=403)
        if expires < time.time():
            return Response("Request has expired", status_code=403)
        with state.lock:
            rec = state.recordings.get(rid)
        size = state.media_size(rec, kind) if rec else None
        if rec is None or size is None:
            return Response("NoSuchKey", status_code=404)
        faults = state.faults
        faulty = kind in faults.fault_kinds
        start, end = 0, size  # [start, end)
        status = 200
        media_type = faults.media_type if faults.media_type != "" else ("video/mp4" if kind == "video" else "audio/mp4")
        headers = {"Accept-Ranges": "bytes"}
        if media_type is not None:
            headers["Content-Type"] = media_type
        version = rec.version
        etag = media_etag(rid, kind, version, size)
        last_modified = formatdate(1_700_000_000 + version * 3600, usegmt=True)
        if faults.validators:
            headers["ETag"], headers["Last-Modified"] = etag, last_modified
        rng = None if faults.ignore_range else request.headers.get("range")
        if_range = request.headers.get("if-range")
        if rng and if_range and faults.honour_if_range and if_range not in (etag, last_modified):
            rng = None  # RFC 9110 13.1.5: another version than the one asked for: the whole file
        if rng:
            parsed = _parse_range(rng, size)
            if parsed is None:
                return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
            start, end = parsed
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        if not (faulty and faults.chunked):  # else Transfer-Encoding: chunked
            headers["Content-Length"] = str(end - start)
        if request.method == "HEAD":
            return Response(status_code=status, headers=headers)
        with state.lock:
            if start == 0:
                state.downloads[(rid, kind)] += 1
            error_page = faulty and faults.error_pages > 0
            faults.error_pages -= int(error_page)
            reset = faulty and not error_page and faults.download_resets > 0
            faults.download_resets -= int(reset)
            if reset and faults.replace_on_reset:  # the next request finds another version
                rec.version += 1
            stall = faulty and not (error_page or reset) and faults.download_stalls > 0
            faults.download_stalls -= int(stall)
            trickle = faulty and not (error_page or reset or stall) and faults.download_trickles > 0
            faults.download_trickles -= int(trickle)
        if error_page:
            page_headers = {"Content-Type": faults.error_page_type} if faults.error_page_type else {}
            return Response(faults.error_page, status_code=200, headers=page_headers, media_type=None)
        # whole 1 MiB blocks: Starlette hands every chunk of a sync iterator to a worker
        # thread, and at 64 KiB that alone cost the simulator ~1 s of CPU per GiB served
        body = iter_media(media_source(rid, version), kind, start, end)
        if trickle:
            return StreamingResponse(
                _trickle(body, faults.reset_after, faults.trickle_bytes, faults.trickle_interval, faults.trickle_max_seconds),
                status_code=status, headers=headers,
            )
        if reset or stall:
            body = _faulty(body, faults.reset_after, None if reset else faults.stall_seconds)
        return StreamingResponse(body, status_code=status, headers=headers)

    # -- the simulator's own controls (not RealtimeKit's API): see the module docstring --------
    async def control_body(request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise _BadRequest("the body must be a JSON object") from None
        if not isinstance(body, dict):
            raise _BadRequest("the body must be a JSON object")
        return body

    def control_size(body: dict[str, Any], name: str, required: bool) -> int | None:
        value = body.get(name)
        if value is None and not required:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise _BadRequest(f"{name} must be a whole number of bytes")
        return value

    def controlled(handler):
        async def run(request: Request) -> Response:
            try:
                return await handler(request)
            except _BadRequest as exc:
                return _error(400, str(exc), 1001)
            except ValueError as exc:
                return _error(400, str(exc), 1002)
        return run

    @controlled
    async def control_list(request: Request) -> Response:
        with state.lock:
            recs = sorted(state.recordings.values(), key=lambda r: (r.invoked_time, r.id), reverse=True)
            return JSONResponse({"success": True, "data": [state.summary(r) for r in recs]})

    @controlled
    async def control_add(request: Request) -> Response:
        body = await control_body(request)
        unknown = set(body) - {"file_size", "audio", "audio_size", "status", "meeting_title"}
        if unknown:
            raise _BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
        status = body.get("status", "UPLOADED")
        if status not in ADDABLE_STATUSES:
            raise _BadRequest(f"status must be one of {', '.join(ADDABLE_STATUSES)}")
        title = body.get("meeting_title")
        if title is not None and not isinstance(title, str):
            raise _BadRequest("meeting_title must be a string")
        rec = state.add_controlled(
            file_size=control_size(body, "file_size", True), status=status, audio=bool(body.get("audio")),
            audio_size=control_size(body, "audio_size", False), meeting_title=title,
        )
        return JSONResponse({"success": True, "data": state.summary(rec)}, status_code=201)

    @controlled
    async def control_one(request: Request) -> Response:
        rec = find(request)
        if rec is None:
            return _error(404, "Recording not found", 7404)
        if request.method == "PATCH":
            body = await control_body(request)
            if set(body) != {"file_size"}:
                raise _BadRequest('the body must be {"file_size": N}')
            rec = state.enlarge(rec.id, control_size(body, "file_size", True))
        return JSONResponse({"success": True, "data": state.summary(rec)})

    return Starlette(
        routes=[
            Route("/_sim/recordings", control_list, methods=["GET"]),
            Route("/_sim/recordings", control_add, methods=["POST"]),
            Route("/_sim/recordings/{recording_id}", control_one, methods=["GET", "PATCH"]),
            Route(PREFIX + "/recordings", list_recordings, methods=["GET"]),
            Route(PREFIX + "/recordings", start_recording, methods=["POST"]),
            Route(PREFIX + "/recordings/track", start_track_recording, methods=["POST"]),
            Route(PREFIX + "/recordings/active-recording/{meeting_id}", active_recording, methods=["GET"]),
            Route(PREFIX + "/recordings/{recording_id}", one_recording, methods=["GET", "PUT"]),
            Route("/rtk-bucket/{recording_id}/{kind}.{ext}", media, methods=["GET", "HEAD"]),
        ]
    )


class _BadRequest(Exception):
    """A control request that is not well formed (answered 400)."""


def _broken() -> Iterator[bytes]:
    """A body that breaks off: the client sees the connection drop mid-answer."""
    yield b'{"success": true, "data": ['
    raise ConnectionResetError("injected connection reset")


def _faulty(body: Iterator[bytes], after: int, stall: float | None) -> Iterator[bytes]:
    """Pass ``after`` bytes, then drop the connection (stall None) or stall that long."""
    sent, tripped = 0, False
    for chunk in body:
        if not tripped and sent + len(chunk) > after:
            tripped = True
            head, chunk = chunk[: after - sent], chunk[after - sent :]
            if head:
                yield head
            if stall is None:
                raise ConnectionResetError("injected connection reset")
            time.sleep(stall)
        sent += len(chunk)
        yield chunk


async def _trickle(
    body: Iterator[bytes], after: int, size: int, interval: float, limit: float | None
) -> AsyncIterator[bytes]:
    """Pass ``after`` bytes, then ``size`` bytes every ``interval`` seconds (a trickle that
    no per-read timeout ever catches), without holding a worker thread; after ``limit``
    seconds of trickling (if set) the connection drops."""
    sent = 0
    started = time.monotonic()
    for block in body:
        if sent + len(block) <= after:
            sent += len(block)
            yield block
            continue
        head, rest = block[: max(0, after - sent)], block[max(0, after - sent) :]
        sent += len(block)
        if head:
            yield head
        for i in range(0, len(rest), size):
            await asyncio.sleep(interval)
            if limit is not None and time.monotonic() - started > limit:
                raise ConnectionResetError("injected connection reset after a trickle")
            yield rest[i : i + size]


def _matches(rec: SimRecording, q: Any) -> bool:
    """Whether a recording added mid-listing matches the listing's status/time filters."""
    statuses = {s for v in q.getlist("status") for s in v.split(",") if s}
    if statuses and rec.status not in statuses:
        return False
    if "start_time" in q and rec.invoked_time < _utc(q["start_time"]):
        return False
    return not ("end_time" in q and rec.invoked_time > _utc(q["end_time"]))


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """A single 'bytes=a-b' / 'bytes=a-' / 'bytes=-n' range as [start, end); None if unsatisfiable."""
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return None
    first, _, last = spec.strip().partition("-")
    try:
        if first == "":
            n = int(last)
            if n <= 0:
                return None
            return max(0, size - n), size
        start = int(first)
        end = int(last) + 1 if last else size
    except ValueError:
        return None
    if start >= size or end <= start:
        return None
    return start, min(end, size)
