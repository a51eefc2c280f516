"""Catalogs on S3 against a local S3 server: reads, checkpoint loads, and ``best``.

Starts the tests' S3-compatible server (moto, tests/s3server.py) in its own interpreter on
127.0.0.1 and measures three things (``--part``, default all):

**read**: one object of random bytes (``--mb``, default 200) read whole, alternating each round:

- ``read_all``: S3Store.read_all, parallel ranged GETs straight into one buffer;
- ``get_object``: botocore's GetObject and ``Body.read()``, one stream (the client alone);
- ``download_fileobj``: boto3's managed transfer into a BytesIO (s3transfer's parallel ranged
  download), when boto3 is installed.

It prints the median time and throughput of each and the ratio of read_all to the faster of the
others. It runs against two servers: moto with ranged GETs served in O(range) as S3 does (the
targets'), and moto as it is, which reads the whole object for each ranged GET, so that every
ranged reader (read_all, s3transfer) pays size x ranges there.

**load**: a checkpoint of ``--mb`` MB appended to an ``s3://`` catalog, then loaded into a fresh
model: ``catalog.get(row_id)`` + ``load_weights`` (the row read into memory with parallel ranged
reads, checked, its tensors copied into the model), also with ``verify=True`` (every checksum),
and ``catalog.get`` alone (no copy into a model), against botocore's GetObject of the same row
object's bytes alone. Target: at least 0.8x.

**best**: ``catalog.best("accuracy")`` on a catalog of ``--rows`` rows (default 10,000) on S3,
counting the requests its S3 client sends (a botocore ``before-send`` hook): opened afresh (a new
client, the catalog description, the index, the chosen row) and on an open catalog. Target: at
most 10 requests and under 0.5 s. (The catalog is built locally and its files uploaded: 10,000
appends through the server would take the benchmark minutes, and give the same objects.)

    PYTHONPATH=src python benchmarks/s3_load.py [--mb 200] [--rows 10000] [--rounds 5]
        [--server both] [--part all|read|load|best]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MB = 1_000_000


def start_server(fast_ranges: bool) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, str(ROOT / "tests" / "s3server.py"), "serve"]
    server = subprocess.Popen(
        [*command, "--fast-ranges"] if fast_ranges else command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    endpoint = server.stdout.readline().strip()
    if not endpoint.startswith("http://127.0.0.1:"):
        server.kill()
        raise SystemExit(f"the S3 test server did not start (said {endpoint!r})")
    return server, endpoint


def measure(size: int, rounds: int, fast_ranges: bool) -> dict[str, list[float]]:
    """Seconds per whole read of a ``size``-byte object, for each reader, alternating."""
    import botocore.session

    from modelrows._catalog._s3 import S3Store

    server, endpoint = start_server(fast_ranges)
    try:
        client = botocore.session.Session().create_client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket="bench")
        store = S3Store("s3://bench/ckpts", endpoint_url=endpoint)
        store.put_if_absent("row.arrow", os.urandom(size))

        def read_all() -> int:
            return len(store.read_all("row.arrow"))

        def get_object() -> int:
            return len(client.get_object(Bucket="bench", Key="ckpts/row.arrow")["Body"].read())

        readers: dict[str, Callable[[], int]] = {"read_all": read_all, "get_object": get_object}
        try:
            import boto3

            s3: Any = boto3.session.Session().client("s3", endpoint_url=endpoint)

            def download_fileobj() -> int:
                out = io.BytesIO()
                s3.download_fileobj("bench", "ckpts/row.arrow", out)
                return len(out.getbuffer())

            readers["download_fileobj"] = download_fileobj
        except ImportError:
            pass

        for read in readers.values():  # warm: connections, page cache, code paths
            assert read() == size
        times: dict[str, list[float]] = {name: [] for name in readers}
        for _ in range(rounds):
            for name, read in readers.items():
                start = time.perf_counter()
                assert read() == size
                times[name].append(time.perf_counter() - start)
        return times
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(timeout=60)


def report(title: str, size: int, times: dict[str, list[float]]) -> float:
    print(title)
    print(f"  {'reader':<18} {'median s':>9} {'MB/s':>8}   (min - max s)")
    speed = {}
    for name, spent in times.items():
        median = statistics.median(spent)
        speed[name] = size / MB / median
        low, high = min(spent), max(spent)
        print(f"  {name:<18} {median:>9.3f} {speed[name]:>8.0f}   ({low:.3f} - {high:.3f})")
    peers = {name: s for name, s in speed.items() if name != "read_all"}
    for name, s in peers.items():
        print(f"  read_all / {name}: {speed['read_all'] / s:.2f}x")
    best = max(peers, key=peers.__getitem__)
    ratio = speed["read_all"] / peers[best]
    print(f"  read_all / the faster peer ({best}): {ratio:.2f}x")
    return ratio


def row_class() -> Any:
    from modelrows import ModelV1

    class S3BenchRowV1(ModelV1, schema="bench.s3row", version=1):
        run: str
        epoch: int | None = None
        accuracy: float | None = None

    return S3BenchRowV1


def checkpoint(mb: int) -> Any:
    """A model of about ``mb`` MB of float32 weights (2048 x 2048 linear layers, 16.8 MB each)."""
    import torch

    torch.manual_seed(0)
    layers = max(1, round(mb * MB / (2048 * 2049 * 4)))
    return torch.nn.Sequential(*(torch.nn.Linear(2048, 2048) for _ in range(layers)))


def measure_load(mb: int, rounds: int) -> tuple[int, dict[str, list[float]]]:
    """Seconds per load of a ``mb`` MB checkpoint from an s3:// catalog, and per GetObject of
    the same row object; and the object's size."""
    import botocore.session
    import torch

    from modelrows import Catalog, fetch_weights, load_weights

    server, endpoint = start_server(fast_ranges=True)
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    try:
        client = botocore.session.Session().create_client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket="load")
        row = row_class()
        source = checkpoint(mb)
        catalog = Catalog.create("s3://load/ckpts", row, partition_by=["run"])
        row_id = catalog.append(row(weights=fetch_weights(source), run="r", epoch=1))
        key = str(catalog.path_of(row_id))[len("s3://load/") :]
        size = int(client.head_object(Bucket="load", Key=key)["ContentLength"])
        target = checkpoint(mb)
        with torch.no_grad():
            for p in target.parameters():
                p.zero_()

        def get_alone() -> None:
            catalog.get(row_id)

        def get_load() -> None:
            load_weights(target, catalog.get(row_id).weights)

        def get_verify_load() -> None:
            load_weights(target, catalog.get(row_id, verify=True).weights)

        def get_object() -> None:
            assert len(client.get_object(Bucket="load", Key=key)["Body"].read()) == size

        readers: dict[str, Callable[[], None]] = {
            "get": get_alone,
            "get+load_weights": get_load,
            "get(verify)+load": get_verify_load,
            "get_object": get_object,
        }
        for read in readers.values():
            read()
        assert all(
            torch.equal(a, b) for a, b in zip(target.parameters(), source.parameters(), strict=True)
        )
        times: dict[str, list[float]] = {name: [] for name in readers}
        for _ in range(rounds):
            for name, read in readers.items():
                start = time.perf_counter()
                read()
                times[name].append(time.perf_counter() - start)
        return size, times
    finally:
        os.environ.pop("AWS_ENDPOINT_URL", None)
        assert server.stdin is not None
        server.stdin.close()
        server.wait(timeout=60)


