"""The catalog on S3, against a real S3-compatible server (moto's, on 127.0.0.1, s3server.py).

The catalog suite on an ``s3://`` catalog (create, append, queries, best -> load_weights,
delete, compaction, reindex, verify), row files at ``s3://`` URLs, the server stopped in the
middle of an upload, a compaction and a delete, writers killed mid-upload, racing compactors,
concurrent writers in separate processes, the command line, and no secret anywhere.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("botocore")
pytest.importorskip("moto.server")

from modelrows import (
    Catalog,
    CatalogError,
    CorruptRowError,
    CorruptRowWarning,
    RowFileError,
    StorageError,
    fetch_weights,
    load_weights,
    read_model_row,
    write_model_row,
)
from modelrows._catalog import _index
from s3server import (
    Request,
    S3TestServer,
    check_racing_writers,
    ids_of,
    model,
    row_class,
    same_weights,
    spawn_worker,
)

S3Row = row_class()  # declared at import, before the registry fixture takes its snapshot

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
SCRIPT = Path(sys.executable).parent / "modelrows"
SECRET = "SECRETMARKER0123456789abcdefSECRETMARKER"
TOKEN = "TOKENMARKER9876543210TOKENMARKER"
BIG = 1750  # model(seed, BIG): a 12 MB row, uploaded in two parts (8 MiB parts)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The standard AWS variables only (nothing from this machine's files), and a working
    directory of its own (a catalog URL must never become a local directory)."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTESTING")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)


@pytest.fixture
def server(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3TestServer]:
    with S3TestServer() as served:
        monkeypatch.setenv("AWS_ENDPOINT_URL", served.endpoint)
        yield served


@pytest.fixture
def bucket(server: S3TestServer) -> str:
    name = f"test-{uuid.uuid4().hex[:12]}"
    server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def url(bucket: str) -> str:
    return f"s3://{bucket}/ckpts/digits"


@pytest.fixture
def catalog(url: str) -> Catalog:
    return Catalog.create(url, S3Row, partition_by=["run"])


def append(catalog: Catalog, seed: int, *, run: str = "a", size: int = 16, **values: Any) -> str:
    return catalog.append(S3Row(weights=fetch_weights(model(seed, size)), run=run, **values))


def objects(server: S3TestServer, bucket: str, prefix: str = "ckpts/digits/") -> list[str]:
    """Every object key under ``prefix``, relative to it."""
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"][len(prefix) :] for page in pages for o in page.get("Contents", ()))


def row_objects(server: S3TestServer, bucket: str) -> list[str]:
    return [k for k in objects(server, bucket) if k.endswith(".arrow")]


def uploads(server: S3TestServer, bucket: str) -> list[str]:
    listed = server.client().list_multipart_uploads(Bucket=bucket)
    return [u["Key"] for u in listed.get("Uploads", [])]


def put_of(part: str) -> Callable[[Request], bool]:
    """Matches the creation of an object whose key holds ``part`` (not a multipart part)."""
    return lambda r: r.method == "PUT" and not r.is_part and part in r.path


def delete_of(part: str) -> Callable[[Request], bool]:
    return lambda r: r.method == "DELETE" and part in r.path


# -- the catalog suite on S3 ----------------------------------------------------------------


def test_create_append_open_and_query_an_s3_catalog(
    server: S3TestServer, bucket: str, url: str, catalog: Catalog
) -> None:
    ids = [
        append(catalog, 1, run="a", epoch=1, accuracy=0.5),
        append(catalog, 2, run="a", epoch=2, accuracy=0.7),
        append(catalog, 3, run="b/c d", epoch=1, accuracy=0.6),
    ]
    assert catalog.url == url and repr(catalog).startswith(f"Catalog({url!r}")
    assert list(Path.cwd().iterdir()) == []  # no local directory named "s3:"
    again = Catalog.open(url)
    assert len(again) == 3 and ids_of(again) == sorted(ids)
    assert again.sql("SELECT run, epoch FROM models ORDER BY accuracy DESC").fetchall() == [
        ("a", 2),
        ("b/c d", 1),
        ("a", 1),
    ]
    found = again.scan().filter(again.scan().collect()["run"] == "a").collect()
    assert sorted(found["epoch"].to_list()) == [1, 2]
    keys = objects(server, bucket)
    assert "_modelrows_catalog.json" in keys
    assert any(k.startswith("_index/manifests/") for k in keys)
    partitions = ["run=a", "run=a", "run=b%2Fc%20d"]
    assert row_objects(server, bucket) == sorted(
        f"{p}/{i}.s3test.row.arrow" for p, i in zip(partitions, ids, strict=True)
    )
    assert Catalog.create(url, S3Row, partition_by=["run"]).schema == catalog.schema  # idempotent
    with pytest.raises(CatalogError, match="already holds a catalog of s3test.row@1"):
        Catalog.create(url, S3Row, partition_by=[])
    with pytest.raises(CatalogError, match=f"no catalog at s3://{bucket}/elsewhere"):
        Catalog.open(f"s3://{bucket}/elsewhere")


def test_best_loads_bit_exact_weights_reading_only_the_chosen_row(
    server: S3TestServer, catalog: Catalog, url: str
) -> None:
    for seed, accuracy in [(1, 0.5), (2, 0.9), (3, 0.7)]:
        append(catalog, seed, epoch=seed, accuracy=accuracy)
    big = append(catalog, 4, size=BIG, epoch=4, accuracy=0.95)  # a multipart object
    fresh = Catalog.open(url)
    before = len(server.requests)
    row = fresh.best("accuracy")
    sent = server.requests[before:]
    assert row is not None and row.epoch == 4
    target = model(99, BIG)
    load_weights(target, row.weights)
    assert same_weights(target, model(4, BIG))
    reads = [r for r in sent if r.method == "GET" and ".arrow" in r.path]
    assert reads and all(big in r.path and "range" in r.headers for r in reads)
    assert len(sent) <= 10, [(r.method, r.path) for r in sent]
    second = fresh.best("accuracy", where="epoch < 4", verify=True)
    assert second is not None and second.epoch == 2
    target = model(99)
    load_weights(target, fresh.get(second.extras["row_id"], verify=True).weights)
    assert same_weights(target, model(2))
    assert fresh.path_of(big) == f"{url}/run=a/{big}.s3test.row.arrow"
    with pytest.raises(CatalogError, match="needs a local catalog"):
        fresh.dataset(weights=True)


def corrupt_object(server: S3TestServer, bucket: str, key: str, tensor: torch.Tensor) -> None:
    """Flips one byte of ``tensor``'s bytes in the object ``key`` (rewritten whole)."""
    client = server.client()
    data = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    at = data.find(tensor.detach().numpy().tobytes())
    assert at > 0
    data[at + 3] ^= 0x10
    client.put_object(Bucket=bucket, Key=key, Body=bytes(data))


