"""A real S3-compatible HTTP server on 127.0.0.1 for the tests and benchmarks: `moto_server` (from moto[server]),
started at a free port, waited for, and stopped."""
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


class S3Server:
    """A real S3-compatible HTTP server (moto_server, from moto[server]) on 127.0.0.1 at a free port."""

    def __init__(self, directory: Path, *, checks_credentials: bool = False):
        """checks_credentials: refuse keys the server does not know (moto's IAM checks), as a real store does."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = directory / "moto_server.log"
        with open(self.log, "wb") as log:
            environment = {**os.environ, **({"INITIAL_NO_AUTH_ACTION_COUNT": "0"} if checks_credentials else {})}
            self.process = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1",
                                             "-p", str(self.port)], stdout=log, stderr=subprocess.STDOUT, env=environment)
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(self.endpoint, timeout=2).close()
                break
            except urllib.error.HTTPError:  # it answers (refusing an unsigned request, when it checks credentials)
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto_server did not start: {self.log.read_text()[-2000:]}")
                time.sleep(0.2)
        self.buckets = 0

    # Credentials the server accepts (any); the secret is distinctive so that tests can look for it in outputs.
    ENVIRONMENT = {"AWS_ACCESS_KEY_ID": "tl-test-key-id", "AWS_SECRET_ACCESS_KEY": "tl-test-secret-5e3c7a",
                   "AWS_REGION": "us-east-1"}

    def environment(self) -> dict:
        return {**self.ENVIRONMENT, "AWS_ENDPOINT_URL": self.endpoint}

    def new_bucket(self) -> str:
        import boto3

        self.buckets += 1
        name = f"bucket-{self.buckets:03d}"
        boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                     aws_access_key_id="x", aws_secret_access_key="x").create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except Exception:
            self.process.kill()
