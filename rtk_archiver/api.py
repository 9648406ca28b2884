"""RealtimeKit Recordings API client, on Cloudflare's official SDK.

The SDK brings typed calls, retries with backoff and ``Retry-After``. On top of it this
module adds what the archiver needs: a pagination reader that trusts only what the server
answers (see the API notes: first page may be 0 or 1, short pages, shifting pages) and
per-item parsing into our own models, so one malformed recording never hides the others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import cloudflare
from pydantic import BaseModel, TypeAdapter, ValidationError

from rtk_archiver.display import printable
from rtk_archiver.models import Paging, Recording
from rtk_archiver.naming import redact_urls
from rtk_archiver.settings import Settings


class ApiError(Exception):
    """The API refused or failed a call. Never holds the token."""

    def __init__(self, message: str, *, permanent: bool = False, status: int | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.status = status


class RecordingNotFound(ApiError):
    pass


class InvalidRecording(BaseModel):
    """An item of a list response that does not parse as a recording."""

    id: str
    output_file_name: str | None = None
    reason: str
    #: its stopped (else invoked) time when that much of it parses, for the poll's mark
    reference_time: datetime | None = None


def describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_input=False, include_url=False)[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return "; ".join(parts)


def _lenient_time(item: Any) -> datetime | None:
    """The stopped (else invoked) time of a raw item, if it parses; None otherwise."""
    if not isinstance(item, dict):
        return None
    for field in ("stopped_time", "invoked_time"):
        try:
            value = TypeAdapter(datetime).validate_python(item.get(field))
        except ValidationError:
            continue
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return None


#: at most this many characters of the API's own error messages go into an ApiError
MAX_API_MESSAGE = 300


def api_error_messages(body: Any, token: str | None = None) -> str:
    """The API's ``errors[].message`` (with their codes) from a response body: bounded,
    URLs without their query strings, the token never, control characters escaped."""
    errors = body.get("errors") if isinstance(body, dict) else None
    parts: list[str] = []
    for err in errors[:5] if isinstance(errors, list) else []:
        if isinstance(err, dict):
            msg, code = err.get("message"), err.get("code")
            text = str(msg) if isinstance(msg, (str, int, float)) else ""
            if isinstance(code, (str, int)) and not isinstance(code, bool):
                text = f"{text} (code {code})" if text else f"code {code}"
        elif isinstance(err, str):
            text = err
        else:
            continue
        if text:
            parts.append(text)
    return _clean("; ".join(parts), token)


def _clean(text: str, token: str | None) -> str:
    if token and len(token) >= 6:
        text = text.replace(token, "<redacted>")
    return printable(redact_urls(text), limit=MAX_API_MESSAGE)


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


class RealtimeKitAPI:
    def __init__(self, settings: Settings, throttle: Callable[[], None] | None = None) -> None:
        self.account_id = settings.cloudflare_account_id
        self.app_id = settings.realtimekit_app_id
        self.page_size = settings.api_page_size
        self._client = cloudflare.Cloudflare(
            api_token=settings.cloudflare_api_token.get_secret_value(),
            base_url=settings.cloudflare_base_url,
            max_retries=settings.api_max_retries,
            timeout=settings.api_timeout_seconds,
        )
        self._recordings = self._client.realtime_kit.recordings
        self._throttle = throttle
        self._token = settings.cloudflare_api_token.get_secret_value()

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "RealtimeKitAPI":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calls --------------------------------------------------------------------------
    def _call(self, fn, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if self._throttle is not None:
            self._throttle()
        try:
            raw = fn(*args, account_id=self.account_id, **kwargs)
            body = raw.http_response.json()
        except cloudflare.NotFoundError:
            raise RecordingNotFound("not found (404)", permanent=True, status=404) from None
        except (cloudflare.AuthenticationError, cloudflare.PermissionDeniedError) as exc:
            said = api_error_messages(exc.body, self._token)
            raise ApiError(
                f"RealtimeKit API refused the credentials ({exc.status_code}{': ' + said if said else ''}): "
                "check CLOUDFLARE_API_TOKEN, CLOUDFLARE_ACCOUNT_ID and REALTIMEKIT_APP_ID",
                permanent=True,
                status=exc.status_code,
            ) from None
        except cloudflare.APIStatusError as exc:
            said = api_error_messages(exc.body, self._token) or _clean(str(exc), self._token)
            raise ApiError(f"RealtimeKit API answered {exc.status_code}: {said}", status=exc.status_code) from None
        except cloudflare.APIConnectionError as exc:
            raise ApiError(f"cannot reach the RealtimeKit API at {self._client.base_url}: {type(exc).__name__}") from None
        except ValueError as exc:  # malformed JSON
            raise ApiError(f"RealtimeKit API sent a malformed response: {type(exc).__name__}") from None
        if not isinstance(body, dict):
            raise ApiError(f"RealtimeKit API sent a malformed response: a JSON {type(body).__name__}, not an object")
        if body.get("success") is False:
            said = api_error_messages(body, self._token)
            raise ApiError(f"RealtimeKit API answered success=false: {said or 'without an error message'}")
        return body

    def get_recording(self, recording_id: str) -> Recording:
        body = self._call(
            self._recordings.with_raw_response.get_one_recording, recording_id, app_id=self.app_id
        )
        try:
            return Recording.model_validate(body.get("data"))
        except ValidationError as exc:
            raise ApiError(f"recording {recording_id} is malformed: {describe_validation_error(exc)}", permanent=True)

    def iter_recordings(
        self,
        *,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        statuses: list[str] | None = None,
        meeting_id: str | None = None,
    ) -> Iterator[Recording | InvalidRecording]:
        """Every recording matching the filters, once each, whatever the server's paging does:
        pages are read until an empty one, items are de-duplicated by id."""
        query: dict[str, Any] = {"per_page": self.page_size, "sort_by": "invokedTime", "sort_order": "ASC"}
        if start_time:
            query["start_time"] = _iso(start_time)
        if end_time:
            query["end_time"] = _iso(end_time)
        if statuses:
            query["status"] = statuses
        if meeting_id:
            query["meeting_id"] = meeting_id

        seen: set[str] = set()
        total: int | None = None
        pages_without_news = 0
        page_no = 1
        tried_page_zero = False
        while True:
            body = self._call(self._recordings.with_raw_response.get_recordings, self.app_id, page_no=page_no, **query)
            items = body.get("data") or []
            paging = Paging.model_validate(body.get("paging") or {})
            if paging.total_count is not None:
                total = paging.total_count
            new = 0
            for item in items:
                parsed = self._parse_item(item)
                if parsed.id in seen:
                    continue
                seen.add(parsed.id)
                new += 1
                yield parsed
            if not items:
                # Only an empty page ends the listing (total_count can be wrong, pages can be
                # short); a server whose first page is 0 gets one look if items are missing.
                if not tried_page_zero and total is not None and len(seen) < total:
                    tried_page_zero, page_no = True, 0
                    continue
                break
            pages_without_news = pages_without_news + 1 if new == 0 else 0
            if pages_without_news >= 2:  # a server that ignores page_no: stop rather than loop
                break
            if page_no == 0:  # page 0 was the last resort
                break
            page_no += 1

    @staticmethod
    def _parse_item(item: Any) -> Recording | InvalidRecording:
        try:
            return Recording.model_validate(item)
        except ValidationError as exc:
            rid = str(item.get("id")) if isinstance(item, dict) and item.get("id") else "<no id>"
            name = item.get("output_file_name") if isinstance(item, dict) else None
            return InvalidRecording(
                id=rid,
                output_file_name=name if isinstance(name, str) else None,
                reason=f"malformed recording from the API: {describe_validation_error(exc)}",
                reference_time=_lenient_time(item),
            )