def test_verify_and_get_detect_a_corrupted_missing_or_misplaced_object(
    server: S3TestServer, bucket: str, catalog: Catalog, url: str
) -> None:
    good = append(catalog, 1, accuracy=0.5)
    bad = append(catalog, 2, accuracy=0.9)
    key = f"ckpts/digits/run=a/{bad}.s3test.row.arrow"
    corrupt_object(server, bucket, key, model(2).weight)
    assert catalog.get(bad).accuracy == 0.9  # the structure is sound; the bytes are not
    with pytest.raises(CorruptRowError) as caught:
        catalog.get(bad, verify=True)
    assert str(caught.value).startswith(
        f"{url}/run=a/{bad}.s3test.row.arrow: checksum mismatch in column 'weights'"
    )
    problems = catalog.verify()
    assert [(p.row_id, p.path) for p in problems] == [(bad, f"{url}/run=a/{bad}.s3test.row.arrow")]
    with pytest.warns(CorruptRowWarning, match="checksum mismatch"):
        chosen = catalog.best("accuracy", verify=True, on_corrupt="skip")
    assert chosen is not None and chosen.accuracy == 0.5
    client = server.client()
    client.copy_object(
        Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": key.replace(bad, good)}
    )
    with pytest.raises(CorruptRowError, match=f"its name says row {bad} but it holds row"):
        catalog.get(bad)
    client.delete_object(Bucket=bucket, Key=key)
    with pytest.raises(RowFileError, match="the row object is gone"):
        catalog.get(bad)
    assert [p.row_id for p in catalog.verify()] == [bad]
    assert catalog.reindex() == 1 and ids_of(catalog) == [good]


