"""The S3 store against a real S3-compatible server (moto's, on 127.0.0.1, see s3server.py).

Every primitive, conditional writes refused and raced by separate processes, transient errors
retried, the server stopped mid-upload, a writer killed mid-upload, and no secret in any error.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

pytest.importorskip("botocore")
pytest.importorskip("moto.server")

from modelrows import StorageError
from modelrows._catalog._s3 import S3Store, parse_s3_url
from s3server import Request, S3TestServer, release_together

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
MIB = 1 << 20
SECRET = "SECRETMARKER0123456789abcdefSECRETMARKER"
TOKEN = "TOKENMARKER9876543210TOKENMARKER"


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The standard AWS variables only, nothing from this machine's files or metadata service."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTESTING")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def server(aws_env: None) -> Iterator[S3TestServer]:
    with S3TestServer() as served:
        yield served


@pytest.fixture
def bucket(server: S3TestServer) -> str:
    name = f"test-{uuid.uuid4().hex[:12]}"
    server.client().create_bucket(Bucket=name)
    return name


def make_store(server: S3TestServer, bucket: str, **options: Any) -> S3Store:
    options.setdefault("endpoint_url", server.endpoint)
    options.setdefault("max_attempts", 3)
    options.setdefault("part_size", 5 * MIB)
    return S3Store(f"s3://{bucket}/cat", **options)


@pytest.fixture
def store(server: S3TestServer, bucket: str) -> S3Store:
    return make_store(server, bucket)


def uploads(server: S3TestServer, bucket: str) -> list[str]:
    listed = server.client().list_multipart_uploads(Bucket=bucket)
    return [u["Key"] for u in listed.get("Uploads", [])]


def blob(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def writer_of(data: bytes, piece: int = 999_983) -> Any:
    """A writer callback writing ``data`` in odd-sized pieces, checking tell() as it goes."""

    def write(out: IO[bytes]) -> None:
        for start in range(0, len(data), piece):
            assert out.tell() == start
            out.write(data[start : start + piece])
        out.flush()

    return write


def put_requests(server: S3TestServer, key: str) -> list[Request]:
    return [r for r in server.requests if r.method == "PUT" and r.path.endswith(key)]


def is_object_put(r: Request) -> bool:
    return r.method == "PUT" and not r.is_part


def is_complete(r: Request) -> bool:
    return r.method == "POST" and "uploadId" in r.query


# -- URLs and options ---------------------------------------------------------------------


def test_urls_parse_into_bucket_and_prefix() -> None:
    assert parse_s3_url("s3://my-bucket/ckpts/digits/") == ("my-bucket", "ckpts/digits")
    assert parse_s3_url("s3://my-bucket") == ("my-bucket", "")
    assert parse_s3_url("S3://my-bucket/a") == ("my-bucket", "a")
    store = S3Store("s3://my-bucket/ckpts/")
    assert store.url == "s3://my-bucket/ckpts"
    assert repr(store) == "S3Store('s3://my-bucket/ckpts')"
    assert store.local_path("a/b.arrow") is None


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("gs://bucket/x", "has scheme 'gs'"),
        ("https://example.com/bucket/x", "has scheme 'https'"),
        ("/data/catalog", "has no scheme"),
        ("s3:///x", "names no valid bucket"),
        ("s3://bucket/a//b", "empty, '.' or '..' segment"),
        ("s3://bucket/a/../b", "empty, '.' or '..' segment"),
        ("s3://bucket/x?versionId=3", "query or fragment"),
    ],
)
def test_other_urls_are_refused_naming_what_is_supported(url: str, says: str) -> None:
    with pytest.raises(StorageError) as caught:
        parse_s3_url(url)
    assert says in str(caught.value)
    if "scheme" in says:
        assert str(caught.value).endswith(
            "modelrows reads and writes local paths (or file:///path) and S3 or S3-compatible "
            "object stores as s3://bucket/prefix"
        )
    assert caught.value.step == "parse url"


def test_credentials_in_a_url_are_refused_and_never_echoed() -> None:
    for url in (f"s3://AKID:{SECRET}@bucket/x", f"https://user:{SECRET}@host/x"):
        with pytest.raises(StorageError) as caught:
            S3Store(url)
        assert SECRET not in str(caught.value) and SECRET not in str(caught.value.path)
        assert "***@" in str(caught.value)


def test_options_are_checked_by_name_and_type() -> None:
    store = S3Store.from_url("s3://bucket/p", {"region": "eu-west-1", "max_attempts": 7})
    assert store.url == "s3://bucket/p"
    with pytest.raises(
        StorageError, match=r"unknown S3 option 'endpoint' for s3://bucket/p; known: .*endpoint_url"
    ):
        S3Store.from_url("s3://bucket/p", {"endpoint": "http://x"})
    with pytest.raises(StorageError, match="'max_attempts' for s3://bucket/p must be int, not str"):
        S3Store.from_url("s3://bucket/p", {"max_attempts": "3"})
    with pytest.raises(StorageError, match="outside S3's part sizes"):
        S3Store("s3://bucket/p", part_size=1 * MIB)


def test_import_modelrows_and_making_a_store_load_no_aws_sdk() -> None:
    code = (
        "import sys, modelrows\n"
        "assert 'botocore' not in sys.modules\n"
        "from modelrows._catalog._s3 import S3Store\n"
        "S3Store('s3://bucket/prefix')\n"
        "assert 'botocore' not in sys.modules, 'botocore imported before the first request'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()[-2000:]


# -- the primitives -----------------------------------------------------------------------


def test_put_if_absent_creates_once_and_get_size_read_it(store: S3Store) -> None:
    assert store.put_if_absent("_index/0001.json", b'{"a": 1}') is True
    assert store.put_if_absent("_index/0001.json", b"other") is False
    assert store.get("_index/0001.json") == b'{"a": 1}'
    assert store.size("_index/0001.json") == 8
    assert store.put_if_absent("empty", b"") is True
    assert store.get("empty") == b"" and store.size("empty") == 0
    assert store.read_all("empty") == bytearray()


def test_absent_keys(store: S3Store) -> None:
    assert store.size("nope") is None
    for read in (store.get, store.read_all, lambda k: store.get_ranges(k, [(0, 4)])):
        with pytest.raises(FileNotFoundError) as caught:
            read("dir/nope")
        assert caught.value.filename == f"{store.url}/dir/nope"
    store.delete("dir/nope")  # absent is fine


def test_keys_with_partition_characters_round_trip(store: S3Store) -> None:
    key = "run=a%2Fb c+d/epoch=3/0190-abc.digits.model.arrow"
    assert store.put_if_absent(key, b"row") is True
    assert store.get(key) == b"row"
    assert store.list("run=a%2Fb c+d") == [(key, 3)]


def test_invalid_keys_are_refused(store: S3Store) -> None:
    for key in ("", "/abs", "a//b", "a/../b", "./a"):
        with pytest.raises(StorageError, match="invalid key"):
            store.put_if_absent(key, b"x")


def test_list_is_recursive_sorted_relative_and_stays_under_its_prefix(
    server: S3TestServer, bucket: str, store: S3Store
) -> None:
    for key, data in [("b/2", b"22"), ("a/x/1", b"1"), ("a/0", b""), ("ab/3", b"333")]:
        store.put_if_absent(key, data)
    server.client().put_object(Bucket=bucket, Key="cat2/not-mine", Body=b"x")
    server.client().put_object(Bucket=bucket, Key="outside", Body=b"x")
    assert store.list("") == [("a/0", 0), ("a/x/1", 1), ("ab/3", 3), ("b/2", 2)]
    assert store.list("a") == [("a/0", 0), ("a/x/1", 1)]  # a directory: not "ab/"
    assert store.list("a/") == store.list("a")
    assert store.list("zzz") == []
    root = S3Store(f"s3://{bucket}", endpoint_url=server.endpoint)
    assert [k for k, _ in root.list("")] == [
        "cat/a/0", "cat/a/x/1", "cat/ab/3", "cat/b/2", "cat2/not-mine", "outside"
    ]  # fmt: skip


def test_list_pages_past_a_thousand_keys(store: S3Store) -> None:
    names = [f"rows/{i:05d}" for i in range(1005)]
    store._map(lambda n: store.put_if_absent(n, b"x"), names)
    listed = store.list("rows")
    assert [k for k, _ in listed] == names


def test_delete_removes_and_allows_a_new_create(store: S3Store) -> None:
    store.put_if_absent("k", b"1")
    store.delete("k")
    assert store.size("k") is None and store.list("") == []
    assert store.put_if_absent("k", b"2") is True and store.get("k") == b"2"


def test_get_ranges_in_any_order_with_gaps_overlaps_and_ends(
    server: S3TestServer, store: S3Store
) -> None:
    data = blob(5 * MIB)
    store.put_if_absent("obj", data)
    ranges = [
        (10, 20),
        (0, 5),
        (15, 4 * MIB),
        (4 * MIB + 10, 4 * MIB + 10),
        (5 * MIB - 3, 5 * MIB + 99),
    ]
    before = len(server.requests)
    got = store.get_ranges("obj", ranges)
    assert got == [data[s:e] for s, e in ranges]  # the last one is cut at the end of the object
    gets = [r for r in server.requests[before:] if r.method == "GET"]
    assert len(gets) == 1, "ranges within 1 MiB of each other share one request"
    far = [(0, 10), (3 * MIB, 3 * MIB + 10), (5 * MIB + 10, 5 * MIB + 20)]
    assert store.get_ranges("obj", far) == [data[0:10], data[3 * MIB : 3 * MIB + 10], b""]
    with pytest.raises(StorageError, match=r"invalid byte range \(5, 2\)"):
        store.get_ranges("obj", [(5, 2)])


@pytest.mark.parametrize("size", [1, 3 * MIB, 3 * MIB + 1, 7 * MIB + 12345])
def test_read_all_reads_objects_of_any_size_in_ranges(
    server: S3TestServer, bucket: str, size: int
) -> None:
    store = make_store(server, bucket, read_chunk_size=1 * MIB, max_concurrency=3)
    data = blob(size, seed=size)
    store.put_if_absent("big", data)
    before = len(server.requests)
    got = store.read_all("big")
    assert isinstance(got, bytearray) and got == data
    gets = [r for r in server.requests[before:] if r.method == "GET"]
    assert len(gets) == -(-size // MIB), "one request per chunk, the first one learning the size"


def test_read_all_refuses_an_object_replaced_while_it_reads(
    server: S3TestServer, bucket: str
) -> None:
    store = make_store(server, bucket, read_chunk_size=1 * MIB, max_concurrency=1)
    store.put_if_absent("big", blob(4 * MIB))
    client = server.client()
    replaced = []

    def replace_before_second_get(r: Request) -> bool:  # runs in the server, before the request
        ranged = r.method == "GET" and r.headers.get("range", "bytes=0-")
        if ranged and not ranged.startswith("bytes=0-") and not replaced:
            replaced.append(True)
            client.put_object(Bucket=bucket, Key="cat/big", Body=blob(4 * MIB, seed=9))
        return False

    server.faults.fail(replace_before_second_get, times=1)
    with pytest.raises(StorageError, match="replaced while being read"):
        store.read_all("big")


# -- streamed (multipart) writes ------------------------------------------------------------


def test_put_stream_writes_a_multipart_object_once(
    server: S3TestServer, bucket: str, store: S3Store
) -> None:
    data = blob(12 * MIB + 7)
    assert store.put_stream_if_absent("rows/big.arrow", writer_of(data)) is True
    assert store.read_all("rows/big.arrow") == data
    assert len([r for r in server.requests if r.is_part]) == 3
    other = blob(11 * MIB, seed=1)
    assert store.put_stream_if_absent("rows/big.arrow", writer_of(other)) is False
    assert store.get("rows/big.arrow") == data
    assert uploads(server, bucket) == [], "the refused upload was aborted"


def test_put_stream_of_a_small_object_is_one_conditional_put(
    server: S3TestServer, store: S3Store
) -> None:
    assert store.put_stream_if_absent("small", writer_of(b"abc" * 1000, piece=7)) is True
    assert store.put_stream_if_absent("small", writer_of(b"x")) is False
    assert store.get("small") == b"abc" * 1000
    assert not any("uploads" in r.query for r in server.requests)


def test_put_if_absent_of_big_bytes_streams_them(server: S3TestServer, bucket: str) -> None:
    store = make_store(server, bucket, max_concurrency=2)
    data = blob(41 * MIB)
    assert store.put_if_absent("huge", memoryview(data)) is True
    assert len([r for r in server.requests if r.is_part]) == 9
    assert store.read_all("huge") == data


def test_a_failing_writer_leaves_nothing_and_its_error_propagates(
    server: S3TestServer, bucket: str, store: S3Store
) -> None:
    class Boom(Exception):
        pass

    def write(out: IO[bytes]) -> None:
        out.write(blob(11 * MIB))
        raise Boom("the writer failed")

    with pytest.raises(Boom, match="the writer failed"):
        store.put_stream_if_absent("rows/x.arrow", write)
    assert store.size("rows/x.arrow") is None
    assert uploads(server, bucket) == []
    assert store.put_stream_if_absent("rows/x.arrow", writer_of(b"ok")) is True


# -- conditional writes raced and refused ----------------------------------------------------


def spawn(args: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.Popen(
        [sys.executable, str(HERE / "s3server.py"), *args],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def race(
    monkeypatch: pytest.MonkeyPatch, server: S3TestServer, command: str, url: str, size: int, n: int
) -> list[str]:
    """Starts n writer processes, lets them all go at once, returns each one's answer."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)  # the workers see only the env
    workers = [spawn([command, url, "same/key", f"w{i}-", str(size)]) for i in range(n)]
    return release_together(workers, timeout=120)


