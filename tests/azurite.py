"""Azurite, Microsoft's Azure Storage emulator, on 127.0.0.1 for the tests and benchmarks.

Azurite is an npm package: ``.ci/run`` installs it into ``.ci/azurite`` where npm is available
(``npm install --prefix .ci/azurite azurite@3``); ``$MODELROWS_AZURITE`` may name its
``azurite-blob`` instead. :class:`Azurite` runs its blob service in memory, in a process of its
own, on a free port; with ``access_log`` it writes one line per request there (the benchmarks
count requests with it). Containers are made with a Create Container request signed with the
emulator's well-known shared key (no Azure SDK needed).
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Azurite's account and key: public, the same in every installation (Microsoft documents them).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


# -- Azurite ------------------------------------------------------------------------------------


def azurite_binary() -> str | None:
    """Azurite's blob server: $MODELROWS_AZURITE, .ci/azurite (where .ci/run installs it) or
    the PATH."""
    for candidate in (
        os.environ.get("MODELROWS_AZURITE"),
        str(ROOT / ".ci" / "azurite" / "node_modules" / ".bin" / "azurite-blob"),
        shutil.which("azurite-blob"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Azurite:
    """Azurite's blob service on 127.0.0.1, in memory, in a process of its own."""

    def __init__(self, binary: str, *, access_log: Path | None = None) -> None:
        self.port = free_port()
        self._log = open(access_log, "wb") if access_log is not None else None  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                binary,
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                str(self.port),
                "--inMemoryPersistence",
                "--skipApiVersionCheck",
                "--loose",
                "--disableTelemetry",
                *([] if access_log is not None else ["--silent"]),
            ],
            stdout=self._log if self._log is not None else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while True:  # until it accepts connections (it prints nothing when ready)
            if self.process.poll() is not None:
                assert self.process.stderr is not None
                raise RuntimeError(f"azurite exited: {self.process.stderr.read().decode()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("azurite did not start listening within 60 s") from None
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def create_container(self, name: str) -> None:
        """Creates a container (Create Container, signed with the emulator's shared key)."""
        date = email.utils.formatdate(usegmt=True)
        headers = f"x-ms-date:{date}\nx-ms-version:2021-08-06\n"
        resource = f"/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{name}\nrestype:container"
        to_sign = "PUT\n\n\n\n\napplication/octet-stream\n" + "\n" * 6 + headers + resource
        key = base64.b64decode(AZURITE_KEY)
        signature = base64.b64encode(hmac.new(key, to_sign.encode(), hashlib.sha256).digest())
        request = urllib.request.Request(
            f"{self.url}/{AZURITE_ACCOUNT}/{name}?restype=container",
            method="PUT",
            data=b"",
            headers={
                "x-ms-date": date,
                "x-ms-version": "2021-08-06",
                "Content-Type": "application/octet-stream",
                "Authorization": f"SharedKey {AZURITE_ACCOUNT}:{signature.decode()}",
            },
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 201

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()
        if self._log is not None:
            self._log.close()


def _stuck_worker(url: str, run: str, stage: str) -> None:
    """``python tests/azurite.py append-stuck URL RUN STAGE``: append one 12 MB row to the
    catalog at URL and stop inside the append, printing ``stuck``: STAGE ``upload`` once the
    first part of its multipart upload was taken by obstore, ``publish`` once the row object
    is written, before its index entry is; the test kills the process."""
    import sys
    from typing import Any

    from modelrows import Catalog, fetch_weights
    from modelrows._catalog import _objstore
    from modelrows._catalog._index import Index
    from s3server import model, row_class

    def stuck(*args: Any, **kwargs: Any) -> Any:
        print("stuck", flush=True)
        sys.stdin.read()  # until killed

    if stage == "upload":
        send = _objstore._Upload._send

        def part_then_stuck(self: Any, item: object) -> None:
            send(self, item)
            assert self._queue is not None
            while not self._queue.empty():  # obstore took the part
                time.sleep(0.01)
            stuck()

        _objstore._Upload._send = part_then_stuck  # type: ignore[method-assign]
    else:
        Index.publish_add = stuck  # type: ignore[method-assign]
    row = row_class()
    Catalog.open(url).append(row(weights=fetch_weights(model(0, 1750)), run=run))


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["append-stuck"]:
        _stuck_worker(*sys.argv[2:5])