def test_delete_compact_reindex_and_vacuum_on_s3(
    server: S3TestServer, bucket: str, catalog: Catalog, url: str
) -> None:
    ids = [append(catalog, i, run="ab"[i % 2], epoch=i, accuracy=i / 10) for i in range(6)]
    big = append(catalog, 9, size=BIG, run="b", epoch=9, accuracy=0.0)
    assert catalog.delete([ids[0], ids[1]]) == sorted([ids[0], ids[1]])
    assert catalog.delete(where="epoch = 5") == [ids[5]]
    live = sorted([*ids[2:5], big])
    assert ids_of(catalog) == live
    assert len(row_objects(server, bucket)) == 4  # the deleted rows' objects are gone
    assert catalog.compact() is True
    assert catalog.index_files() and objects(server, bucket, "ckpts/digits/_index/log/") == []
    assert ids_of(Catalog.open(url)) == live
    before = len(server.requests)
    assert catalog.reindex() == 4
    reads = [r for r in server.requests[before:] if r.method == "GET" and big in r.path]
    spans = [tuple(map(int, r.headers["range"][6:].split("-"))) for r in reads]
    assert sum(end - start + 1 for start, end in spans) < 1 << 20, "reindex read the tensors"
    reopened = Catalog.open(url)
    assert ids_of(reopened) == live
    assert reopened.get(big).epoch == 9
    assert reopened.sql("SELECT sum(epoch) FROM models").fetchall() == [(2 + 3 + 4 + 9,)]
    removed = catalog.vacuum(older_than=0)  # the segment the rebuilt index replaced
    assert [str(p).rsplit("/", 2)[-2] for p in removed] == ["segments"]
    assert ids_of(Catalog.open(url)) == live and len(row_objects(server, bucket)) == 4


def test_row_files_at_s3_and_file_urls(server: S3TestServer, bucket: str, tmp_path: Path) -> None:
    target = f"s3://{bucket}/single/m.model.arrow"
    write_model_row(target, S3Row(weights=fetch_weights(model(1)), run="x", epoch=1))
    row = read_model_row(target, verify=True)
    assert row.epoch == 1
    fresh = model(0)
    load_weights(fresh, row.weights)
    assert same_weights(fresh, model(1))
    write_model_row(target, S3Row(weights=fetch_weights(model(2, BIG)), run="x", epoch=2))
    assert objects(server, bucket, "single/") == ["m.model.arrow"]
    assert uploads(server, bucket) == []
    fresh = model(0, BIG)
    load_weights(fresh, read_model_row(target, verify=True).weights)
    assert same_weights(fresh, model(2, BIG))
    local = tmp_path / "m.model.arrow"
    write_model_row(local.as_uri(), S3Row(weights=fetch_weights(model(3)), run="y"))
    assert read_model_row(str(local)).run == "y" and read_model_row(local.as_uri()).run == "y"
    with pytest.raises(RowFileError, match=f"s3://{bucket}/single/none.arrow: no such object"):
        read_model_row(f"s3://{bucket}/single/none.arrow")
    with pytest.raises(StorageError) as caught:
        read_model_row("hdfs://bucket/m.model.arrow")
    assert str(caught.value) == (
        "'hdfs://bucket/m.model.arrow': unsupported URL scheme 'hdfs'; a row file is a local "
        "path, a file:///absolute/path URL, s3://bucket/key on S3 or an S3-compatible store, "
        "gs://bucket/key on Google Cloud Storage or az://container/key on Azure Blob Storage"
    )
    with pytest.raises(StorageError, match="names a bucket, not an object"):
        write_model_row(f"s3://{bucket}", S3Row(weights=fetch_weights(model(3)), run="y"))
    with pytest.raises(CatalogError, match="unsupported URL scheme 'hdfs'"):
        Catalog.open("hdfs://bucket/ckpts")
    assert list(Path.cwd().iterdir()) == []


# -- the server stopped in the middle -------------------------------------------------------


def test_server_stopped_mid_upload_of_an_append(
    server: S3TestServer, bucket: str, catalog: Catalog, url: str
) -> None:
    kept = [append(catalog, 1), append(catalog, 2)]
    server.faults.stop_server(lambda r: r.is_part)
    with pytest.raises(StorageError) as caught:
        append(catalog, 3, size=BIG)
    assert str(caught.value).startswith(f"appending 1 row to {url} failed at step ")
    assert str(caught.value).endswith("The row was not added.")
    assert not server.running
    server.start()
    assert ids_of(Catalog.open(url)) == sorted(kept)
    assert len(row_objects(server, bucket)) == 2
    assert len(uploads(server, bucket)) == 1  # its abort could not reach the server
    assert catalog.vacuum(older_than=0) == []
    assert uploads(server, bucket) == []
    kept.append(append(catalog, 3, size=BIG))
    assert ids_of(Catalog.open(url)) == sorted(kept)


