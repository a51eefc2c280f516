"""A real S3-compatible server on 127.0.0.1 for the tests: moto's S3 behind werkzeug's threaded
HTTP server, in this process, on a free port, with a thin WSGI layer that injects faults.

What the layer adds to moto (each is what Amazon S3 does and moto 5 does not, or a fault):

- Conditional writes are atomic. moto checks ``If-None-Match: *`` and then writes, with no lock
  between, so two racing writers can both "win"; the layer runs object writes (PUT of an object,
  multipart completion, DELETE) one at a time, as S3's create-if-absent guarantees.
- ``ListMultipartUploads`` reports when each upload started (moto answers a fixed 2010 date):
  the layer rewrites ``Initiated`` with the time it saw ``CreateMultipartUpload`` succeed.
- Faults, armed by a test: answer the next N matching requests with an error status (503
  ``SlowDown``, 500, 412, 409 ...) without running them, or run them and lose the answer
  (the client sees a 500 although the write happened), or stop the whole server when one
  arrives (before or after running it), as a crash of the server in the middle of a client's
  work.
- With ``fast_ranges`` (the benchmark's server, not the tests'), a ranged GET reads only its
  range of the stored bytes, as S3 does; moto reads the whole object for every range, which
  makes any parallel ranged reader look slow.
- ``stop()`` closes the listening socket and every open connection, as a crashed server would;
  ``start()`` again serves the same port with moto's state intact (it lives in this process).

``python tests/s3server.py serve`` serves until its standard input closes, after printing its
endpoint (the benchmark runs it so that the server has its own interpreter). The other commands
are client processes for the tests (see ``_worker``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import ThreadedWSGIServer

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


@dataclass(frozen=True)
class Request:
    """What a fault rule sees of a request."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names

    @property
    def is_part(self) -> bool:
        return self.method == "PUT" and "partNumber" in self.query

    @property
    def is_object_write(self) -> bool:
        """PutObject (not a part), CompleteMultipartUpload or DeleteObject."""
        if self.method == "PUT":
            return not self.is_part and self.path.count("/") >= 2
        if self.method == "POST":
            return "uploadId" in self.query
        return self.method == "DELETE" and "uploadId" not in self.query


@dataclass
class _Rule:
    match: Callable[[Request], bool]
    times: int
    status: int
    code: str
    lose: bool  # run the request, then answer the error instead of its response
    stop: bool = False  # stop the server (after running the request if ``lose``); no answer


@dataclass
class Faults:
    """Errors armed by a test, consumed by the matching requests in order."""

    rules: list[_Rule] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(
        self,
        match: Callable[[Request], bool],
        *,
        times: int = 1,
        status: int = 503,
        code: str = "SlowDown",
    ) -> None:
        """The next ``times`` requests matching ``match`` get ``status``/``code``, not run."""
        with self.lock:
            self.rules.append(_Rule(match, times, status, code, lose=False))

    def lose_response(
        self, match: Callable[[Request], bool], *, times: int = 1, status: int = 500
    ) -> None:
        """The next ``times`` matching requests run, but the client gets ``status`` instead."""
        with self.lock:
            self.rules.append(_Rule(match, times, status, "InternalError", lose=True))

    def stop_server(self, match: Callable[[Request], bool], *, after: bool = False) -> None:
        """The server stops when a request matching ``match`` arrives, before running it (or,
        with ``after``, once it ran): its connection, and every other, is cut unanswered."""
        with self.lock:
            self.rules.append(_Rule(match, 1, 0, "", lose=after, stop=True))

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()

    def take(self, request: Request) -> _Rule | None:
        """The first armed rule matching ``request``, used up once; the match functions run
        outside the lock (one may itself send requests to the server)."""
        with self.lock:
            armed = [rule for rule in self.rules if rule.times > 0]
        for rule in armed:
            if rule.match(request):
                with self.lock:
                    if rule.times > 0:
                        rule.times -= 1
                        return rule
        return None


_MESSAGES = {
    "SlowDown": "Please reduce your request rate.",
    "InternalError": "We encountered an internal error. Please try again.",
    "PreconditionFailed": "At least one of the pre-conditions you specified did not hold",
    "ConditionalRequestConflict": "A conflicting operation occurred. Please try again.",
}


def _error_body(code: str) -> bytes:
    message = _MESSAGES.get(code, code)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        "<RequestId>modelrows-test</RequestId></Error>"
    ).encode()


