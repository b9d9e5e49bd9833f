"""The VNC console end to end on real parts: a TCG guest whose VGA console shows a prompt, QEMU's
VNC server on a unix socket in the run's directory, the launcher and handler relays, the
controller's VncService and web console; read with an RFB client through `corral vnc
--proxy-only` and with headless Chromium on the web page, both checked by OCR (tesseract).
Tokens: single use, expiry, refusals; a viewer certificate is refused the stream and tokens."""
from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import grpc
import pytest

from corral.v1 import vm_pb2, vnc_pb2, vnc_pb2_grpc
from tests.browser import Browser, chromium
from tests.cluster import REPO, Cluster, free_port, wait_for
from tests.rfb import RFBClient, ocr, write_pgm
from tests.test_mtls import TLSCluster, certs  # noqa: F401 - certs is a fixture used below

RUNNING = vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING
#: The test guest's prompt on tty1 (scripts/build-guest.sh), as OCR reads it ("g" may come out "q").
PROMPT = re.compile(r"[gq]uest:tty", re.IGNORECASE)
needs_ocr = pytest.mark.skipif(shutil.which("tesseract") is None,
                               reason="tesseract is not installed (scripts/install.sh installs tesseract-ocr)")


# -- pure parts -----------------------------------------------------------------------------------

def test_domain_has_a_vnc_socket_and_no_tcp_port():
    from launcher.domain_xml import DomainOptions, build_domain_xml
    vm = vm_pb2.VirtualMachine()
    vm.metadata.name, vm.metadata.uid = "screen", "0f" * 16
    vm.spec.vcpus, vm.spec.memory_mib = 1, 128
    vm.spec.boot.kernel.kernel_path = "/k"
    domain = ET.fromstring(build_domain_xml(vm, DomainOptions(emulation=True, serial_log_path="/r/serial.log",
                                                              vnc_socket_path="/r/vnc.sock")))
    [graphics] = domain.findall("devices/graphics")
    assert graphics.attrib == {"type": "vnc", "socket": "/r/vnc.sock"}  # no port, no listen address
    assert domain.find("devices/video/model").get("type") == "vga"
    plain = ET.fromstring(build_domain_xml(vm, DomainOptions(emulation=True, serial_log_path="/r/serial.log")))
    assert plain.find("devices/graphics") is None
    vm.spec.headless = True  # KubeVirt's autoattachGraphicsDevice: false
    headless = ET.fromstring(build_domain_xml(vm, DomainOptions(emulation=True, serial_log_path="/r/serial.log",
                                                                vnc_socket_path="/r/vnc.sock")))
    assert headless.find("devices/graphics") is None and headless.find("devices/video") is None


def test_web_console_settings_are_secure_by_default():
    from corral.settings import ControllerSettings
    assert ControllerSettings().web_console_listen == ""  # off
    assert ControllerSettings(web_console_listen="127.0.0.1:0").plaintext_problems() == []
    [problem] = ControllerSettings(web_console_listen="0.0.0.0:7200").plaintext_problems()
    assert "web_console_listen 0.0.0.0:7200 would serve plaintext" in problem
    assert ControllerSettings(web_console_listen="0.0.0.0:7200", insecure=True).plaintext_problems() == []
    for bad in ({"web_console_listen": "7200"}, {"web_console_listen": "h:99999"}, {"web_console_url": "ftp://x"}):
        with pytest.raises(ValueError):
            ControllerSettings(**bad)


# -- a real cluster -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vnc_cluster(etcd, guest_dir, tmp_path_factory):
    made = Cluster(etcd=etcd, base=tmp_path_factory.mktemp("vnc"), prefix=f"/t-{uuid.uuid4().hex[:8]}/",
                   guest_dir=guest_dir)
    try:
        made.web_port = free_port()
        made.start_controller(extra=["--web-console-listen", f"127.0.0.1:{made.web_port}"])
        made.start_handler("n1", vcpus=4, memory_mib=1024)
        made.create(made.guest_vm("screen"))
        made.wait_phase("screen", RUNNING, timeout=120)  # TCG on a loaded machine
        serial = Path(made.get("screen").status.serial_log_path)
        wait_for(lambda: serial.exists() and b"CORRAL-GUEST-READY" in serial.read_bytes(), timeout=120,
                 what="the guest's readiness line")
        yield made
    finally:
        made.close()


def _vnc(cluster: Cluster) -> vnc_pb2_grpc.VncServiceStub:
    return vnc_pb2_grpc.VncServiceStub(cluster.channel())


def _screen_text(client: RFBClient, work: Path) -> str:
    write_pgm(work / "screen.pgm", client.screen(), client.width, client.height)
    return ocr(work / "screen.pgm")


