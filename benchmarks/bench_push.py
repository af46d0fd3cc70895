"""First push and re-push against a plain copy of the same bytes, on S3 (moto) and file://.

Run: .venv/bin/python benchmarks/bench_push.py [--size-mib 256] [--files 2] [--runs 2]
     [--endpoint URL]   (default: a moto server started on 127.0.0.1 for the run)
Prints the best wall time of each, all in this one process, the cases taking turns run by run:
- S3: boto3 upload_file with default settings, one file after another; a first qinfra push
  (hash cache empty: hash, upload with S3 SHA256 checksums, verify, manifest); the rejected
  alternative, hashing while uploading to a staging key and then a server-side copy under the
  final key (what content addressing needs when the id is known only after the last byte); and a
  re-push of the unchanged artifact as a new process makes it (hash cache loaded, new client).
- file://: shutil.copyfile of the files; a first qinfra push (each file hashed while it is
  written to a staging path, then renamed into place: one read of each byte); the same push
  with every file hashed first (the S3 path's order).
With --checksums, also qinfra's upload alone with SHA256 (what it sends) and CRC32 (boto3's
default) part checksums. Ratios: each against its plain copy (above 1 is faster), re-push as a
share of the first push (goal: at most 2%).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.sample_files import write_random  # noqa: E402
from qinfra.artifacts.fetch import fetch  # noqa: E402
from qinfra.artifacts.hashcache import HashCache  # noqa: E402
from qinfra.artifacts.hashing import Hasher, HashingReader  # noqa: E402
from qinfra.artifacts.progress import NO_PROGRESS  # noqa: E402
from qinfra.artifacts.push import PushResult, push  # noqa: E402
from qinfra.artifacts.store_open import open_store  # noqa: E402
from qinfra.artifacts.stores import MIB, TransferSettings  # noqa: E402


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
    return min(interleaved(runs, {"": (fn, reset)})[""])


def interleaved(runs: int, cases: dict[str, tuple[Callable[[int], object], Callable[[], None]]],
                ) -> dict[str, list[float]]:
    """Wall times of each case's `fn(run)`, `reset()` (untimed) before each, the cases taking
    turns run by run so that a change in machine load hits them all alike."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for run in range(runs):
        for name, (fn, reset) in cases.items():
            reset()
            start = time.perf_counter()
            fn(run)
            times[name].append(time.perf_counter() - start)
    return times


def stage_then_copy(client: Any, bucket: str, paths: list[Path], prefix: str) -> None:
    """The rejected S3 design: each file streamed once through a hashing reader to a staging
    key (S3 checks a SHA256 per part), then copied server-side to its final key."""
    from boto3.s3.transfer import create_transfer_manager

    config = TransferSettings().boto_config()
    readers = [HashingReader(p, p.stat().st_size) for p in paths]
    extra = {"ServerSideEncryption": "AES256", "ChecksumAlgorithm": "SHA256"}
    with create_transfer_manager(client, config) as manager:
        futures = [manager.upload(r, bucket, f"{prefix}/staging/{p.name}", extra_args=extra)
                   for r, p in zip(readers, paths, strict=True)]
        for future in futures:
            future.result()
    digests = [r.hexdigest() for r in readers]
    with create_transfer_manager(client, config) as manager:
        futures = [manager.copy({"Bucket": bucket, "Key": f"{prefix}/staging/{p.name}"}, bucket,
                                f"{prefix}/final/{p.name}",
                                extra_args={**extra, "MetadataDirective": "REPLACE",
                                            "Metadata": {"sha256": d}})
                   for p, d in zip(paths, digests, strict=True)]
        for future in futures:
            future.result()


def upload_with(client: Any, bucket: str, paths: list[Path], prefix: str, algorithm: str) -> None:
    """qinfra's transfer (its part size, files in parallel) with a given S3 part checksum."""
    from boto3.s3.transfer import create_transfer_manager

    extra = {"ServerSideEncryption": "AES256", "ChecksumAlgorithm": algorithm}
    with create_transfer_manager(client, TransferSettings().boto_config()) as manager:
        futures = [manager.upload(str(p), bucket, f"{prefix}/{p.name}", extra_args=extra)
                   for p in paths]
        for future in futures:
            future.result()


