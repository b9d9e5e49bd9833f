"""The web VNC console: a small HTTPS server (aiohttp, on the API server's event loop) that
serves noVNC (the npm package @novnc/novnc, installed by scripts/install.sh: no CDN) and a
page using it, and bridges a WebSocket to a VM's display (controller/vnc.py open_display).

A browser cannot present the client certificate, so the WebSocket must carry a console token
(CreateVncToken, an admin call): the page's URL holds it in its fragment (never sent in the
page's own request), the page passes it in the WebSocket's query, and the token is used up by
that connection. Off unless ``web_console_listen`` is set; HTTPS with the controller's
certificate, plaintext only on loopback or with --insecure (ControllerSettings)."""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import grpc
from aiohttp import WSMsgType, web

from controller import node_agents
from controller.errors import RequestError
from controller.vnc import open_display, use_token
from corral.resources import VMS
from corral.settings import ControllerSettings
from corral.store import NotFound, Store, Unavailable

log = logging.getLogger(__name__)

PAGE_DIR = Path(__file__).with_name("web")
#: Where scripts/install.sh puts noVNC (npm install @novnc/novnc in .local/).
DEFAULT_NOVNC_DIR = Path(__file__).resolve().parent.parent / ".local" / "node_modules" / "@novnc" / "novnc"
#: A browser's message of input is small; a screen update the other way can be large.
MAX_MESSAGE_BYTES = 1 << 20
HEADERS = {
    # Scripts and styles from this server only; the WebSocket to this server only.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
                               "connect-src 'self'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.UNAVAILABLE: 503,
}


def novnc_dir(settings: ControllerSettings) -> Path:
    return Path(settings.novnc_dir) if settings.novnc_dir else DEFAULT_NOVNC_DIR


class WebConsole:
    """``start()`` on the API server's loop; ``url`` is the base browsers use once started."""

    def __init__(self, settings: ControllerSettings, store: Store, agents: node_agents.NodeAgents) -> None:
        self.settings = settings
        self.store = store
        self.agents = agents
        self.url = ""
        self._runner: web.AppRunner | None = None

    def _ssl(self) -> ssl.SSLContext | None:
        if not self.settings.tls_cert_file:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.settings.tls_cert_file, self.settings.tls_key_file)
        return context

    async def start(self) -> None:
        """Listen; SystemExit when noVNC is missing or the address cannot be bound."""
        listen = self.settings.web_console_listen
        novnc = novnc_dir(self.settings)
        if not (novnc / "core" / "rfb.js").is_file():
            raise SystemExit(f"corral-controller: web_console_listen is set but noVNC is not in {novnc} "
                             "(scripts/install.sh installs it; or set novnc_dir)")
        app = web.Application(middlewares=[_headers])
        app.router.add_get("/", _index)
        app.router.add_get("/vnc.html", _page_file("vnc.html"))
        app.router.add_get("/console.js", _page_file("console.js"))
        app.router.add_static("/novnc/core", novnc / "core")
        app.router.add_static("/novnc/vendor", novnc / "vendor")
        app.router.add_get("/websockify", self._websockify)
        self._runner = web.AppRunner(app, access_log=None)  # the WebSocket's query holds a token
        await self._runner.setup()
        host, _, port = listen.rpartition(":")
        context = self._ssl()
        site = web.TCPSite(self._runner, host.strip("[]"), int(port), ssl_context=context)
        try:
            await site.start()
        except OSError as exc:
            raise SystemExit(f"corral-controller: cannot listen on {listen} (web console): {exc}") from None
        bound = site._server.sockets[0].getsockname()[1]  # port 0: the one the kernel chose
        scheme = "https" if context else "http"
        self.url = self.settings.web_console_url or f"{scheme}://{host}:{bound}"
        log.info("web console on %s (%s)%s", listen, self.url,
                 "" if context else ": plaintext, loopback or --insecure only")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _websockify(self, request: web.Request) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin and urlsplit(origin).netloc != request.host:
            return web.Response(status=403, text="cross-origin WebSocket refused\n")
        loop = asyncio.get_running_loop()
        try:
            record = await loop.run_in_executor(None, self._check, request.query.get("token", ""))
        except RequestError as exc:
            return web.Response(status=_HTTP_STATUS.get(exc.code, 500), text=f"{exc}\n")
        except NotFound as exc:
            return web.Response(status=404, text=f"{exc}\n")
        except Unavailable as exc:
            return web.Response(status=503, text=f"{exc}\n")
        ws = web.WebSocketResponse(protocols=("binary",), max_msg_size=MAX_MESSAGE_BYTES, heartbeat=30)
        await ws.prepare(request)
        log.info("web console of vm %s opened (token of %s)", record.vm_name, record.created_by)
        await self._bridge(ws, record.vm_name)
        return ws

    def _check(self, token: str):
        """The token's record (used up now), once its VM is found to have a run on a node."""
        record = use_token(self.store, token)
        vm = self.store.get(VMS, record.vm_name)
        if vm.spec.headless:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"vm {vm.metadata.name!r} has no display")
        self.agents.live_run(vm)
        return record

    async def _bridge(self, ws: web.WebSocketResponse, name: str) -> None:
        """Browser bytes -> the display, the display's bytes -> the browser, on a thread of its
        own for the blocking gRPC stream (the loop's default executor is small)."""
        loop = asyncio.get_running_loop()
        inputs: queue.Queue[bytes | None] = queue.Queue()
        outputs: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=64)
        ended = threading.Event()

        def viewer_bytes() -> Iterator[bytes]:
            while (data := inputs.get()) is not None:
                yield data

        def pump() -> None:
            try:
                for data in open_display(self.store, self.agents, name, b"", viewer_bytes(), ended):
                    if not hand_over(data):
                        return
            except Exception as exc:  # noqa: BLE001 - any end of the display closes the page's socket
                log.info("web console of vm %s: %s", name, exc)
            finally:
                if not ended.is_set():
                    asyncio.run_coroutine_threadsafe(outputs.put(None), loop)

        def hand_over(data: bytes) -> bool:
            """Queue ``data`` for the browser, waiting while it is slow; False once it left."""
            put = asyncio.run_coroutine_threadsafe(outputs.put(data), loop)
            while True:
                try:
                    put.result(timeout=1)
                    return True
                except concurrent.futures.TimeoutError:
                    if ended.is_set():
                        put.cancel()
                        return False

        async def send() -> None:
            while (data := await outputs.get()) is not None:
                await ws.send_bytes(data)
            await ws.close()

        threading.Thread(target=pump, name=f"web-vnc-{name}", daemon=True).start()
        sender = asyncio.ensure_future(send())
        try:
            async for message in ws:
                if message.type == WSMsgType.BINARY:
                    inputs.put(message.data)
                elif message.type == WSMsgType.ERROR:
                    break
        finally:
            ended.set()
            inputs.put(None)
            try:
                await asyncio.wait_for(sender, timeout=5)
            except (asyncio.TimeoutError, ConnectionError):
                sender.cancel()
            log.info("web console of vm %s closed", name)


async def _index(_request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/vnc.html")


def _page_file(name: str):
    async def serve(_request: web.Request) -> web.StreamResponse:
        return web.FileResponse(PAGE_DIR / name)
    return serve


@web.middleware
async def _headers(request: web.Request, handler) -> web.StreamResponse:
    response = await handler(request)
    if not isinstance(response, web.WebSocketResponse):
        response.headers.update(HEADERS)
    return response