@pytest.mark.stress
@pytest.mark.parametrize(("command", "size"), [("put", 1000), ("stream", 11 * MIB)])
def test_racing_processes_create_a_key_exactly_once(
    monkeypatch: pytest.MonkeyPatch, server: S3TestServer, bucket: str, command: str, size: int
) -> None:
    n = 4 if command == "put" else 3
    answers = race(monkeypatch, server, command, f"s3://{bucket}/cat", size, n)
    assert sorted(answers) == ["created"] + ["existed"] * (n - 1)
    winner = answers.index("created")
    tag = f"w{winner}-".encode()
    store = make_store(server, bucket)
    assert store.read_all("same/key") == (tag * size)[:size]
    assert uploads(server, bucket) == []


def test_a_write_refused_by_its_condition_is_false(
    server: S3TestServer, bucket: str, store: S3Store
) -> None:
    """A racing writer got there first (the server answers 412 to our conditional write)."""
    server.faults.fail(is_object_put, status=412, code="PreconditionFailed")
    assert store.put_if_absent("k", b"mine") is False
    assert store.size("k") is None  # nothing of ours was written
    server.faults.fail(is_complete, status=412, code="PreconditionFailed")
    assert store.put_stream_if_absent("m", writer_of(blob(6 * MIB))) is False
    assert store.size("m") is None and uploads(server, bucket) == []


