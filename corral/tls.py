"""TLS and credentials shared by Corral's daemons and clients.

- gRPC credentials from PEM files: channels (etcd, the controller API) and the controller's
  server side (mutual TLS: a client certificate is required);
- a start-up probe of TLS endpoints, so a wrong CA or a refused client certificate stops a
  daemon with a message naming the file and the endpoint instead of endless UNAVAILABLE;
- etcd user/password authentication: a channel interceptor that puts etcd's token on every
  call, authenticates again when etcd says the token is invalid or old, and works on plaintext
  and TLS channels alike.
"""
from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence

import grpc

log = logging.getLogger(__name__)


class TLSConfigError(Exception):
    """A certificate, key or CA file is missing, unreadable or does not fit the peer."""


def file_problem(path: str, what: str) -> str | None:
    """Why ``path`` cannot serve as ``what`` (missing, not a file, unreadable), or None."""
    if not os.path.exists(path):
        return f"{what} {path!r} does not exist"
    if not os.path.isfile(path):
        return f"{what} {path!r} is not a file"
    if not os.access(path, os.R_OK):
        return f"{what} {path!r} is not readable by this user (uid {os.getuid()})"
    return None


def _read(path: str | None, what: str) -> bytes | None:
    if not path:
        return None
    problem = file_problem(path, what)
    if problem:
        raise TLSConfigError(problem)
    with open(path, "rb") as handle:
        data = handle.read()
    if b"-----BEGIN" not in data:
        raise TLSConfigError(f"{what} {path!r} is not PEM (no -----BEGIN line)")
    return data


def ssl_context(ca_file: str | None, cert_file: str | None, key_file: str | None) -> ssl.SSLContext:
    """A client-side context; loading it checks the files and that key and certificate match."""
    for path, what in ((ca_file, "CA file"), (cert_file, "certificate file"), (key_file, "key file")):
        _read(path, what)
    try:
        context = ssl.create_default_context(cafile=ca_file or None)
    except ssl.SSLError as exc:
        raise TLSConfigError(f"CA file {ca_file!r} does not load: {exc}") from exc
    if cert_file:
        try:
            context.load_cert_chain(cert_file, key_file)
        except (ssl.SSLError, OSError) as exc:
            raise TLSConfigError(f"client certificate {cert_file!r} and key {key_file!r} do not load "
                                 f"as a pair: {exc}") from exc
    return context


def channel_credentials(ca_file: str | None = None, cert_file: str | None = None,
                        key_file: str | None = None) -> grpc.ChannelCredentials:
    """Credentials for a TLS channel: trust ``ca_file`` (the system's roots when unset) and
    present ``cert_file``/``key_file`` when given."""
    if bool(cert_file) != bool(key_file):
        raise TLSConfigError("a client certificate needs its key, and a key its certificate")
    ssl_context(ca_file, cert_file, key_file)  # clear errors now rather than at the handshake
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca_file, "CA file"),
        private_key=_read(key_file, "key file"),
        certificate_chain=_read(cert_file, "certificate file"))


def server_credentials(cert_file: str, key_file: str, client_ca_file: str) -> grpc.ServerCredentials:
    """Mutual TLS for a server: its certificate and key, and the CA client certificates must
    be signed by (a client without one is refused during the handshake)."""
    for path, what in ((cert_file, "certificate file"), (key_file, "key file"), (client_ca_file, "client CA file")):
        _read(path, what)
    try:
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=client_ca_file)
        server_context.load_cert_chain(cert_file, key_file)
    except (ssl.SSLError, OSError) as exc:
        raise TLSConfigError(f"server certificate {cert_file!r} and key {key_file!r} do not load "
                             f"as a pair: {exc}") from exc
    return grpc.ssl_server_credentials(
        [(_read(key_file, "key file"), _read(cert_file, "certificate file"))],
        root_certificates=_read(client_ca_file, "client CA file"),
        require_client_auth=True)


