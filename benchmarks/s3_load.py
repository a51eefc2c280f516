"""Reading a 200 MB object from S3 into memory: the S3 store's read_all against botocore alone.

Starts the tests' S3-compatible server (moto, tests/s3server.py) in its own interpreter on
127.0.0.1, uploads one object of random bytes, then reads it whole, alternating in each round:

- ``read_all``: S3Store.read_all, parallel ranged GETs straight into one buffer;
- ``get_object``: botocore's GetObject and ``Body.read()``, one stream (the client alone);
- ``download_fileobj``: boto3's managed transfer into a BytesIO (s3transfer's parallel ranged
  download), when boto3 is installed.

It prints the median time and throughput of each and the ratio of read_all to the faster of the
others; the target is at least 0.8x. It runs against two servers: moto with ranged GETs served
in O(range) as S3 does (the target's), and moto as it is, which reads the whole object for each
ranged GET, so that every ranged reader (read_all, s3transfer) pays size x ranges there.

    PYTHONPATH=src python benchmarks/s3_load.py [--mb 200] [--rounds 5] [--server both]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=200, help="object size in MB (default 200)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
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
        print(f"target: read_all >= 0.8x the faster peer, O(range) server: {ratio:.2f}x, {verdict}")


if __name__ == "__main__":
    main()