def test_a_conflicting_concurrent_write_409_is_asked_again(
    server: S3TestServer, store: S3Store
) -> None:
    server.faults.fail(is_object_put, status=409, code="ConditionalRequestConflict")
    assert store.put_if_absent("k", b"mine") is True
    assert store.get("k") == b"mine"
    server.faults.fail(is_complete, status=409, code="ConditionalRequestConflict")
    assert store.put_stream_if_absent("m", writer_of(blob(6 * MIB))) is True


def test_a_write_whose_answer_was_lost_is_still_ours(
    server: S3TestServer, bucket: str, store: S3Store
) -> None:
    """botocore retries after a lost answer; the retry meets our own object (412)."""
    server.faults.lose_response(is_object_put)
    assert store.put_if_absent("k", b"mine") is True
    assert len(put_requests(server, "cat/k")) == 2
    server.faults.lose_response(is_complete)
    data = blob(6 * MIB)
    assert store.put_stream_if_absent("m", writer_of(data)) is True
    assert store.get("m") == data and uploads(server, bucket) == []


# -- transient and persistent failures ------------------------------------------------------


def test_transient_server_errors_are_retried(server: S3TestServer, store: S3Store) -> None:
    server.faults.fail(is_object_put, times=2, status=503, code="SlowDown")
    assert store.put_if_absent("k", b"v") is True
    assert len(put_requests(server, "cat/k")) == 3
    server.faults.fail(lambda r: r.method == "GET", times=2, status=500, code="InternalError")
    assert store.get("k") == b"v"
    server.faults.fail(lambda r: r.is_part, times=2, status=503, code="SlowDown")
    data = blob(11 * MIB)
    assert store.put_stream_if_absent("m", writer_of(data)) is True
    assert store.read_all("m") == data