def probe(host: str, port: int, context: ssl.SSLContext, *, what: str, timeout: float = 2.0) -> None:
    """Handshake with ``host:port`` once to turn certificate trouble into a clear error.

    An endpoint that cannot be reached is not an error here (it may start later); one whose
    certificate the CA does not vouch for, or that refuses our client certificate, is."""
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        log.info("%s %s:%d not reachable yet (%s): TLS not checked at start", what, host, port, exc)
        return
    try:
        context.set_alpn_protocols(["h2"])
        with context.wrap_socket(raw, server_hostname=host) as tls:
            # With TLS 1.3 a server refuses a client certificate after the handshake: speak
            # first so its alert (if any) arrives now.
            tls.settimeout(timeout)
            tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            tls.recv(9)
    except ssl.SSLCertVerificationError as exc:
        raise TLSConfigError(
            f"{what} {host}:{port} presented a certificate that the configured CA does not "
            f"accept: {exc.verify_message or exc}. Check the CA file and that the server "
            f"certificate names {host}") from exc
    except ssl.SSLError as exc:
        raise TLSConfigError(
            f"{what} {host}:{port} refused the TLS handshake: {exc.reason or exc}. "
            f"Check the client certificate and key, and that the server trusts their CA") from exc
    except OSError as exc:  # reset or timeout after the handshake: not a certificate problem
        log.debug("%s %s:%d TLS probe: %s", what, host, port, exc)
    finally:
        raw.close()


# -- etcd user/password -------------------------------------------------------------------------

AUTHENTICATE_METHOD = "/etcdserverpb.Auth/Authenticate"
#: etcd answers these when a token expired, was issued before a restart or before an auth
#: change: authenticate again (what etcd's Go client does).
_STALE_TOKEN_MESSAGES = ("invalid auth token", "revision of auth store is old", "user name is empty")
#: Re-authenticate at least this often anyway (JWT tokens do not refresh on use).
TOKEN_MAX_AGE_SECONDS = 240.0


def stale_token(code: grpc.StatusCode | None, details: str | None) -> bool:
    return code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT,
                    grpc.StatusCode.FAILED_PRECONDITION) and any(
        text in (details or "") for text in _STALE_TOKEN_MESSAGES)


class _Details(grpc.ClientCallDetails):
    def __init__(self, base: grpc.ClientCallDetails, metadata: Sequence[tuple[str, str]] | None) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = metadata
        self.credentials = base.credentials
        self.wait_for_ready = getattr(base, "wait_for_ready", None)
        self.compression = getattr(base, "compression", None)


class EtcdTokenAuth(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                    grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds etcd's auth token to every call on the channels it intercepts.

    ``authenticate(user, password)`` returns a token; it is called on first use, when the token
    is older than TOKEN_MAX_AGE_SECONDS and after etcd called it invalid (a unary call is then
    retried once; a stream fails once and its owner reopens it with a fresh token)."""

    def __init__(self, user: str, password: str, authenticate: Callable[[str, str], str]) -> None:
        self._user = user
        self._password = password
        self._authenticate = authenticate
        self._lock = threading.Lock()
        self._token: str | None = None
        self._issued = 0.0

    def token(self) -> str:
        with self._lock:
            if self._token is None or time.monotonic() - self._issued > TOKEN_MAX_AGE_SECONDS:
                self._token = self._authenticate(self._user, self._password)
                self._issued = time.monotonic()
            return self._token

    def fresh_token(self) -> str | None:
        """The token held when it is not due for renewal, else None; never calls etcd (for
        callers on an event loop, which must not block: they fetch one with token() off it)."""
        token, issued = self._token, self._issued
        if token is not None and time.monotonic() - issued <= TOKEN_MAX_AGE_SECONDS:
            return token
        return None

    def invalidate(self, token: str) -> None:
        with self._lock:
            if self._token == token:
                self._token = None

    def _with_token(self, details: grpc.ClientCallDetails) -> tuple[grpc.ClientCallDetails, str | None]:
        if details.method == AUTHENTICATE_METHOD:
            return details, None
        token = self.token()
        metadata = [(k, v) for k, v in (details.metadata or ()) if k != "token"]
        metadata.append(("token", token))
        return _Details(details, metadata), token

    def _watch(self, call, token: str | None):
        if token is not None and hasattr(call, "add_done_callback"):
            def done(finished) -> None:
                try:
                    if stale_token(finished.code(), finished.details()):
                        self.invalidate(token)
                except Exception:  # noqa: BLE001 - a cancelled call has no code to inspect
                    pass
            call.add_done_callback(done)
        return call

    def intercept_unary_unary(self, continuation, client_call_details, request):
        details, token = self._with_token(client_call_details)
        outcome = continuation(details, request)
        if token is not None and stale_token(outcome.code(), outcome.details()):
            log.info("etcd refused the auth token (%s): authenticating again", outcome.details())
            self.invalidate(token)
            details, token = self._with_token(client_call_details)
            outcome = continuation(details, request)
        return outcome

    def intercept_unary_stream(self, continuation, client_call_details, request):
        details, token = self._with_token(client_call_details)
        return self._watch(continuation(details, request), token)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        details, token = self._with_token(client_call_details)
        return continuation(details, request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        details, token = self._with_token(client_call_details)
        return self._watch(continuation(details, request_iterator), token)
