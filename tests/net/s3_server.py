"""A loopback S3 server for the tests of jaxnet.net: moto's ThreadedMotoServer on
127.0.0.1 with one bucket, dummy credentials set for the module that uses it only.

A test module imports the fixture (`from s3_server import endpoint`); a helper module,
not a second conftest.py, so that `from conftest import ...` stays unambiguous."""
import socket

import pytest

BUCKET = "jaxnet-test"


def free_port() -> int:
  """A loopback port nothing listens on (now)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
  """A moto S3 server on loopback with one bucket; AWS variables are set (dummy keys, no
  profile or shared files) for this module only and restored after it."""
  import boto3
  from moto.server import ThreadedMotoServer
  empty = tmp_path_factory.mktemp("aws") / "none"
  with pytest.MonkeyPatch.context() as mp:
    for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "JAXNET_S3_ENDPOINT", "AWS_SESSION_TOKEN"):
      mp.delenv(var, raising=False)
    for var, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": str(empty),
                       "AWS_SHARED_CREDENTIALS_FILE": str(empty),
                       "AWS_EC2_METADATA_DISABLED": "true"}.items():
      mp.setenv(var, value)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
      url = f"http://127.0.0.1:{port}"
      boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(Bucket=BUCKET)
      yield url
    finally:
      server.stop()
