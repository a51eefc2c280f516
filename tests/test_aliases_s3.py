"""The alias protocol on an S3-compatible server (moto's, on 127.0.0.1, see s3server.py): the
same code as on a local disk, built on conditional PUTs, listing and reads only."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

pytest.importorskip("botocore")
pytest.importorskip("moto.server")

from modelrows import Catalog, Checkpointer, TrainingStateV1
from modelrows._catalog import _aliases
from modelrows._catalog._index import new_id
from modelrows._catalog._s3 import S3Store
from s3server import S3TestServer


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[S3TestServer]:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTESTING")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with S3TestServer() as served:
        monkeypatch.setenv("AWS_ENDPOINT_URL", served.endpoint)  # for s3:// catalog URLs
        yield served


def set_version(store: S3Store, name: str, row_id: str | None, expected: object) -> _aliases.Alias:
    return _aliases._write(
        store,
        name,
        row_id,
        expected=expected,  # type: ignore[arg-type]
        fsync=True,
        check_expected=_aliases._expectation(name, expected, store.url),  # type: ignore[arg-type]
    )


def test_racing_setters_on_s3_each_land_once_and_the_last_wins(server: S3TestServer) -> None:
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    server.client().create_bucket(Bucket=bucket)

    def store() -> S3Store:
        return S3Store(f"s3://{bucket}/cat", endpoint_url=server.endpoint, max_attempts=3)

    rows = [new_id() for _ in range(5)]
    returned: list[tuple[int, str | None]] = []
    lock = threading.Lock()

    def setter(i: int) -> None:
        mine = store()  # a client of its own
        for j in range(8):
            version = set_version(mine, "run=r1/best", rows[(i + j) % 5], _aliases.NO_CHECK)
            with lock:
                returned.append((version.sequence, version.row_id))

    threads = [threading.Thread(target=setter, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    s3 = store()
    history = _aliases.history(s3, "run=r1/best")
    assert [(a.sequence, a.row_id) for a in history] == sorted(returned)
    assert [a.sequence for a in history] == list(range(1, 33))
    assert _aliases.current(s3, "run=r1/best") == history[-1]
    keys = [key for key, _ in s3.list("_aliases/")]
    assert keys[0] == "_aliases/run=r1%2Fbest/00000000000000000001.json"

    # a compare-and-set against a stale target is refused and writes nothing
    stale = next(r for r in rows if r != history[-1].row_id)
    with pytest.raises(_aliases.AliasConflict, match="it was expected to point to row"):
        set_version(s3, "run=r1/best", rows[0], stale)
    assert len(_aliases.history(s3, "run=r1/best")) == 32
    tomb = set_version(s3, "run=r1/best", None, history[-1].row_id)
    assert tomb.sequence == 33 and _aliases.current_targets(s3) == {}


def test_a_checkpointer_on_an_s3_catalog_keeps_the_best_and_resumes(server: S3TestServer) -> None:
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    server.client().create_bucket(Bucket=bucket)

    class S3CheckpointV1(TrainingStateV1, schema="s3test.checkpoint", version=1):
        run: str
        epoch: int
        val_loss: float | None = None

    catalog = Catalog.create(f"s3://{bucket}/runs", S3CheckpointV1, partition_by=["run"])
    net = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    checkpointer = Checkpointer(catalog, keep_top_k=2, keep_last=1, columns={"run": "r"})
    ids = []
    for epoch, loss in enumerate([0.5, 0.2, 0.4, 0.3, 0.6]):
        net(torch.randn(4, 3)).sum().backward()
        optimizer.step()
        ids.append(checkpointer.save(net, optimizer=optimizer, epoch=epoch, val_loss=loss))
    again = Catalog.open(f"s3://{bucket}/runs")
    kept = again.sql("SELECT row_id FROM models ORDER BY row_id").fetchall()
    assert [r for (r,) in kept] == [ids[1], ids[3], ids[4]]  # 0.2, 0.3 and the last
    assert again.get("run=r/best").row_id == ids[1]
    fresh = torch.nn.Linear(3, 2)
    last = Checkpointer(again, columns={"run": "r"}).resume(fresh)
    assert last is not None and last.epoch == 4
    assert torch.equal(fresh.weight, net.weight.detach())
    again.alias("production", "run=r/best")
    assert again.retain(by="val_loss", mode="min", keep_top_k=1, dry_run=True) == [ids[3]]
    assert [a.name for a in again.aliases()] == ["production", "run=r/best", "run=r/last"]