def s3_rows(args: argparse.Namespace, tmp: Path, model: Path, paths: list[Path]) -> list[str]:
    import boto3

    with endpoint(args.endpoint, tmp) as url:
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        os.environ["AWS_ENDPOINT_URL"] = url
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

        cases = {
            "plain": (plain, empty), "push": (push_once, cold),
            "staged": (lambda run: stage_then_copy(client, bucket, paths, f"s{run}"), empty)}
        if args.checksums:  # the upload alone, with the two part checksums
            for algorithm in ("SHA256", "CRC32"):
                cases[algorithm] = (lambda run, a=algorithm: upload_with(  # type: ignore[misc]
                    client, bucket, paths, f"{a}-{run}", a), empty)
        times = interleaved(args.runs, cases)
        plain_s, first_s, staged_s = (min(times[k]) for k in ("plain", "push", "staged"))
        fresh = args.runs  # a prefix no timed run used, so this push uploads everything
        result = push_once(fresh)
        repush_s = timed(args.runs, lambda _: push_once(fresh), lambda: None)
        assert push_once(fresh).uploaded_bytes == 0 and result.uploaded_bytes > 0
        empty()
    mib = args.size_mib
    return [
        f"S3 at {url}",
        _row("boto3 upload_file (defaults)", plain_s, mib),
        _row("qinfra push (hash, upload, verify)", first_s, mib, plain_s),
        _row("hash while uploading + S3 copy", staged_s, mib, plain_s),
        _row("qinfra re-push (unchanged)", repush_s, mib)
        + f"   {100 * repush_s / first_s:5.2f}% of first push",
        *(_row(f"upload only, {a} part checksums", min(times[a]), mib, plain_s)
          for a in ("SHA256", "CRC32") if a in times),
    ]


def file_rows(args: argparse.Namespace, tmp: Path, model: Path, paths: list[Path]) -> list[str]:
    out = tmp / "file-store"

    def reset() -> None:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()

    def plain(_: int) -> None:
        for path in paths:
            shutil.copyfile(path, out / path.name)

    def push_once(_: int) -> PushResult:
        return push(fetch(str(model)), open_store(f"file://{out}/store"))

    def hash_first(_: int) -> PushResult:
        hasher, fetched = Hasher(), fetch(str(model))
        hasher.hash_files(fetched.files, NO_PROGRESS)  # every digest known: nothing is staged
        return push(fetched, open_store(f"file://{out}/store"), hasher=hasher)

    times = interleaved(args.runs, {"plain": (plain, reset), "staged": (push_once, reset),
                                    "hashed": (hash_first, reset)})
    plain_s, staged_s, hashed_s = (min(times[k]) for k in ("plain", "staged", "hashed"))
    mib = args.size_mib
    return [
        f"file:// at {out}",
        _row("shutil.copyfile", plain_s, mib),
        _row("qinfra push (hash while writing)", staged_s, mib, plain_s),
        _row("qinfra push, hashing first", hashed_s, mib, plain_s),
    ]


def _row(name: str, seconds: float, mib: int, plain_s: float | None = None) -> str:
    line = f"{name:36} {seconds:7.2f} s {mib / seconds:7.0f} MiB/s"
    return line + (f"   ratio vs plain {plain_s / seconds:5.2f}" if plain_s else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=256, help="total bytes, in MiB")
    parser.add_argument("--files", type=int, default=2, help="the bytes split into this many")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--endpoint", help="an S3 endpoint to use instead of a local moto")
    parser.add_argument("--checksums", action="store_true",
                        help="also time qinfra's upload alone with SHA256 and CRC32 part checksums")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-push-") as tmp_name:
        tmp = Path(tmp_name)
        model = tmp / "model"
        model.mkdir()
        for i in range(args.files):
            write_random(model / f"model-{i:05d}.safetensors", args.size_mib * MIB // args.files)
        paths = sorted(model.iterdir())
        lines = [*s3_rows(args, tmp, model, paths), *file_rows(args, tmp, model, paths)]
    print(f"{os.cpu_count()} CPUs, {args.size_mib} MiB in {args.files} files, best of {args.runs}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