def _drain(environ: dict[str, Any]) -> None:
    """Reads the request body a short-circuited request leaves, so keep-alive stays in step."""
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH")
    if length:
        remaining = int(length)
        while remaining > 0:
            chunk = stream.read(min(remaining, 1 << 20))
            if not chunk:
                break
            remaining -= len(chunk)
    elif environ.get("wsgi.input_terminated"):
        while stream.read(1 << 20):
            pass


class _Layer:
    """The WSGI layer around moto's app (see the module docstring)."""

    def __init__(self, app: WSGIApp, *, fast_ranges: bool = False) -> None:
        self.app = app
        self.fast_ranges = fast_ranges
        self.faults = Faults()
        self.write_lock = threading.Lock()
        self.started: dict[str, float] = {}  # upload id -> when CreateMultipartUpload succeeded
        self.count_lock = threading.Lock()
        self.requests: list[Request] = []
        self.on_stop: Callable[[], None] = lambda: None  # the server's stop(), for stop rules

    def _call(self, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
        captured: dict[str, Any] = {}

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            captured["status"], captured["headers"] = status, headers
            return lambda data: None

        chunks = self.app(environ, start_response)
        try:
            body = b"".join(chunks)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        return captured["status"], captured["headers"], body

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        headers = {
            k[5:].replace("_", "-").lower(): str(v)
            for k, v in environ.items()
            if k.startswith("HTTP_")
        }
        request = Request(
            environ["REQUEST_METHOD"],
            environ.get("PATH_INFO", ""),
            parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True),
            headers,
        )
        with self.count_lock:
            self.requests.append(request)
        rule = self.faults.take(request)
        if rule is not None and rule.stop:
            if rule.lose:
                self._call(environ)
            else:
                _drain(environ)
            self.on_stop()  # cuts this connection too: the client gets no answer
            return []
        if rule is not None and not rule.lose:
            _drain(environ)
            return self._reply(start_response, rule.status, rule.code)
        if rule is None and not request.is_object_write and "uploads" not in request.query:
            if self.fast_ranges and request.method == "GET" and "range" in headers:
                served = self._ranged_get(environ, start_response)
                if served is not None:
                    return served
            return self.app(environ, start_response)  # reads stream straight through
        if request.is_object_write:
            with self.write_lock:
                status, out_headers, body = self._call(environ)
        else:
            status, out_headers, body = self._call(environ)
        if rule is not None:
            return self._reply(start_response, rule.status, rule.code)
        if "uploads" in request.query and status.startswith("200"):
            body = self._fix_initiated(request, body)
            out_headers = [(k, v) for k, v in out_headers if k.lower() != "content-length"]
            out_headers.append(("Content-Length", str(len(body))))
        start_response(status, out_headers)
        return [body]

    def _ranged_get(
        self, environ: dict[str, Any], start_response: StartResponse
    ) -> list[bytes] | None:
        """A ranged GET answered in O(range), as S3 does (moto reads the whole object for each
        range): moto answers the same request as a HEAD (status, headers, conditions), the
        body comes from the bytes moto stores. None (moto answers) where anything differs."""
        status, headers, _ = self._call({**environ, "REQUEST_METHOD": "HEAD"})
        fields = {k.lower(): v for k, v in headers}
        span = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", fields.get("content-range", ""))
        if not status.startswith("206") or span is None:
            return None
        start, end, total = (int(g) for g in span.groups())
        try:
            from moto.core import DEFAULT_ACCOUNT_ID
            from moto.s3.models import s3_backends

            path = environ["PATH_INFO"].encode("latin-1").decode("utf-8")
            bucket, name = path.lstrip("/").split("/", 1)
            key = s3_backends[DEFAULT_ACCOUNT_ID]["aws"].get_object(bucket, name)
            if key is None or key.etag != fields.get("etag") or key.size != total:
                return None
            with key.lock:
                key._value_buffer.seek(start)
                body = key._value_buffer.read(end - start + 1)
        except Exception:
            return None
        if len(body) != end - start + 1:
            return None
        start_response(status, headers)
        return [body]

    def _fix_initiated(self, request: Request, body: bytes) -> bytes:
        if request.method == "POST":  # CreateMultipartUpload
            found = re.search(rb"<UploadId>([^<]+)</UploadId>", body)
            if found:
                self.started[found.group(1).decode()] = time.time()
            return body

        def fix(upload: re.Match[bytes]) -> bytes:
            block = upload.group(0)
            upload_id = re.search(rb"<UploadId>([^<]+)</UploadId>", block)
            when = self.started.get(upload_id.group(1).decode()) if upload_id else None
            if when is None:
                return block
            stamp = dt.datetime.fromtimestamp(when, dt.timezone.utc)
            text = stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"
            return re.sub(
                rb"<Initiated>[^<]*</Initiated>", f"<Initiated>{text}</Initiated>".encode(), block
            )

        return re.sub(rb"<Upload>.*?</Upload>", fix, body, flags=re.DOTALL)

    @staticmethod
    def _reply(start_response: StartResponse, status: int, code: str) -> list[bytes]:
        body = _error_body(code)
        start_response(
            f"{status} {code}",
            [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))],
        )
        return [body]