@pytest.mark.parametrize("after", [False, True], ids=["before", "after"])
def test_server_stopped_when_an_index_entry_is_sent(
    server: S3TestServer, bucket: str, catalog: Catalog, url: str, after: bool
) -> None:
    """Before: the entry never landed. After: it landed and its answer was lost. Either way the
    append cannot tell, says so, and keeps its row object: the row is whole or absent."""
    kept = [append(catalog, 1)]
    server.faults.stop_server(put_of(".add.ipc"), after=after)
    with pytest.raises(StorageError, match="The store did not say whether the row went in"):
        append(catalog, 2, epoch=2)
    server.start()
    assert len(row_objects(server, bucket)) == 2
    reopened = Catalog.open(url)
    if after:
        (new,) = set(ids_of(reopened)) - set(kept)
        assert reopened.get(new, verify=True).epoch == 2
        assert catalog.vacuum(older_than=0) == []
    else:
        assert ids_of(reopened) == kept
        (orphan,) = catalog.vacuum(older_than=0)
        assert str(orphan).startswith(f"{url}/run=a/") and len(row_objects(server, bucket)) == 1
    append(catalog, 3)
    assert len(Catalog.open(url)) == (3 if after else 2)


@pytest.mark.parametrize("after", [False, True], ids=["before", "after"])
def test_server_stopped_mid_compaction(
    server: S3TestServer, bucket: str, catalog: Catalog, url: str, after: bool
) -> None:
    ids = [append(catalog, i, epoch=i) for i in range(5)]
    catalog.delete(ids[0])
    live = sorted(ids[1:])
    server.faults.stop_server(put_of("_index/manifests/"), after=after)
    with pytest.raises(StorageError, match="could not create"):
        catalog.compact()
    server.start()
    reopened = Catalog.open(url)
    assert ids_of(reopened) == live
    assert [reopened.get(i).epoch for i in live] == [1, 2, 3, 4]
    reopened.compact()
    assert ids_of(Catalog.open(url)) == live
    removed = catalog.vacuum(older_than=0)
    assert all("/_index/segments/" in str(p) for p in removed) and len(removed) == (not after)
    assert ids_of(Catalog.open(url)) == live
    append(catalog, 9)
    assert len(Catalog.open(url)) == 5


def test_server_stopped_mid_delete(
    server: S3TestServer, bucket: str, catalog: Catalog, url: str
) -> None:
    ids = sorted(append(catalog, i, epoch=i) for i in range(4))
    server.faults.stop_server(put_of(".del.ipc"))
    with pytest.raises(StorageError, match="could not create"):
        catalog.delete(ids[0])
    server.start()
    assert ids_of(Catalog.open(url)) == ids  # not acknowledged: nothing was deleted
    server.faults.stop_server(delete_of(".s3test.row.arrow"))
    assert catalog.delete(ids[:2]) == ids[:2]  # the delete entry is the commit point
    server.start()
    assert ids_of(Catalog.open(url)) == ids[2:]
    assert len(row_objects(server, bucket)) >= 3  # the files could not all be removed
    catalog.vacuum(older_than=0)
    assert len(row_objects(server, bucket)) == 2
    assert ids_of(Catalog.open(url)) == ids[2:]


# -- conflicts ----------------------------------------------------------------------------------


def test_a_conditional_write_refused_by_the_server_is_handled(
    server: S3TestServer, bucket: str, catalog: Catalog, url: str
) -> None:
    ids = sorted(append(catalog, i) for i in range(3))
    server.faults.fail(put_of("_index/manifests/"), status=412, code="PreconditionFailed")
    assert catalog.compact() is False  # another compactor published first
    assert objects(server, bucket, "ckpts/digits/_index/segments/") == []  # its work discarded
    server.faults.fail(put_of("_index/manifests/"), status=409, code="ConditionalRequestConflict")
    assert catalog.compact() is True  # a concurrent write in flight: asked again
    assert ids_of(Catalog.open(url)) == ids
    server.faults.fail(put_of(".add.ipc"), status=412, code="PreconditionFailed")
    with pytest.raises(CatalogError, match="exists already; row ids must be unique"):
        append(catalog, 5)
    assert ids_of(Catalog.open(url)) == ids and len(row_objects(server, bucket)) == 3


