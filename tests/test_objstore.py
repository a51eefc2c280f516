"""Catalogs on Google Cloud Storage and Azure Blob Storage: the obstore store (``_objstore``).

The store runs against real servers on 127.0.0.1: Azurite (Microsoft's Azure Storage emulator,
an npm package: ``.ci/run`` installs it into ``.ci/azurite`` where npm is available; the tests
that need it are skipped where it is not) and moto's S3 (tests/s3server.py) through obstore's
S3 store, which shows the one class serves any obstore store. On ``az://`` the catalog suite
runs: create, append, append_many, queries, best -> load_weights, get, delete, compaction,
reindex, writers in separate processes racing, a refused conditional create, row files at
``az://`` URLs and the command line.

``gs://`` is checked for configuration and errors only: the Google Cloud Storage emulator on
PyPI (``gcp-storage-emulator``) serves the JSON API, while obstore (Rust ``object_store``)
talks GCS's XML API (PUT answering an ETag, HEAD, DELETE, ``list-type=2`` listing, multipart
uploads, ``x-goog-if-generation-match``), which that emulator does not implement.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import torch

obstore = pytest.importorskip("obstore")

from azurite import Azurite, azurite_binary, free_port  # noqa: E402
from modelrows import (  # noqa: E402
    Catalog,
    CatalogError,
    StorageError,
    fetch_weights,
    load_weights,
    read_model_row,
    write_model_row,
)
from modelrows._catalog import open_store  # noqa: E402
from modelrows._catalog._objstore import ObjStore  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SRC = ROOT / "src"
SCRIPT = Path(sys.executable).parent / "modelrows"
SECRET = "SECRETMARKER0123456789abcdefSECRETMARKER"
MIB = 1 << 20


@pytest.fixture(scope="module")
def azurite() -> Iterator[Azurite]:
    binary = azurite_binary()
    if binary is None:
        pytest.skip(
            "Azurite is not installed (npm install --prefix .ci/azurite azurite, as .ci/run "
            "does where npm is available, or set MODELROWS_AZURITE)"
        )
    server = Azurite(binary)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No GOOGLE_*, AZURE_* or AWS_* variable of this machine; a working directory of its own
    (a catalog URL must never become a local directory)."""
    for name in list(os.environ):
        if name.startswith(("GOOGLE_", "AZURE_", "AZURITE_", "AWS_")):
            monkeypatch.delenv(name)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)


