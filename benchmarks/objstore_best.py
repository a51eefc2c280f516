"""``best`` on an ``az://`` catalog (the obstore store) against Azurite on 127.0.0.1.

Builds a catalog of ``--rows`` small rows locally (100 runs, appended 500 at a time, compacted),
uploads its files to a container of Azurite (tests/azurite.py; npm package, see there), and
times ``catalog.best("accuracy")`` opened afresh each round (a new store: the catalog
description, the index, the chosen row) and on an open catalog. Requests are counted from
Azurite's access log (one line per request). With ``--s3``, the same against moto's S3 server
(tests/s3server.py) through the botocore store (``s3://``) for comparison.

Azurite is the only emulator obstore's stores run against here: the Google Cloud Storage
emulator on PyPI (``gcp-storage-emulator``) does not serve GCS's XML API, which obstore uses.

    PYTHONPATH=src python benchmarks/objstore_best.py [--rows 1000] [--rounds 5] [--s3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def timed_best(
    make: Any, rows: int, rounds: int, expected: str, count: Any
) -> dict[str, tuple[list[int], list[float]]]:
    from modelrows import Catalog

    out: dict[str, tuple[list[int], list[float]]] = {"open+best": ([], []), "best": ([], [])}
    opened = Catalog._open(make())
    assert len(opened) == rows
    for _ in range(rounds + 1):  # the first round warms code paths and connections
        before = count()
        start = time.perf_counter()
        chosen = Catalog._open(make()).best("accuracy")
        spent = time.perf_counter() - start
        assert chosen is not None and chosen.extras["row_id"] == expected
        out["open+best"][0].append(count() - before)
        out["open+best"][1].append(spent)
        before = count()
        start = time.perf_counter()
        chosen = opened.best("accuracy")
        spent = time.perf_counter() - start
        assert chosen is not None and chosen.extras["row_id"] == expected
        out["best"][0].append(count() - before)
        out["best"][1].append(spent)
    return {name: (n[1:], s[1:]) for name, (n, s) in out.items()}


def report(title: str, results: dict[str, tuple[list[int], list[float]]]) -> None:
    print(title)
    for name, (sent, seconds) in results.items():
        counted = f"{max(sent)} requests" if sent and max(sent) >= 0 else "requests not counted"
        print(
            f"  {name:10s} median {statistics.median(seconds) * 1000:7.1f} ms "
            f"(min {min(seconds) * 1000:.1f}, max {max(seconds) * 1000:.1f}), {counted}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--s3", action="store_true", help="also s3:// on moto (botocore store)")
    args = parser.parse_args()

    from s3_load import build_catalog

    from azurite import Azurite, azurite_binary
    from modelrows._catalog._objstore import ObjStore

    binary = azurite_binary()
    if binary is None:
        sys.exit("Azurite is not installed: npm install --prefix .ci/azurite azurite@3")
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "access.log"
        server = Azurite(binary, access_log=log)
        try:
            server.create_container("best")
            os.environ["AZURE_STORAGE_USE_EMULATOR"] = "true"
            os.environ["AZURITE_BLOB_STORAGE_URL"] = server.url
            local = build_catalog(Path(tmp) / "c", args.rows)
            expected = local.best("accuracy").extras["row_id"]
            files = [p for p in local.root.rglob("*") if p.is_file()]
            url = "az://best/ckpts"
            store = ObjStore.from_url(url)
            start = time.perf_counter()
            with ThreadPoolExecutor(16) as pool:
                list(
                    pool.map(
                        lambda p: store.put_if_absent(
                            p.relative_to(local.root).as_posix(), p.read_bytes()
                        ),
                        files,
                    )
                )
            print(
                f"uploaded {len(files)} files of a {args.rows}-row catalog to {url} in "
                f"{time.perf_counter() - start:.1f} s"
            )

            def requests() -> int:
                with open(log, "rb") as f:
                    return sum(1 for line in f if b'HTTP/1.1"' in line)

            results = timed_best(
                lambda: ObjStore.from_url(url), args.rows, args.rounds, expected, requests
            )
            report(f"az:// on Azurite, {args.rows} rows, {args.rounds} rounds:", results)
        finally:
            server.stop()
        if args.s3:
            from s3_load import measure_best

            s3 = measure_best(args.rows, args.rounds)
            report(f"s3:// on moto (botocore store), {args.rows} rows:", s3)


if __name__ == "__main__":
    main()
