"""gcp-storage-emulator (in memory) for the benchmarks, speaking one more detail of the real
GCS upload protocol: a client that sends ``X-GUploader-No-308: yes`` (Go's client, so rclone)
gets "resume incomplete" as 200 + ``X-Http-Status-Code-Override: 308``, as GCS answers it,
instead of a bare 308 that such a client rejects.

    python -m bench.gcs_emulator --port 9023
"""

from __future__ import annotations

import argparse
import functools
from http import HTTPStatus

from gcp_storage_emulator.handlers import objects


def _no_308(handler):
    @functools.wraps(handler)
    def wrapped(request, response, storage, *args, **kwargs):
        result = handler(request, response, storage, *args, **kwargs)
        if response.status == objects.GoogleHTTPStatus.RESUME_INCOMPLETE and (
            (request.get_header("X-GUploader-No-308", "") or "").lower() == "yes"
        ):
            response.status = HTTPStatus.OK
            response["X-Http-Status-Code-Override"] = "308"
        return result

    return wrapped


objects.upload_partial = _no_308(objects.upload_partial)  # before the server module builds its routes

from gcp_storage_emulator.server import create_server  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    server = create_server(args.host, args.port, in_memory=True)
    server.start()  # blocks until terminated


if __name__ == "__main__":
    main()