@pytest.fixture
def az_env(clean_env: None, azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> None:
    """The standard Azure variables for the emulator: nothing else configures the store."""
    monkeypatch.setenv("AZURE_STORAGE_USE_EMULATOR", "true")
    monkeypatch.setenv("AZURITE_BLOB_STORAGE_URL", azurite.url)


@pytest.fixture
def container(az_env: None, azurite: Azurite) -> str:
    name = f"test-{uuid.uuid4().hex[:12]}"
    azurite.create_container(name)
    return name


@pytest.fixture
def az_url(container: str) -> str:
    return f"az://{container}/ckpts/digits"


# -- the store on two real servers --------------------------------------------------------------


@pytest.fixture(params=["azure", "s3"])
def store(request: pytest.FixtureRequest, clean_env: None) -> Iterator[ObjStore]:
    """An ObjStore with 5 MiB parts and 3 MiB read chunks, on Azurite (az://, configured by
    the environment) or on moto's S3 through obstore's S3 store (given explicitly)."""
    if request.param == "azure":
        request.getfixturevalue("az_env")
        container = request.getfixturevalue("container")
        yield ObjStore.from_url(
            f"az://{container}/base", {"part_size": 5 * MIB, "read_chunk_size": 3 * MIB}
        )
        return
    pytest.importorskip("moto.server")
    from s3server import S3TestServer

    with S3TestServer() as server:
        yield obstore_s3(server)


def obstore_s3(server: Any) -> ObjStore:
    """An ObjStore on a new bucket of moto's S3 server, through obstore's S3 store."""
    from obstore.store import S3Store

    bucket = f"test-{uuid.uuid4().hex[:12]}"
    server.client().create_bucket(Bucket=bucket)
    inner = S3Store(
        bucket,
        prefix="base",
        endpoint=server.endpoint,
        region="us-east-1",
        access_key_id="AKIDTESTING",
        secret_access_key=SECRET,
        client_options={"allow_http": True},
    )
    return ObjStore(
        f"s3://{bucket}/base", inner, part_size=5 * MIB, read_chunk_size=3 * MIB, secrets=[SECRET]
    )


def blob(size: int, seed: int = 0) -> bytes:
    return (
        torch.randint(
            0, 256, (size,), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
        )
        .numpy()
        .tobytes()
    )


def writer_of(data: bytes, piece: int = 1 << 20) -> Callable[[IO[bytes]], None]:
    def write(out: IO[bytes]) -> None:
        for at in range(0, len(data), piece):
            out.write(data[at : at + piece])

    return write


def test_create_if_absent_refuses_an_existing_key(store: ObjStore) -> None:
    assert store.put_if_absent("_index/manifests/0001.json", b'{"n": 1}') is True
    assert store.put_if_absent("_index/manifests/0001.json", b'{"n": 2}') is False
    assert store.get("_index/manifests/0001.json") == b'{"n": 1}'
    assert store.put_stream_if_absent("_index/manifests/0001.json", writer_of(b"x")) is False
    assert store.size("_index/manifests/0001.json") == 8
    assert store.size("_index/manifests/0002.json") is None
    assert store.list("") == [("_index/manifests/0001.json", 8)]
    assert store.list("_index") == store.list("_index/manifests/") == store.list("")
    assert store.list("_ind") == []  # a directory, not a string prefix
    assert store.local_path("_index") is None


def test_large_objects_stream_as_multipart_and_read_back_in_parallel(store: ObjStore) -> None:
    data = blob(13 * MIB + 12345)
    assert store.put_stream_if_absent("run=a/big.arrow", writer_of(data)) is True
    assert store.put_stream_if_absent("run=a/big.arrow", writer_of(blob(6 * MIB, 1))) is False
    assert store.size("run=a/big.arrow") == len(data)
    assert store.read_all("run=a/big.arrow") == data
    assert store.get("run=a/big.arrow") == data
    ranges = [(0, 10), (5, 5), (7 * MIB, 7 * MIB + 3), (len(data) - 4, len(data) + 100)]
    assert store.get_ranges("run=a/big.arrow", ranges) == [
        data[0:10],
        b"",
        data[7 * MIB : 7 * MIB + 3],
        data[-4:],
    ]
    small = blob(1000, 2)
    assert store.put_if_absent("run=a/small.arrow", small) is True
    assert store.read_all("run=a/small.arrow") == small
    replaced = blob(11 * MIB, 3)
    store.put_stream("run=a/small.arrow", writer_of(replaced))  # create or replace, whole
    assert store.read_all("run=a/small.arrow") == replaced
    store.put_stream("run=a/small.arrow", writer_of(small))
    assert store.read_all("run=a/small.arrow") == small
    assert store.list("run=a") == [("run=a/big.arrow", len(data)), ("run=a/small.arrow", 1000)]


def test_a_writer_failing_mid_upload_leaves_nothing_visible(store: ObjStore) -> None:
    def dies(out: IO[bytes]) -> None:
        out.write(blob(12 * MIB))  # two parts are on their way
        raise RuntimeError("the writer died")

    with pytest.raises(RuntimeError, match="the writer died"):
        store.put_stream_if_absent("run=a/dead.arrow", dies)
    with pytest.raises(RuntimeError, match="the writer died"):
        store.put_stream("run=a/dead.arrow", dies)
    assert store.list("") == []
    assert store.size("run=a/dead.arrow") is None
    assert store.cleanup_uploads(0.0) == 0  # obstore cannot list uploads: documented no-op
    # (Azure keeps a failed upload's uncommitted blocks, which make a conditional create of
    # that very key fail until Azure discards them; row keys are never reused)
    assert store.put_stream_if_absent("run=a/next.arrow", writer_of(b"alive")) is True
    assert store.get("run=a/next.arrow") == b"alive"


def test_retries_and_a_create_whose_answer_was_lost(clean_env: None) -> None:
    pytest.importorskip("moto.server")
    from s3server import S3TestServer

    def put_of(part: str) -> Callable[[Any], bool]:
        return lambda r: r.method == "PUT" and part in r.path

    with S3TestServer() as server:
        store = obstore_s3(server)
        server.faults.fail(put_of("0001.json"), times=2, status=503, code="SlowDown")
        assert store.put_if_absent("m/0001.json", b"first") is True  # retried by obstore
        server.faults.lose_response(put_of("0002.json"))  # created, but the client sees 500
        assert store.put_if_absent("m/0002.json", b"mine") is True  # its retry met its object
        server.faults.lose_response(put_of("0002.json"))  # refused (412), the client sees 500
        assert store.put_if_absent("m/0002.json", b"another") is False
        assert store.get("m/0002.json") == b"mine"
        server.faults.fail(put_of("0003.json"), status=403, code="AccessDenied")
        with pytest.raises(StorageError, match=r"could not create s3://.*/base/m/0003.json"):
            store.put_if_absent("m/0003.json", b"x")


def test_keys_with_escaped_partition_values_round_trip(store: ObjStore) -> None:
    keys = ["run=b%2Fc%20d/x.arrow", "name=%C3%A9t%C3%A9/y.arrow", "a=1%25/z.arrow"]
    for n, key in enumerate(keys):
        assert store.put_if_absent(key, bytes([n]) * 3) is True
    listed = store.list("")
    assert [k for k, _ in listed] == sorted(keys)
    for key, _ in listed:
        assert store.get(key) == bytes([keys.index(key)]) * 3
        store.delete(key)
    assert store.list("") == []


def test_absent_keys_deletes_and_invalid_keys(store: ObjStore) -> None:
    with pytest.raises(FileNotFoundError, match="no such object"):
        store.get("missing.json")
    with pytest.raises(FileNotFoundError):
        store.read_all("missing.json")
    with pytest.raises(FileNotFoundError):
        store.get_ranges("missing.json", [(0, 4)])
    store.delete("missing.json")  # absent: fine
    assert store.put_if_absent("k.json", b"1") is True
    assert store.put_if_absent("empty.json", b"") is True
    assert store.read_all("empty.json") == bytearray() and store.get("empty.json") == b""
    assert store.size("empty.json") == 0
    store.delete("k.json")
    assert store.size("k.json") is None and store.put_if_absent("k.json", b"2") is True
    for bad in ["", "/abs", "a//b", "a/../b", "./a"]:
        with pytest.raises(StorageError, match="invalid key"):
            store.put_if_absent(bad, b"x")


def test_a_missing_bucket_is_a_storage_error_naming_the_url(store: ObjStore) -> None:
    inner = store.store
    if store.url.startswith("az://"):
        gone = ObjStore.from_url("az://no-such-container/base")
    else:
        from obstore.store import S3Store

        config = inner.config
        gone = ObjStore(
            "s3://no-such-bucket/base",
            S3Store(
                "no-such-bucket",
                endpoint=config["endpoint"],
                region="us-east-1",
                access_key_id="AKIDTESTING",
                secret_access_key=SECRET,
                client_options={"allow_http": True},
                retry_config={
                    "max_retries": 0,
                    "retry_timeout": dt.timedelta(seconds=5),
                    "backoff": {
                        "init_backoff": dt.timedelta(milliseconds=10),
                        "max_backoff": dt.timedelta(seconds=1),
                        "base": 2,
                    },
                },
            ),
            secrets=[SECRET],
        )
    for step, call in [
        ("list", lambda: gone.list("")),
        ("create", lambda: gone.put_if_absent("k", b"1")),
    ]:
        with pytest.raises(StorageError) as caught:
            call()
        message = str(caught.value)
        assert message.startswith(f"could not {step} {gone.url}"), message
        assert "does not exist" in message or "NoSuchBucket" in message, message
        assert SECRET not in message and "Debug source" not in message
        assert caught.value.path is not None and caught.value.path.startswith(gone.url)


# -- the catalog on az:// (Azurite) -------------------------------------------------------------

from s3server import (  # noqa: E402
    check_racing_writers,
    ids_of,
    model,
    row_class,
    same_weights,
)

Row = row_class()  # declared at import, before the registry fixture takes its snapshot
BIG = 1750  # model(seed, BIG): a 12 MB row, uploaded as a multipart upload (8 MiB parts)


def append(catalog: Catalog, seed: int, *, run: str = "a", size: int = 16, **values: Any) -> str:
    return catalog.append(Row(weights=fetch_weights(model(seed, size)), run=run, **values))


def test_the_catalog_suite_on_azure(az_url: str) -> None:
    catalog = Catalog.create(az_url, Row, partition_by=["run"])
    assert isinstance(catalog.store, ObjStore) and catalog.url == az_url
    ids = [
        append(catalog, 1, run="a", epoch=1, accuracy=0.5),
        append(catalog, 2, run="a", epoch=2, accuracy=0.7),
        append(catalog, 3, run="b/c d", epoch=1, accuracy=0.6),
    ]
    many = catalog.append_many(
        [
            Row(weights=fetch_weights(model(10 + i)), run="m", epoch=i, accuracy=0.1)
            for i in range(3)
        ]
    )
    big = append(catalog, 4, size=BIG, run="b", epoch=4, accuracy=0.95)  # multipart object
    assert list(Path.cwd().iterdir()) == []  # no local directory named "az:"
    again = Catalog.open(az_url)
    assert len(again) == 7 and ids_of(again) == sorted([*ids, *many, big])
    assert again.sql(
        "SELECT run, epoch FROM models WHERE run <> 'm' ORDER BY accuracy DESC"
    ).fetchall() == [
        ("b", 4),
        ("a", 2),
        ("b/c d", 1),
        ("a", 1),
    ]
    row = again.best("accuracy")
    assert row is not None and row.epoch == 4
    target = model(99, BIG)
    load_weights(target, row.weights)
    assert same_weights(target, model(4, BIG))
    second = again.best("accuracy", where="epoch < 4", verify=True)
    assert second is not None and second.epoch == 2
    target = model(99)
    load_weights(target, again.get(ids[1], verify=True).weights)
    assert same_weights(target, model(2))
    assert again.path_of(big) == f"{az_url}/run=b/{big}.s3test.row.arrow"
    assert Catalog.create(az_url, Row, partition_by=["run"]).schema == catalog.schema
    with pytest.raises(CatalogError, match="already holds a catalog of s3test.row@1"):
        Catalog.create(az_url, Row, partition_by=[])

    assert catalog.delete([ids[0], many[0]]) == sorted([ids[0], many[0]])
    live = sorted([ids[1], ids[2], *many[1:], big])
    assert ids_of(Catalog.open(az_url)) == live
    rows = [k for k, _ in catalog.store.list("") if k.endswith(".arrow")]
    assert len(rows) == 5  # the deleted rows' objects are gone
    assert catalog.compact() is True
    assert ids_of(Catalog.open(az_url)) == live
    assert catalog.reindex() == 5
    reopened = Catalog.open(az_url)
    assert ids_of(reopened) == live and reopened.get(big).epoch == 4
    catalog.vacuum(older_than=0)
    assert ids_of(Catalog.open(az_url)) == live


def test_a_refused_conditional_create_on_azure(az_url: str) -> None:
    catalog = Catalog.create(az_url, Row, partition_by=["run"])
    store = catalog.store
    original = store.get("_modelrows_catalog.json")
    assert store.put_if_absent("_modelrows_catalog.json", b"{}") is False  # a refused create
    assert store.get("_modelrows_catalog.json") == original
    row_id = append(catalog, 1)
    (entry,) = [k for k, _ in store.list("_index") if row_id in k]
    assert store.put_if_absent(entry, b"another writer's entry") is False
    assert ids_of(Catalog.open(az_url)) == [row_id]


def test_row_files_at_az_urls(container: str) -> None:
    target = f"az://{container}/single/m.model.arrow"
    write_model_row(target, Row(weights=fetch_weights(model(1)), run="x", epoch=1))
    assert read_model_row(target, verify=True).epoch == 1
    write_model_row(target, Row(weights=fetch_weights(model(2, BIG)), run="x", epoch=2))
    fresh = model(0, BIG)
    load_weights(fresh, read_model_row(target, verify=True).weights)
    assert same_weights(fresh, model(2, BIG))
    with pytest.raises(StorageError, match="names a bucket or container, not an object"):
        write_model_row(f"az://{container}", Row(weights=fetch_weights(model(3)), run="y"))


def test_concurrent_writers_in_separate_processes_on_azure(az_url: str) -> None:
    Catalog.create(az_url, Row, partition_by=["run"])
    check_racing_writers(az_url)


@pytest.mark.parametrize("stage", ["upload", "publish"])
def test_a_writer_killed_mid_append_leaves_no_row_on_azure(az_url: str, stage: str) -> None:
    catalog = Catalog.create(az_url, Row, partition_by=["run"])
    kept = [append(catalog, 1)]
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{HERE}"}
    writer = subprocess.Popen(
        [sys.executable, str(HERE / "azurite.py"), "append-stuck", az_url, "a", stage],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert writer.stdout is not None
        line = writer.stdout.readline().strip()
        assert line == "stuck", writer.communicate(timeout=60)[1][-3000:]
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.communicate(timeout=60)

    def row_objects() -> list[str]:
        return [k for k, _ in catalog.store.list("") if k.endswith(".arrow")]

    assert ids_of(Catalog.open(az_url)) == kept
    if stage == "upload":  # nothing visible: uncommitted blocks only
        assert len(row_objects()) == 1
        assert catalog.vacuum(older_than=0) == []
    else:  # the whole row object, never published: vacuum removes it once old enough
        assert len(row_objects()) == 2
        assert catalog.vacuum() == []  # young: its writer may still publish it
        (removed,) = catalog.vacuum(older_than=0)
        assert str(removed).startswith(f"{az_url}/run=a/")
        assert len(row_objects()) == 1
    kept.append(append(catalog, 2, size=BIG))
    assert ids_of(Catalog.open(az_url)) == sorted(kept)


@pytest.mark.slow
def test_the_command_line_on_an_azure_catalog(az_url: str) -> None:
    catalog = Catalog.create(az_url, Row, partition_by=["run"])
    best = append(catalog, 1, run="a", epoch=1, accuracy=0.9)
    append(catalog, 2, run="b", epoch=2, accuracy=0.4)
    env = {**os.environ, "PYTHONPATH": str(SRC)}

    def cli(*args: str) -> str:
        done = subprocess.run(
            [str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=240
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    listed = json.loads(cli("ls", az_url, "--format", "json"))
    assert sorted((r["run"], r["epoch"]) for r in listed) == [("a", 1), ("b", 2)]
    chosen = json.loads(cli("best", az_url, "--by", "accuracy", "--format", "json"))
    assert chosen["row_id"] == best
    shown = json.loads(cli("show", az_url, best, "--format", "json"))
    assert shown["path"] == f"{az_url}/run=a/{best}.s3test.row.arrow"


# -- configuration: gs:// and az:// -------------------------------------------------------------


def test_gs_urls_make_a_gcs_store_from_the_environment(
    clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from obstore.store import GCSStore

    monkeypatch.setenv("GOOGLE_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("GOOGLE_BEARER_TOKEN", SECRET)
    store = open_store("gs://my-bucket/team/ckpts/")
    assert isinstance(store, ObjStore) and store.url == "gs://my-bucket/team/ckpts"
    assert isinstance(store.store, GCSStore) and store.store.prefix == "team/ckpts"
    assert store.store.config["bucket"] == "my-bucket"  # the rest obstore reads from GOOGLE_*
    given = ObjStore.from_url(
        "gs://other/p",
        {"base_url": "http://127.0.0.1:8", "bearer_token": "t0ken", "max_retries": 1},
    )
    assert given.store.config["base_url"] == "http://127.0.0.1:8"
    assert given.store.retry_config["max_retries"] == 1


def test_an_unreachable_gcs_endpoint_is_a_storage_error_without_the_token(
    clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOOGLE_BASE_URL", f"http://127.0.0.1:{free_port()}")  # nobody listens
    monkeypatch.setenv("GOOGLE_BEARER_TOKEN", SECRET)
    store = ObjStore.from_url("gs://bkt/ckpts", {"allow_http": True, "max_retries": 0})
    with pytest.raises(StorageError) as caught:
        store.put_if_absent("k.json", b"{}")
    message = str(caught.value)
    assert message.startswith("could not create gs://bkt/ckpts/k.json:"), message
    assert "127.0.0.1" in message  # GOOGLE_BASE_URL was honoured
    assert SECRET not in message and caught.value.step == "create"


def test_az_urls_make_an_azure_store_and_bad_configuration_is_clear(
    clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from obstore.store import AzureStore

    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", "myaccount")
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", base64.b64encode(SECRET.encode()).decode())
    for url, prefix in [
        ("az://ctr/team/ckpts", "team/ckpts"),
        ("abfss://ctr@myaccount.dfs.core.windows.net/team/ckpts", "team/ckpts"),
    ]:
        store = open_store(url)
        assert isinstance(store, ObjStore) and isinstance(store.store, AzureStore)
        assert store.url == url and store.store.prefix == prefix
    monkeypatch.delenv("AZURE_STORAGE_ACCOUNT_NAME")
    with pytest.raises(
        StorageError, match=r"could not configure the store for az://ctr/x: .*AZURE_"
    ):
        ObjStore.from_url("az://ctr/x")
    with pytest.raises(
        StorageError, match=r"could not configure the store for gs://b/x: .*GCSConfig"
    ):
        ObjStore.from_url("gs://b/x", {"no_such_key": "1"})
    with pytest.raises(StorageError, match="'part_size' for gs://b/x must be int, not str"):
        ObjStore.from_url("gs://b/x", {"part_size": "8"})
    with pytest.raises(StorageError, match="holds credentials"):
        ObjStore.from_url("gs://user:pw@b/x")
    with pytest.raises(StorageError, match="query or fragment"):
        ObjStore.from_url("az://ctr/x?sig=abc")
    with pytest.raises(StorageError, match="'.' or '..' segment"):
        ObjStore.from_url("gs://b/x/../y")
    with pytest.raises(CatalogError, match="unsupported URL scheme 'hdfs'"):
        Catalog.open("hdfs://b/x")


def test_import_modelrows_does_not_import_obstore() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import sys, modelrows; print('obstore' in sys.modules)"],
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip() == "False", done.stderr