def build_catalog(root: Path, rows: int) -> Any:
    """A local catalog of ``rows`` small rows (100 runs), appended 500 at a time, compacted."""
    import random

    import torch

    from modelrows import Catalog, fetch_weights

    row = row_class()
    catalog = Catalog.create(root, row, partition_by=["run"])
    weights = fetch_weights(torch.nn.Linear(8, 8))
    rng = random.Random(0)
    for start in range(0, rows, 500):
        batch = [
            row(weights=weights, run=f"r{i % 100}", epoch=i // 100, accuracy=rng.random())
            for i in range(start, min(rows, start + 500))
        ]
        catalog.append_many(batch, fsync=False)
    catalog.compact()
    return catalog


def measure_best(rows: int, rounds: int) -> dict[str, tuple[list[int], list[float]]]:
    """Requests and seconds of ``best`` on an S3 catalog of ``rows`` rows: opened afresh each
    round (a new client), and on an open catalog."""
    import botocore.session

    from modelrows import Catalog
    from modelrows._catalog._s3 import S3Store

    server, endpoint = start_server(fast_ranges=True)
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    try:
        client = botocore.session.Session().create_client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket="best")
        with tempfile.TemporaryDirectory() as tmp:
            local = build_catalog(Path(tmp) / "c", rows)
            expected = local.best("accuracy").extras["row_id"]
            files = [p for p in local.root.rglob("*") if p.is_file()]

            def upload(path: Path) -> None:
                key = "ckpts/" + path.relative_to(local.root).as_posix()
                client.put_object(Bucket="best", Key=key, Body=path.read_bytes())

            with ThreadPoolExecutor(16) as pool:
                list(pool.map(upload, files))
        url = "s3://best/ckpts"
        sent = [0]

        def count(**_: Any) -> None:
            sent[0] += 1

        def counted_store() -> S3Store:
            store = S3Store.from_url(url)
            store._client.meta.events.register("before-send.s3", count)
            return store

        out: dict[str, tuple[list[int], list[float]]] = {"open+best": ([], []), "best": ([], [])}
        opened = Catalog._open(counted_store())
        assert len(opened) == rows
        for _ in range(rounds + 1):  # the first round warms code paths and connections
            sent[0] = 0
            start = time.perf_counter()
            fresh = Catalog._open(counted_store())
            chosen = fresh.best("accuracy")
            spent = time.perf_counter() - start
            assert chosen is not None and chosen.extras["row_id"] == expected
            out["open+best"][0].append(sent[0])
            out["open+best"][1].append(spent)
            sent[0] = 0
            start = time.perf_counter()
            chosen = opened.best("accuracy")
            spent = time.perf_counter() - start
            assert chosen is not None and chosen.extras["row_id"] == expected
            out["best"][0].append(sent[0])
            out["best"][1].append(spent)
        return {name: (n[1:], s[1:]) for name, (n, s) in out.items()}
    finally:
        os.environ.pop("AWS_ENDPOINT_URL", None)
        assert server.stdin is not None
        server.stdin.close()
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=200, help="object size in MB (default 200)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument(
        "--rows", type=int, default=10_000, help="rows of the best catalog (default 10000)"
    )
    parser.add_argument(
        "--part", choices=["all", "read", "load", "best"], default="all", help="what to measure"
    )
    parser.add_argument(
        "--server",
        choices=["s3like", "moto", "both"],
        default="both",
        help="s3like: ranges served in O(range) as S3 does (the target); moto: moto's own "
        "ranges, which read the whole object each; default both",
    )
    args = parser.parse_args()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
    )
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"):
        os.environ.pop(name, None)
    size = args.mb * MB
    if args.part in ("all", "read"):
        print(f"reading a {args.mb} MB object whole from a local S3 server, {args.rounds} rounds")
        ratio = None
        if args.server in ("s3like", "both"):
            times = measure(size, args.rounds, fast_ranges=True)
            ratio = report("server: moto, ranges served in O(range) as S3 does", size, times)
        if args.server in ("moto", "both"):
            times = measure(size, args.rounds, fast_ranges=False)
            report("server: moto as is (each ranged GET reads the whole object)", size, times)
        if ratio is not None:
            verdict = "met" if ratio >= 0.8 else "NOT met"
            print(
                f"target: read_all >= 0.8x the faster peer, O(range) server: {ratio:.2f}x, "
                f"{verdict}"
            )
    if args.part in ("all", "load"):
        print(f"loading a {args.mb} MB checkpoint from an s3:// catalog, {args.rounds} rounds")
        object_size, times = measure_load(args.mb, args.rounds)
        print(f"server: moto, ranges served in O(range) as S3 does; row object {object_size:,} B")
        print(f"  {'reader':<18} {'median s':>9} {'MB/s':>8}   (min - max s)")
        speed = {}
        for name, spent in times.items():
            median = statistics.median(spent)
            speed[name] = object_size / MB / median
            print(
                f"  {name:<18} {median:>9.3f} {speed[name]:>8.0f}   "
                f"({min(spent):.3f} - {max(spent):.3f})"
            )
        ratio = speed["get+load_weights"] / speed["get_object"]
        print(
            f"  get (the row in memory, checked) / get_object: "
            f"{speed['get'] / speed['get_object']:.2f}x"
        )
        checked = speed["get(verify)+load"] / speed["get_object"]
        print(f"  get(verify)+load / get_object: {checked:.2f}x")
        verdict = "met" if ratio >= 0.8 else "NOT met"
        print(f"target: get+load_weights >= 0.8x get_object: {ratio:.2f}x, {verdict}")
    if args.part in ("all", "best"):
        print(f"best on a {args.rows:,}-row s3:// catalog, {args.rounds} rounds")
        found = measure_best(args.rows, args.rounds)
        for name, (requests, spent) in found.items():
            print(
                f"  {name:<10} requests {max(requests):>3}   median {statistics.median(spent):.3f} s"
                f"   (min {min(spent):.3f}, max {max(spent):.3f})"
            )
        requests, spent = found["open+best"]
        median = statistics.median(spent)
        verdict = "met" if max(requests) <= 10 and median < 0.5 else "NOT met"
        print(
            f"target: open+best <= 10 requests and < 0.5 s: {max(requests)} requests, "
            f"{median:.3f} s, {verdict}"
        )


if __name__ == "__main__":
    main()