class _QuietHandler(MotoRequestHandler):
    def log(self, type: str, message: str, *args: Any) -> None:  # no request log on stderr
        pass


class _Server(ThreadedWSGIServer):
    """werkzeug's threaded server, remembering its open connections so stop() can cut them."""

    def __init__(self, host: str, port: int, app: WSGIApp) -> None:
        self.open_connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(host, port, app, handler=_QuietHandler)

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, address = super().get_request()
        with self.connections_lock:
            self.open_connections.add(conn)
        return conn, address

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.open_connections.discard(request)
        super().shutdown_request(request)

    def cut_connections(self) -> None:
        with self.connections_lock:
            connections = list(self.open_connections)
            self.open_connections.clear()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class S3TestServer:
    """moto's S3 on 127.0.0.1, a free port chosen on the first start and kept on restarts."""

    def __init__(self, *, fast_ranges: bool = False) -> None:
        self.layer = _Layer(
            DomainDispatcherApplication(create_backend_app), fast_ranges=fast_ranges
        )
        self.port = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()  # set while no stop() is under way
        self._stopped.set()
        self.layer.on_stop = self.stop

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def faults(self) -> Faults:
        return self.layer.faults

    @property
    def requests(self) -> list[Request]:
        return self.layer.requests

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        self._stopped.wait(60)  # a stop a fault rule began (in a server thread) ends first
        assert self._server is None, "already running"
        self._server = _Server("127.0.0.1", self.port, self.layer)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops listening and cuts every open connection; in-flight requests fail."""
        if self._server is None:
            return
        self._stopped.clear()  # before the server is gone: start() waits for the rest
        server, self._server = self._server, None
        thread, self._thread = self._thread, None
        try:
            server.shutdown()
            server.server_close()
            server.cut_connections()
            assert thread is not None
            thread.join()
        finally:
            self._stopped.set()

    def __enter__(self) -> S3TestServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client(self) -> Any:
        """A plain botocore S3 client for this server (for checks and setup)."""
        import botocore.session

        return botocore.session.Session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )


_ROW_CLASS: list[Any] = []


def row_class() -> Any:
    """The row class of the S3 catalog tests (declared once per process)."""
    if not _ROW_CLASS:
        from modelrows import ModelV1

        class S3RowV1(ModelV1, schema="s3test.row", version=1):
            run: str
            epoch: int | None = None
            accuracy: float | None = None

        _ROW_CLASS.append(S3RowV1)
    return _ROW_CLASS[0]


def model(seed: int, size: int = 16) -> Any:
    """A small model whose weights depend on ``seed`` alone."""
    import torch

    torch.manual_seed(seed)
    return torch.nn.Linear(size, size)


def ids_of(catalog: Any) -> list[str]:
    """Every row id a catalog's scan returns, sorted."""
    return sorted(catalog.scan().select("row_id").collect().to_series().to_list())


def same_weights(a: Any, b: Any) -> bool:
    """Whether two modules hold the same tensors, names, dtypes and values."""
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    return bool(
        sa.keys() == sb.keys()
        and all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)
    )


