"""Fixtures shared by several test folders. Only the S3 server lives here (used by tests/shards and,
later, the data pipeline and demo tests); each folder keeps its own fixtures in its own conftest.py."""

import pytest

from tests.helpers.s3_server import start_s3_server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server (SeaweedFS `weed mini`) on 127.0.0.1 for the whole session, stopped by pid."""
    server = start_s3_server(str(tmp_path_factory.mktemp("seaweedfs")))
    yield server
    server.stop()