def test_two_compactors_racing_on_s3_one_wins(
    server: S3TestServer, bucket: str, catalog: Catalog, url: str
) -> None:
    """Compactor A is held at its manifest's conditional PUT while B compacts the same index and
    publishes: A's PUT then meets B's manifest (412), and A discards its segment."""
    ids = sorted(append(catalog, i) for i in range(4))
    other = Catalog.open(url)
    held: list[Request] = []
    results: list[bool] = []

    def b_first(request: Request) -> bool:
        if not held and put_of("_index/manifests/")(request):
            held.append(request)  # A's; B's own requests pass
            results.append(other.compact())  # B, from this server thread, while A waits
        return False

    server.faults.fail(b_first)
    won_by_a = catalog.compact()
    server.faults.clear()
    assert results == [True] and won_by_a is False
    assert len(objects(server, bucket, "ckpts/digits/_index/segments/")) == 1
    assert ids_of(Catalog.open(url)) == ids


# -- processes ---------------------------------------------------------------------------------


def finish(process: subprocess.Popen[str]) -> str:
    out, err = process.communicate(timeout=240)
    assert process.returncode == 0, err[-3000:]
    return out


@pytest.mark.slow
def test_concurrent_writers_in_separate_processes(
    server: S3TestServer, catalog: Catalog, url: str
) -> None:
    check_racing_writers(url)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["upload", "publish"])
def test_a_writer_killed_mid_append_leaves_no_row(
    server: S3TestServer, bucket: str, catalog: Catalog, url: str, stage: str
) -> None:
    kept = [append(catalog, 1)]
    writer = spawn_worker("append-stuck", url, "a", stage)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "stuck"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.communicate(timeout=60)
    assert ids_of(Catalog.open(url)) == kept
    if stage == "upload":  # nothing visible, an upload left behind
        assert len(row_objects(server, bucket)) == 1
        assert len(uploads(server, bucket)) == 1
        assert catalog.vacuum() == [] and len(uploads(server, bucket)) == 1  # may be live
        assert catalog.vacuum(older_than=0) == [] and uploads(server, bucket) == []
    else:  # the whole row object, never published
        assert len(row_objects(server, bucket)) == 2
        assert catalog.vacuum() == []  # young: its writer may still publish it
        (removed,) = catalog.vacuum(older_than=0)
        assert str(removed).startswith(f"{url}/run=a/")
        assert len(row_objects(server, bucket)) == 1
    kept.append(append(catalog, 2, size=BIG))
    assert ids_of(Catalog.open(url)) == sorted(kept)


