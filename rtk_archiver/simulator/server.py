"""Running the simulator: in a background thread (tests, demo) or in the foreground (CLI)."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from .app import create_app
from .state import SimulatorState, generate_recordings
from .webhooks import WebhookSender


class SimulatorServer:
    """``with SimulatorServer(count=20) as sim:`` serves on 127.0.0.1 and a free port."""

    def __init__(self, state: SimulatorState | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 count: int = 0, seed: int = 1, min_size: int = 32 * 1024, max_size: int = 1024 * 1024,
                 webhook_url: str | None = None, platform: bool = False, deliverer=None,
                 archivable: bool = False) -> None:
        self.state = state or SimulatorState()
        if deliverer is not None:  # RealtimeKit's own uploads to storage_configs (simulator/delivery.py)
            self.state.deliverer = deliverer
        # signed recording.statusUpdate webhooks to webhook_url (settable later: sim.webhooks.url)
        self.webhooks = WebhookSender(webhook_url)
        self.state.add_status_listener(self.webhooks.on_status_change)
        self.host = host
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit this: without it, a response under one TCP segment that
        # uvicorn writes as headers + body waited ~40 ms for the client's delayed ACK (Nagle),
        # which made every page and small download 10x slower than a real API would be.
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.bind((host, port))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.state.public_url = self.url
        if count:
            generate_recordings(self.state, count, seed=seed, min_size=min_size, max_size=max_size, platform=platform,
                                archivable=archivable)
        config = uvicorn.Config(create_app(self.state), log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"{self.url}/client/v4"

    @property
    def webhook_public_key_pem(self) -> str:
        """The PEM public key the simulator's webhooks verify with (RTK_WEBHOOK_PUBLIC_KEY)."""
        return self.webhooks.public_key_pem

    @property
    def token(self) -> str:
        return self.state.token

    @property
    def account_id(self) -> str:
        return self.state.account_id

    @property
    def app_id(self) -> str:
        return self.state.app_id

    def start(self) -> "SimulatorServer":
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the simulator did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._sock.close()
        self.webhooks.close()

    def __enter__(self) -> "SimulatorServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(host: str = "127.0.0.1", port: int = 8787, count: int = 40, seed: int = 1,
          webhook_url: str | None = None, webhook_key_file: str | None = None, archivable: bool = False) -> None:
    """Serve in the foreground until interrupted (``rtk-archiver simulator``). ``archivable``:
    only recordings that can be archived here (``generate_recordings``)."""
    sim = SimulatorServer(host=host, port=port, count=count, seed=seed, webhook_url=webhook_url, archivable=archivable)
    _announce_webhooks(sim, webhook_url, webhook_key_file)
    kind = " (all archivable: UPLOADED, no storage_config: they go to ARCHIVE_DEFAULT_DESTINATION)" if archivable else ""
    print(
        f"RealtimeKit simulator on {sim.url} with {count} recordings{kind}\n"
        f"  export CLOUDFLARE_BASE_URL={sim.base_url} CLOUDFLARE_API_TOKEN={sim.token} "
        f"CLOUDFLARE_ACCOUNT_ID={sim.account_id} REALTIMEKIT_APP_ID={sim.app_id}",
        flush=True,
    )
    sim.start()
    try:
        while sim._thread is not None and sim._thread.is_alive():
            sim._thread.join(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()


def _announce_webhooks(sim: SimulatorServer, url: str | None, key_file: str | None) -> None:
    """With ``--webhook-url``: say where webhooks go and where their public key is."""
    if not url and not key_file:
        return
    if key_file:
        with open(key_file, "w") as f:
            f.write(sim.webhook_public_key_pem)
        where = f"  export RTK_WEBHOOK_PUBLIC_KEY_FILE={key_file}"
    else:
        where = "  public key (RTK_WEBHOOK_PUBLIC_KEY):\n" + sim.webhook_public_key_pem
    print(f"Signed recording.statusUpdate webhooks to {url or '(no URL: none sent)'}\n{where}", flush=True)
