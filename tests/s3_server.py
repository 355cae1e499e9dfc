"""moto's S3 server on a free loopback port, standing in for an s3-compatible store."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest


@contextmanager
def running_s3_server() -> Iterator[str]:
    """Yield the endpoint URL of a moto S3 server (skips without moto and Flask, the dev extra)."""
    server_module = pytest.importorskip("moto.moto_server.threaded_moto_server",
                                        reason="moto and Flask (the dev extra) are not installed")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()