@pytest.mark.slow
def test_the_command_line_on_an_s3_catalog(catalog: Catalog, url: str) -> None:
    best = append(catalog, 1, run="a", epoch=1, accuracy=0.9)
    append(catalog, 2, run="b", epoch=2, accuracy=0.4)
    env = {**os.environ, "PYTHONPATH": str(SRC)}

    def cli(*args: str) -> str:
        done = subprocess.run(
            [str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=240
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert SECRET not in done.stdout + done.stderr
        return done.stdout

    listed = json.loads(cli("ls", url, "--format", "json"))
    assert sorted((r["run"], r["epoch"]) for r in listed) == [("a", 1), ("b", 2)]
    chosen = json.loads(cli("best", url, "--by", "accuracy", "--format", "json"))
    assert chosen["row_id"] == best and chosen["accuracy"] == 0.9
    shown = json.loads(cli("show", url, best, "--format", "json"))
    assert shown["path"] == f"{url}/run=a/{best}.s3test.row.arrow"
    assert all(w["intact"] for w in shown["weights"].values())
    described = json.loads(cli("show", url, "--format", "json"))
    assert described["catalog"] == url and described["partition_by"] == ["run"]
    out = cli("sql", url, "SELECT run FROM models WHERE epoch = 2", "--format", "csv")
    assert out.split() == ["run", "b"]


# -- secrets ------------------------------------------------------------------------------------


def test_no_secret_in_the_catalog_its_errors_or_logs(
    server: S3TestServer,
    bucket: str,
    url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)  # botocore then logs every request's headers
    catalog = Catalog.create(url, S3Row, partition_by=["run"])
    row_id = append(catalog, 1)
    catalog.compact()
    failures: list[BaseException] = []
    server.faults.fail(lambda r: r.method == "PUT", times=4, status=403, code="AccessDenied")
    with pytest.raises(StorageError) as caught:
        append(catalog, 2)
    failures.append(caught.value)
    server.faults.clear()
    server.stop()
    for call in (lambda: catalog.get(row_id), lambda: Catalog.open(url), catalog.verify):
        with pytest.raises(StorageError) as caught:
            call()
        failures.append(caught.value)
    server.start()
    assert "credentials may not do this" in str(failures[0])
    assert "could not be reached" in str(failures[1])
    for exc in failures:
        text = "".join(traceback.format_exception(exc)) + repr(exc) + json.dumps(vars(exc))
        assert SECRET not in text and TOKEN not in text
    client = server.client()
    for key in objects(server, bucket, ""):
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert SECRET.encode() not in body and TOKEN.encode() not in body
    client_side = [
        r.getMessage() for r in caplog.records if r.name.split(".")[0] in ("botocore", "modelrows")
    ]
    assert any("x-amz-security-token" in m for m in client_side)  # the headers were logged
    assert not any(SECRET in m or TOKEN in m for m in client_side)
    assert SECRET not in repr(catalog) + catalog.url + repr(catalog.store)


# -- the README -------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_readme_s3_section_runs(server: S3TestServer, tmp_path: Path) -> None:
    """The README's "Catalogs on S3": its two-line setup, and its example, run after the
    README's other examples (which it builds on) against this server."""
    readme = (HERE.parent / "README.md").read_text()
    section = readme.split("\n## Catalogs on S3\n", 1)[1].split("\n## ", 1)[0]
    (setup,) = re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)
    install, export = setup.strip().splitlines()
    assert install == "pip install 'modelrows[s3]'"
    assert export.startswith("export ") and "AWS_ENDPOINT_URL=" in export
    (example,) = re.findall(r"```py\n(.*?)```", section, flags=re.DOTALL)
    before = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    server.client().create_bucket(Bucket="checkpoints")
    (tmp_path / "readme_s3.py").write_text("\n".join([*before, example]))
    env = {**os.environ, "PYTHONPATH": str(SRC)}  # the endpoint and keys of this server
    done = subprocess.run(
        [sys.executable, "readme_s3.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(Catalog.open("s3://checkpoints/digits")) == 1
    exported = read_model_row("s3://checkpoints/exported/best.model.arrow", verify=True)
    assert exported.run == "baseline" and exported.epoch == 1


def test_get_reads_the_footer_and_one_row_group_of_a_segment_by_range(
    server: S3TestServer, bucket: str, url: str, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_index, "_ROW_GROUP", 4)  # a segment of several row groups
    ids = catalog.append_many(
        [S3Row(weights=fetch_weights(model(i)), run="a", epoch=i) for i in range(20)]
    )
    catalog.compact()
    [segment] = catalog.index_files()
    size = server.client().head_object(Bucket=bucket, Key=f"ckpts/digits/{segment}")
    before = len(server.requests)
    fresh = Catalog.open(url)
    assert fresh.get(ids[13]).epoch == 13  # type: ignore[attr-defined]
    reads = [r for r in server.requests[before:] if r.method == "GET" and segment in r.path]
    assert reads and all("range" in r.headers for r in reads), "read the whole segment"
    spans = sorted(tuple(map(int, r.headers["range"][6:].split("-"))) for r in reads)
    check = fresh._index.latest().checks[segment]  # type: ignore[union-attr]
    start, end, _ = check.groups[13 // 4]  # ids are sorted: row 13 is in row group 3
    assert spans == [(start, end - 1), (check.footer[0], size["ContentLength"] - 1)]
    # a damaged row group on the store is refused by the lookup that reads it
    body = bytearray(
        server.client().get_object(Bucket=bucket, Key=f"ckpts/digits/{segment}")["Body"].read()
    )
    body[(start + end) // 2] ^= 0x01
    server.client().put_object(Bucket=bucket, Key=f"ckpts/digits/{segment}", Body=bytes(body))
    with pytest.raises(CatalogError, match=r"damaged \(row group 3 does not match"):
        Catalog.open(url).get(ids[13])
    assert Catalog.open(url).get(ids[1]).epoch == 1  # type: ignore[attr-defined]