def test_a_persistent_failure_is_a_storage_error_naming_url_and_step(
    server: S3TestServer, store: S3Store
) -> None:
    server.faults.fail(lambda r: r.method == "GET", times=10, status=500, code="InternalError")
    with pytest.raises(StorageError) as caught:
        store.get("dir/k")
    assert str(caught.value).startswith(
        f"could not read {store.url}/dir/k: InternalError (HTTP 500): We encountered an "
        "internal error. Please try again.; the store kept failing after 3 attempts"
    )
    assert caught.value.path == f"{store.url}/dir/k" and caught.value.step == "read"


def test_a_missing_bucket_says_so(server: S3TestServer) -> None:
    store = S3Store("s3://no-such-bucket/x", endpoint_url=server.endpoint)
    with pytest.raises(StorageError, match="the bucket does not exist: create it, or fix the URL"):
        store.list("")
    with pytest.raises(StorageError, match="NoSuchBucket"):
        store.put_if_absent("k", b"v")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_environment_configures_and_options_override_it(
    monkeypatch: pytest.MonkeyPatch, server: S3TestServer, bucket: str
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
    assert S3Store(f"s3://{bucket}/p").put_if_absent("k", b"v") is True
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nobody there
    assert S3Store(f"s3://{bucket}/p", endpoint_url=server.endpoint).get("k") == b"v"
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    server.faults.fail(lambda r: r.method == "GET", times=1)
    with pytest.raises(StorageError, match="SlowDown"):
        S3Store(f"s3://{bucket}/p").get("k")  # AWS_MAX_ATTEMPTS=1: no retry
    server.faults.fail(lambda r: r.method == "GET", times=1)
    assert S3Store(f"s3://{bucket}/p", max_attempts=2).get("k") == b"v"


def test_server_stopped_mid_upload_then_back(server: S3TestServer, bucket: str) -> None:
    store = make_store(server, bucket, max_attempts=2, max_concurrency=2)

    def write(out: IO[bytes]) -> None:
        out.write(blob(11 * MIB))  # two parts sent, the upload exists
        server.stop()
        out.write(blob(11 * MIB, seed=1))

    with pytest.raises(StorageError) as caught:
        store.put_stream_if_absent("rows/r.arrow", write)
    message = str(caught.value)
    assert message.startswith("could not upload part ") or message.startswith("could not complete")
    assert f"{store.url}/rows/r.arrow" in message and "could not be reached" in message
    with pytest.raises(StorageError, match="could not be reached"):
        store.put_if_absent("rows/small", b"x")
    server.start()
    assert store.size("rows/r.arrow") is None and store.list("") == []
    assert uploads(server, bucket) == ["cat/rows/r.arrow"]  # the abort could not reach it
    assert store.cleanup_uploads(older_than=0) == 1
    assert uploads(server, bucket) == []
    data = blob(11 * MIB, seed=2)
    assert store.put_stream_if_absent("rows/r.arrow", writer_of(data)) is True
    assert store.read_all("rows/r.arrow") == data


@pytest.mark.stress
def test_a_writer_killed_mid_upload_leaves_nothing_and_vacuum_aborts_it(
    monkeypatch: pytest.MonkeyPatch, server: S3TestServer, bucket: str
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
    writer = spawn(["hang", f"s3://{bucket}/cat", "rows/killed.arrow", str(12 * MIB)])
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "uploading"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.communicate(timeout=60)
    store = make_store(server, bucket)
    assert store.size("rows/killed.arrow") is None and store.list("") == []
    assert uploads(server, bucket) == ["cat/rows/killed.arrow"]
    assert store.cleanup_uploads(older_than=3600) == 0, "a young upload may be a live writer's"
    assert uploads(server, bucket) == ["cat/rows/killed.arrow"]
    assert store.cleanup_uploads(older_than=0) == 1
    assert uploads(server, bucket) == []
    assert store.put_stream_if_absent("rows/killed.arrow", writer_of(b"again")) is True


def test_cleanup_uploads_stays_under_the_store_prefix(server: S3TestServer, bucket: str) -> None:
    client = server.client()
    client.create_multipart_upload(Bucket=bucket, Key="cat2/x")
    client.create_multipart_upload(Bucket=bucket, Key="cat/x")
    assert make_store(server, bucket).cleanup_uploads(older_than=0) == 1
    assert uploads(server, bucket) == ["cat2/x"]


# -- secrets ----------------------------------------------------------------------------------


def test_no_error_carries_a_secret(
    monkeypatch: pytest.MonkeyPatch, server: S3TestServer, bucket: str
) -> None:
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    explicit = "EXPLICITSECRET42EXPLICITSECRET42"
    stores = [
        make_store(server, bucket, max_attempts=2),
        make_store(
            server, bucket, max_attempts=2, access_key_id="AKIDX", secret_access_key=explicit
        ),
        S3Store("s3://no-such-bucket-xyz/p", endpoint_url=server.endpoint, max_attempts=2),
    ]
    failures: list[BaseException] = []

    def expect_failure(call: Any) -> None:
        with pytest.raises(StorageError) as caught:
            call()
        failures.append(caught.value)

    for store in stores:
        server.faults.fail(lambda r: True, times=2, status=500, code="InternalError")
        expect_failure(lambda store=store: store.put_if_absent("k", b"v"))
        server.faults.clear()
        server.faults.fail(lambda r: r.method == "POST", times=3, status=403, code="AccessDenied")
        expect_failure(
            lambda store=store: store.put_stream_if_absent("m", writer_of(blob(6 * MIB)))
        )
        server.faults.clear()
    expect_failure(lambda: stores[2].list(""))
    server.stop()
    for store in stores:
        expect_failure(lambda store=store: store.get("k"))
    server.start()
    assert len(failures) == 10
    for exc in failures:
        text = "".join(traceback.format_exception(exc)) + repr(exc) + json.dumps(vars(exc))
        for secret in (SECRET, TOKEN, explicit):
            assert secret not in text
    for store in stores:
        assert SECRET not in repr(store) + store.url and explicit not in repr(store)


@pytest.mark.slow
def test_the_s3_load_benchmark_runs(aws_env: None) -> None:
    """Its quickest mode, end to end (nothing here looks at a time or a ratio)."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    script = HERE.parent / "benchmarks" / "s3_load.py"
    done = subprocess.run(
        [sys.executable, str(script), "--mb", "8", "--rounds", "1", "--rows", "300"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "read_all / get_object:" in done.stdout
    assert "target: read_all >= 0.8x the faster peer, O(range) server:" in done.stdout
    assert "target: get+load_weights >= 0.8x get_object:" in done.stdout
    assert "target: open+best <= 10 requests and < 0.5 s: 6 requests" in done.stdout