def spawn_worker(*args: str) -> subprocess.Popen[str]:
    """A catalog client process running this module (``_catalog_worker``), pipes open."""
    here = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here.parent / "src"), str(here)])}
    return subprocess.Popen(
        [sys.executable, str(here / "s3server.py"), *args],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def release_together(procs: list[subprocess.Popen[str]], *, timeout: float) -> list[str]:
    """Wait until every process (started with pipes) says "ready", tell them all "go", and
    return what each printed, stripped; each must exit 0. Any left running are killed."""
    try:
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline().strip()
            assert line == "ready", p.communicate()[1][-3000:]
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        answers = []
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            assert p.returncode == 0, err[-3000:]
            answers.append(out.strip())
        return answers
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def check_racing_writers(url: str) -> None:
    """Three writer processes, released together, append three rows each to the catalog at
    ``url`` (created already): every acknowledged row is there exactly once, checks, and loads
    into a model equal to the one it was taken from."""
    from modelrows import Catalog, load_weights

    writers = [spawn_worker("append", url, f"w{i}", "3", str(10 * i)) for i in range(3)]
    answers = [json.loads(out) for out in release_together(writers, timeout=240)]
    every = sorted(i for ids in answers for i in ids)
    assert len(set(every)) == 9
    reopened = Catalog.open(url)
    assert ids_of(reopened) == every
    for n, ids in enumerate(answers):
        for epoch, row_id in enumerate(ids):
            row = reopened.get(row_id, verify=True)
            assert (row.run, row.epoch) == (f"w{n}", epoch)  # type: ignore[attr-defined]
            target = model(0)
            load_weights(target, row.weights)  # type: ignore[attr-defined]
            assert same_weights(target, model(10 * n + epoch))


def _catalog_worker(argv: list[str]) -> None:
    """Catalog client processes (see ``_worker``).

    ``append URL RUN N SEED``: print ``ready`` once the catalog is open, wait for a line on
    stdin, append N rows (weights ``model(SEED + i)``, epoch i), print their ids as JSON.
    ``append-stuck URL RUN STAGE``: append one 12 MB row and stop inside the append, printing
    ``stuck``: STAGE ``upload`` after the first part of its multipart upload went out,
    ``publish`` once the row object is written, before its index entry is; the test kills it.
    """
    import json

    from modelrows import Catalog, fetch_weights
    from modelrows._catalog import _s3
    from modelrows._catalog._index import Index

    command, url, run = argv[:3]
    row = row_class()
    catalog = Catalog.open(url)
    if command == "append":
        n, seed = int(argv[3]), int(argv[4])
        len(catalog)  # reads the index: the client and its connections exist before the race
        print("ready", flush=True)
        sys.stdin.readline()
        ids = [
            catalog.append(row(weights=fetch_weights(model(seed + i)), run=run, epoch=i))
            for i in range(n)
        ]
        print(json.dumps(ids), flush=True)
        return
    stage = argv[3]

    def stuck(*args: Any, **kwargs: Any) -> Any:
        print("stuck", flush=True)
        sys.stdin.read()  # until killed

    if stage == "upload":
        send = _s3._Upload._upload_part

        def part_then_stuck(self: Any, number: int, body: bytes) -> Any:
            done = send(self, number, body)
            stuck()
            return done

        _s3._Upload._upload_part = part_then_stuck  # type: ignore[method-assign]
    else:
        Index.publish_add = stuck  # type: ignore[method-assign]
    catalog.append(row(weights=fetch_weights(model(0, 1750)), run=run))


def _worker(argv: list[str]) -> None:
    """Client processes for the tests, configured by the AWS environment variables alone.

    ``put URL KEY TAG SIZE`` and ``stream URL KEY TAG SIZE``: print ``ready`` once connected,
    wait for a line on stdin, write SIZE bytes of TAG under KEY, print ``created`` or
    ``existed``. ``hang URL KEY SIZE``: stream SIZE bytes, print ``uploading``, then wait
    forever inside the writer (the test kills the process).
    """
    from modelrows._catalog._s3 import S3Store

    command, url, key = argv[:3]
    store = S3Store(url, part_size=5 << 20)
    if command == "hang":
        size = int(argv[3])

        def stall(out: Any) -> None:
            out.write(b"h" * size)
            print("uploading", flush=True)
            sys.stdin.read()

        store.put_stream_if_absent(key, stall)
        return
    tag, size = argv[3].encode(), int(argv[4])
    store.size("warm-up")  # makes the client and its connection before the race
    print("ready", flush=True)
    sys.stdin.readline()
    data = (tag * (size // len(tag) + 1))[:size]
    if command == "put":
        created = store.put_if_absent(key, data)
    else:
        created = store.put_stream_if_absent(key, lambda out: out.write(data) and None)
    print("created" if created else "existed", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        with S3TestServer(fast_ranges="--fast-ranges" in sys.argv) as served:
            print(served.endpoint, flush=True)
            sys.stdin.read()
    elif sys.argv[1].startswith("append"):
        _catalog_worker(sys.argv[1:])
    else:
        _worker(sys.argv[1:])
