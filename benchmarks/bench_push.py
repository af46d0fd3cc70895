"""Push: `qinfra` push against plain boto3 `upload_file` (defaults) on the same S3 endpoint.

Run: .venv/bin/python benchmarks/bench_push.py [--size-mib 256] [--files 2] [--runs 2]
     [--endpoint URL]   (default: a moto server started on 127.0.0.1 for the run)
Prints the best wall time of: boto3 upload_file with default settings, one file after another;
a first qinfra push of the same files (hashing, upload, verification and manifest included,
hash cache empty); and a re-push of the unchanged artifact as a new process makes it (the hash
cache loaded from disk, a new S3 client; nothing hashed, nothing uploaded). Ratios: first push
against boto3 (above 1 is faster), and re-push as a share of the first push (goal: at most 2%).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.sample_files import write_random  # noqa: E402
from qinfra.artifacts.fetch import fetch  # noqa: E402
from qinfra.artifacts.hashcache import HashCache  # noqa: E402
from qinfra.artifacts.hashing import Hasher  # noqa: E402
from qinfra.artifacts.push import PushResult, push  # noqa: E402
from qinfra.artifacts.stores import MIB, open_store  # noqa: E402


@contextlib.contextmanager
def endpoint(url: str | None, tmp: Path) -> Iterator[str]:
    if url:
        yield url
        return
    from tests.s3server import moto_server

    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    with moto_server(tmp / "moto.log") as started:
        yield started


def timed(runs: int, fn: Callable[[int], object], reset: Callable[[], None]) -> float:
    """Best wall time of `fn(run)` over `runs`, with `reset()` (untimed) before each."""
    times = []
    for run in range(runs):
        reset()
        start = time.perf_counter()
        fn(run)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=256, help="total bytes, in MiB")
    parser.add_argument("--files", type=int, default=2, help="the bytes split into this many")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--endpoint", help="an S3 endpoint to use instead of a local moto")
    args = parser.parse_args()
    import boto3

    with (
        tempfile.TemporaryDirectory(prefix="bench-push-") as tmp_name,
        endpoint(args.endpoint, Path(tmp_name)) as url,
    ):
        tmp = Path(tmp_name)
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        os.environ["AWS_ENDPOINT_URL"] = url
        model = tmp / "model"
        model.mkdir()
        for i in range(args.files):
            write_random(model / f"model-{i:05d}.safetensors", args.size_mib * MIB // args.files)
        paths = sorted(model.iterdir())
        client = boto3.client("s3")
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        client.create_bucket(Bucket=bucket)

        def empty() -> None:
            """Start every timed push from an empty bucket (moto keeps objects in memory)."""
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                for obj in page.get("Contents", []):
                    client.delete_object(Bucket=bucket, Key=obj["Key"])

        def plain(run: int) -> None:
            for path in paths:
                client.upload_file(str(path), bucket, f"plain-{run}/{path.name}")

        cache_file = tmp / "hash-cache.json"

        def push_once(run: int) -> PushResult:
            hasher = Hasher(cache=HashCache(cache_file))
            store = open_store(f"s3://{bucket}/qinfra-{run}", cache=hasher.cache)
            return push(fetch(str(model)), store, hasher=hasher)

        def cold() -> None:
            empty()
            cache_file.unlink(missing_ok=True)

        plain_s = timed(args.runs, plain, empty)
        first_s = timed(args.runs, push_once, cold)
        fresh = args.runs  # a prefix no timed run used, so this push uploads everything
        result = push_once(fresh)
        repush_s = timed(args.runs, lambda _: push_once(fresh), lambda: None)
        assert push_once(fresh).uploaded_bytes == 0 and result.uploaded_bytes > 0
        empty()

    mib = args.size_mib
    print(f"{os.cpu_count()} CPUs, {mib} MiB in {args.files} files, {url}, best of {args.runs}")
    print(f"{'boto3 upload_file (defaults)':34} {plain_s:7.2f} s {mib / plain_s:7.0f} MiB/s")
    print(
        f"{'qinfra push (hash+upload+verify)':34} {first_s:7.2f} s {mib / first_s:7.0f} MiB/s"
        f"   ratio vs boto3 {plain_s / first_s:5.2f}"
    )
    print(
        f"{'qinfra re-push (unchanged)':34} {repush_s:7.2f} s {mib / repush_s:7.0f} MiB/s"
        f"   {100 * repush_s / first_s:5.2f}% of first push"
    )


if __name__ == "__main__":
    main()