def _until_screen_shows(client: RFBClient, work: Path, pattern: re.Pattern, timeout: float = 60) -> str:
    text = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = _screen_text(client, work)
        if pattern.search(text):
            return text
        time.sleep(1)
    raise AssertionError(f"the screen never showed {pattern.pattern!r}; last read:\n{text}")


@needs_ocr
def test_corral_vnc_proxy_shows_the_guest_prompt_and_types(vnc_cluster, tmp_path):
    """`corral vnc NAME --proxy-only` prints a local address; a VNC client there gets the guest's
    VGA screen (the tty1 prompt) and its keys reach the guest's shell."""
    address = vnc_cluster.controllers["c1"][1]
    proxy = subprocess.Popen([sys.executable, "-m", "corral.cli", "--server", address, "vnc", "screen",
                              "--proxy-only"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proxy.stdout.readline().strip()
        host, _, port = line.rpartition(":")
        assert host == "127.0.0.1" and port.isdigit(), (line, proxy.stderr.read() if proxy.poll() is not None else "")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            client = RFBClient(sock)
            client.handshake()
            assert (client.width, client.height) == (720, 400) and "screen" in client.name  # VGA text mode
            _until_screen_shows(client, tmp_path, PROMPT)
            client.type("uname -s\n")
            text = _until_screen_shows(client, tmp_path, re.compile(r"^Linux\s*$", re.MULTILINE), timeout=30)
            assert PROMPT.search(text)
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)


def test_vnc_bad_requests_get_clear_statuses(vnc_cluster):
    stub = _vnc(vnc_cluster)

    def first_error(*requests: vnc_pb2.OpenVncRequest) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as caught:
            next(stub.OpenVnc(iter(requests), timeout=20))
        return caught.value

    assert first_error().code() == grpc.StatusCode.INVALID_ARGUMENT
    assert first_error(vnc_pb2.OpenVncRequest(data=b"x")).code() == grpc.StatusCode.INVALID_ARGUMENT
    assert first_error(vnc_pb2.OpenVncRequest(name="Bad_Name")).code() == grpc.StatusCode.INVALID_ARGUMENT
    missing = first_error(vnc_pb2.OpenVncRequest(name="nosuch"))
    assert missing.code() == grpc.StatusCode.NOT_FOUND and "nosuch" in missing.details()
    pending = vnc_cluster.guest_vm("nowhere", node_selector={"nowhere": "true"})
    vnc_cluster.create(pending)
    idle = first_error(vnc_pb2.OpenVncRequest(name="nowhere"))
    assert idle.code() == grpc.StatusCode.FAILED_PRECONDITION and "no run on a node" in idle.details()
    blind = vnc_cluster.guest_vm("blind", node_selector={"nowhere": "true"})
    blind.spec.headless = True
    vnc_cluster.create(blind)
    headless = first_error(vnc_pb2.OpenVncRequest(name="blind"))
    assert headless.code() == grpc.StatusCode.FAILED_PRECONDITION and "no display" in headless.details()

    address = vnc_cluster.controllers["c1"][1]
    for name, expected in (("nowhere", "has no run on a node (phase PENDING)"), ("nosuch", "NOT_FOUND")):
        cli = subprocess.run([sys.executable, "-m", "corral.cli", "--server", address, "vnc", name, "--proxy-only"],
                             cwd=REPO, capture_output=True, text=True, timeout=30)
        assert cli.returncode == 1 and expected in cli.stderr and not cli.stdout, cli

    for request, code in ((vnc_pb2.CreateVncTokenRequest(name="screen", ttl_seconds=601), "INVALID_ARGUMENT"),
                          (vnc_pb2.CreateVncTokenRequest(name="screen", ttl_seconds=-1), "INVALID_ARGUMENT"),
                          (vnc_pb2.CreateVncTokenRequest(name=""), "INVALID_ARGUMENT"),
                          (vnc_pb2.CreateVncTokenRequest(name="nosuch"), "NOT_FOUND")):
        with pytest.raises(grpc.RpcError) as caught:
            stub.CreateVncToken(request, timeout=10)
        assert caught.value.code().name == code, (request, caught.value)


async def _websocket_status(url: str, *, origin: str | None = None) -> tuple[int, bytes]:
    """(101, the first bytes the server sent) for an opened WebSocket, else (HTTP status, b"")."""
    headers = {"Origin": origin} if origin else {}
    async with aiohttp.ClientSession() as session:
        try:
            async with session.ws_connect(url, protocols=("binary",), headers=headers) as ws:
                message = await ws.receive(timeout=20)
                return 101, message.data if message.type == aiohttp.WSMsgType.BINARY else b""
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status, b""



def test_open_displays_are_bounded_so_unary_calls_keep_their_threads(vnc_cluster):
    """Each open display (like each console) holds one of the replica's unary threads: past 16
    at once one more is refused with RESOURCE_EXHAUSTED instead of starving other calls; the
    API still answers meanwhile, and a closed display frees its place."""
    stub = _vnc(vnc_cluster)
    stop = threading.Event()

    def keep_open() -> Iterator[vnc_pb2.OpenVncRequest]:
        yield vnc_pb2.OpenVncRequest(name="screen")
        stop.wait(60)

    calls = [stub.OpenVnc(keep_open(), timeout=60) for _ in range(16)]
    try:
        for call in calls:  # QEMU's greeting came through: the display is open and held
            assert next(call).data.startswith(b"RFB ")
        with pytest.raises(grpc.RpcError) as refused:
            next(stub.OpenVnc(keep_open(), timeout=20))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "limit 16" in refused.value.details()
        assert vnc_cluster.get("screen").metadata.name == "screen"
        calls.pop().cancel()
        wait_for(lambda: next(stub.OpenVnc(keep_open(), timeout=20)).data.startswith(b"RFB "),
                 timeout=10, what="a freed place")
    finally:
        stop.set()
        for call in calls:
            call.cancel()


def test_web_console_tokens_are_single_use_and_expire(vnc_cluster):
    stub = _vnc(vnc_cluster)
    base = f"ws://127.0.0.1:{vnc_cluster.web_port}/websockify?token="
    made = stub.CreateVncToken(vnc_pb2.CreateVncTokenRequest(name="screen"), timeout=10)
    assert made.url == f"http://127.0.0.1:{vnc_cluster.web_port}/vnc.html#token={made.token}"
    assert 55 <= made.expire_time.seconds - time.time() <= 61

    # A page of another origin may not use it (and does not use it up).
    assert asyncio.run(_websocket_status(base + made.token, origin="http://evil.example")) == (403, b"")
    status, first = asyncio.run(_websocket_status(base + made.token))
    assert status == 101 and first.startswith(b"RFB 003.008"), (status, first)
    assert asyncio.run(_websocket_status(base + made.token))[0] == 403  # used up

    short = stub.CreateVncToken(vnc_pb2.CreateVncTokenRequest(name="screen", ttl_seconds=1), timeout=10)
    time.sleep(2.5)
    assert asyncio.run(_websocket_status(base + short.token))[0] == 403  # expired
    assert asyncio.run(_websocket_status(base + "x" * 43))[0] == 403  # never made
    assert asyncio.run(_websocket_status(base + "not a token!"))[0] == 400
    assert asyncio.run(_websocket_status(base))[0] == 400

    # A token is bound to the VM it was made for: the VM deleted and made again, it is refused.
    # (Its own VM: under pytest-xdist this module's tests may run in other workers' clusters.)
    vnc_cluster.create(vnc_cluster.guest_vm("remade", node_selector={"nowhere": "true"}))
    stale = stub.CreateVncToken(vnc_pb2.CreateVncTokenRequest(name="remade"), timeout=10)
    vnc_cluster.vms.DeleteVirtualMachine(vm_pb2.DeleteVirtualMachineRequest(name="remade"), timeout=10)
    wait_for(lambda: "remade" not in {vm.metadata.name for vm in vnc_cluster.vms.ListVirtualMachines(
        vm_pb2.ListVirtualMachinesRequest(), timeout=10).virtual_machines}, timeout=20, what="remade to go")
    vnc_cluster.create(vnc_cluster.guest_vm("remade", node_selector={"nowhere": "true"}))
    assert asyncio.run(_websocket_status(base + stale.token))[0] == 403


@needs_ocr
@pytest.mark.skipif(chromium() is None, reason="chromium is not installed (scripts/install.sh installs it)")
def test_web_console_page_shows_the_guest_prompt_in_chromium(vnc_cluster, tmp_path):
    """`corral vnc NAME --web` prints a link; headless Chromium opens it, noVNC connects over
    the WebSocket bridge and the page shows the guest's tty1 prompt (screenshot, OCR)."""
    address = vnc_cluster.controllers["c1"][1]
    url = subprocess.run([sys.executable, "-m", "corral.cli", "--server", address, "vnc", "screen", "--web"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    assert re.fullmatch(rf"http://127\.0\.0\.1:{vnc_cluster.web_port}/vnc\.html#token=[\w-]+", url), url

    async def look() -> tuple[str, str]:
        async with Browser() as page:
            await page.navigate(url)
            deadline = time.monotonic() + 30
            while await page.evaluate("document.body && document.body.dataset.state || ''") != "connected":
                assert time.monotonic() < deadline, await page.evaluate("document.body.innerText")
                await asyncio.sleep(0.5)
            assert "token" not in await page.evaluate("location.href")  # dropped from the history
            text = ""
            while time.monotonic() < deadline + 30:
                await page.screenshot(tmp_path / "page.png")
                text = ocr(tmp_path / "page.png")
                if PROMPT.search(text):
                    break
                await asyncio.sleep(1)
            return text, await page.evaluate("document.getElementById('status').textContent")

    text, status = asyncio.run(look())
    assert PROMPT.search(text), text
    assert status == "connected"


# -- identities (mutual TLS) ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_web_cluster(etcd, certs, tmp_path_factory):  # noqa: F811 - certs: the fixture imported above
    made = TLSCluster(certs=certs, etcd=etcd, base=tmp_path_factory.mktemp("vnc-tls"),
                      prefix=f"/t-{uuid.uuid4().hex[:8]}/", guest_dir=Path("/nonexistent"))
    made.web_port = free_port()
    config = made.write_config("controller-c1", {
        "tls_cert_file": certs["server"].cert, "tls_key_file": certs["server"].key,
        "tls_client_ca_file": certs["ca"].cert, "web_console_listen": f"127.0.0.1:{made.web_port}"})
    made.start_controller("c1", extra=["--config", config])
    yield made
    made.close()


def test_a_viewer_gets_neither_the_display_nor_a_token(tls_web_cluster):
    pending = vm_pb2.VirtualMachine()
    pending.metadata.name = "guarded"
    pending.spec.vcpus, pending.spec.memory_mib = 1, 64
    pending.spec.boot.kernel.kernel_path = "/nonexistent/vmlinuz"
    pending.spec.node_selector["nowhere"] = "true"
    tls_web_cluster.create(pending)
    for cert in ("viewer", "no-role", "n1"):
        stub = vnc_pb2_grpc.VncServiceStub(tls_web_cluster.secure_channel(cert))
        with pytest.raises(grpc.RpcError) as caught:
            next(stub.OpenVnc(iter([vnc_pb2.OpenVncRequest(name="guarded")]), timeout=10))
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, (cert, caught.value)
        with pytest.raises(grpc.RpcError) as caught:
            stub.CreateVncToken(vnc_pb2.CreateVncTokenRequest(name="guarded"), timeout=10)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, (cert, caught.value)
    admin = vnc_pb2_grpc.VncServiceStub(tls_web_cluster.secure_channel("admin"))
    made = admin.CreateVncToken(vnc_pb2.CreateVncTokenRequest(name="guarded"), timeout=10)
    # The web console speaks HTTPS with the controller's certificate (the cluster CA's).
    assert made.url.startswith(f"https://127.0.0.1:{tls_web_cluster.web_port}/vnc.html#token=")

    async def fetch() -> tuple[int, str]:
        import ssl
        context = ssl.create_default_context(cafile=str(tls_web_cluster.certs["ca"].cert))
        async with aiohttp.ClientSession() as session:
            async with session.get(made.url.split("#")[0], ssl=context) as response:
                return response.status, await response.text()
    status, page = asyncio.run(fetch())
    assert status == 200 and "console.js" in page

    async def websocket(token: str) -> int:
        import ssl
        context = ssl.create_default_context(cafile=str(tls_web_cluster.certs["ca"].cert))
        async with aiohttp.ClientSession() as session:
            try:
                async with session.ws_connect(f"wss://127.0.0.1:{tls_web_cluster.web_port}/websockify?token={token}",
                                              ssl=context):
                    return 101
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status
    # Over wss the token is taken, then the VM is found to have no run (409); then it is gone (403).
    assert asyncio.run(websocket(made.token)) == 409
    assert asyncio.run(websocket(made.token)) == 403


def test_node_vnc_service_is_for_controllers_and_admins_only(tls_web_cluster):
    """The handler's NodeVncService sits behind the same checks as NodeAgentService."""
    from corral import tls
    from corral.v1 import node_pb2
    certs = tls_web_cluster.certs
    tls_web_cluster.start_tls_handler("n1", "n1")
    address = tls_web_cluster.nodes.GetNode(node_pb2.GetNodeRequest(name="n1"), timeout=5).node.status.address
    request = vnc_pb2.AttachInstanceVncRequest(name="vm", instance_uid=str(uuid.uuid4()))

    def refusal(cert: str) -> grpc.RpcError:
        issued = certs[cert]
        credentials = tls.channel_credentials(str(certs["ca"].cert), str(issued.cert), str(issued.key))
        with grpc.secure_channel(address, credentials) as channel:
            with pytest.raises(grpc.RpcError) as caught:
                next(vnc_pb2_grpc.NodeVncServiceStub(channel).AttachInstanceVnc(iter([request]), timeout=10))
        return caught.value

    for allowed in ("server", "admin"):  # a controller's certificate, an admin's: through, no such run
        assert refusal(allowed).code() == grpc.StatusCode.NOT_FOUND
    for refused in ("viewer", "no-role", "n1"):
        assert refusal(refused).code() == grpc.StatusCode.PERMISSION_DENIED, refused
