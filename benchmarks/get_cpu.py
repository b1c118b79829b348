"""Client CPU per GET and per PUT: the project's ``Storage.get``/``put`` beside obstore, s3torchconnector
and boto3, in one process, interleaved over several rounds (issue #16, item 4: GET client CPU <= 0.25 ms
per request and GET objects/s >= obstore's in the same run).

Each round runs every reader over the same objects at 1 and at 16 threads, in a rotated order; CPU is
this process's (RUSAGE_SELF, all threads) over the timed loop only (clients built and warmed before),
the server's from /proc of its processes (Ceph: the pids tools/ceph_dev.sh recorded; they are shared
with anything else using that store, so read the server column as noisy). ``--baseline DIR`` adds the
same project reader imported from another checkout (e.g. ``/work/main``: before/after in one run),
measured in a child process that times its own loop the same way. One more row: SigV4 signing CPU per
whole-object GET, storage/sigv4.py against botocore's S3SigV4Auth (3,000 signatures each per round,
interleaved, this thread's CPU time).

    PYTHONPATH=$PWD python benchmarks/get_cpu.py --target ceph [--baseline /work/main]

Prints a table: median [min-max] per reader, and PASS/FAIL for the targets.
"""
from __future__ import annotations

import argparse
import base64
import functools
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit

from cpu_split import ceph_pids
from peer_stats import round_order
from peer_tools import READERS, importable, measure, project_getter
from run import Endpoint

#: Client CPU per GET the issue asks for (ms).
GET_CPU_TARGET_MS = 0.25
#: s5cmd cp's client CPU per uploaded file in the last peer run (docs/perf16-profile.md): the storage
#: PUT alone must stay well below it (the upload tool's other per-file work, reading, MD5, progress,
#: is measured by benchmarks/peers.py).
PUT_CPU_REFERENCE_MS = 1.06


def getters(ep: Endpoint, bucket: str, threads: int, names: Sequence[str]) -> dict[str, Callable[[str], bytes]]:
    out: dict[str, Callable[[str], bytes]] = {"project": project_getter(ep, bucket, threads)}
    for name in names:
        module, factory = READERS[name]
        if importable(module):
            out[name] = factory(ep, bucket, threads)
    return out


#: Stand-in for a GET's network wait in the harness-only measurement (about a loaded GET's latency).
IDLE_WAIT_S = 0.0005


def idle_wait(key: str) -> bytes:
    """A GIL-free wait and no work: what the thread pool costs per item by itself."""
    time.sleep(IDLE_WAIT_S)
    return b""


def run_gets(get: Callable[[str], bytes], keys: Sequence[str], threads: int) -> None:
    if threads == 1:
        for key in keys:
            get(key)
        return
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(get, keys):
            pass


def project_put(storage: object, prefix: str, body: bytes, key: str) -> None:
    storage.put(f"{prefix}/{key}", body)  # type: ignore[attr-defined]


def run_puts(put: Callable[[str], object], keys: Sequence[str]) -> None:
    for key in keys:
        put(key)


def baseline_child(args: argparse.Namespace, mode: str, threads: int, keys: Sequence[str], pids: Sequence[int]
                   ) -> dict[str, Optional[float]]:
    """The project reader/writer of ``--baseline`` in a child process: its own (cpu, seconds, server cpu)."""
    env = dict(os.environ, PYTHONPATH=f"{args.baseline}{os.pathsep}{Path(__file__).resolve().parent}")
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump({"conf": str(args.conf), "bucket": args.bucket, "keys": list(keys), "threads": threads,
                   "mode": mode, "size": args.size, "pids": list(pids)}, fh)
    try:
        done = subprocess.run([sys.executable, __file__, "--child", fh.name], env=env, capture_output=True, text=True)
    finally:
        os.unlink(fh.name)
    if done.returncode != 0:  # say why (e.g. a baseline checkout caught mid-edit), not just the exit status
        raise RuntimeError(f"--baseline {args.baseline} child failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    out = done.stdout
    result: dict[str, Optional[float]] = json.loads(out.strip().splitlines()[-1])
    return result


def child_main(spec_path: str) -> int:
    """``--child``: run one timed loop with whatever ``blip3o_storage`` PYTHONPATH gives."""
    import warnings

    from blip3o_storage import Storage
    from peer_tools import measure as child_measure
    warnings.simplefilter("ignore")
    spec = json.loads(Path(spec_path).read_text())
    storage = Storage(spec["conf"])
    bucket, keys, threads = spec["bucket"], spec["keys"], spec["threads"]
    if spec["mode"] == "get":
        def get(key: str) -> bytes:
            return storage.get(f"s3://{bucket}/{key}")
        run_gets(get, keys[:20], min(threads, 4))  # warm: client, connections
        cost = child_measure(lambda: run_gets(get, keys, threads), spec["pids"], children=False)
    else:
        body = os.urandom(spec["size"])
        storage.put(f"s3://{bucket}/put-base/warm", body)
        def put(key: str) -> None:
            storage.put(f"s3://{bucket}/put-base/{key}", body)
        cost = child_measure(functools.partial(run_puts, put, keys), spec["pids"], children=False)
    print(json.dumps({"cpu": cost.client_cpu, "seconds": cost.seconds, "server": cost.server_cpu}))
    return 0


#: Signatures per signer per round of the SigV4 row.
SIGN_PER_ROUND = 3000


def sign_cpu_us(ep: Endpoint, bucket: str, rounds: int) -> dict[str, list[float]]:
    """SigV4 signing CPU per whole-object GET (µs, this thread's CPU time): ours
    (storage/sigv4.py, as SignedHTTP calls it) against botocore's S3SigV4Auth on an AWSRequest
    (what signed_http used before, and what boto3 runs per request), interleaved per round."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from blip3o_storage.storage.sigv4 import S3Signer

    host = urlsplit(ep.url).netloc
    credentials = Credentials(ep.access, ep.secret)
    ours = S3Signer("us-east-1", https=ep.url.startswith("https"))
    theirs = S3SigV4Auth(credentials, "s3", "us-east-1")
    paths = [f"/{bucket}/o/{i:05d}" for i in range(SIGN_PER_ROUND)]

    def sign_ours() -> None:
        for path in paths:  # as SignedHTTP._sign: the credentials fetched per request
            frozen: Any = credentials.get_frozen_credentials()
            ours.sign("GET", path, {}, None, host=host, access_key=frozen.access_key, secret_key=frozen.secret_key,
                      token=frozen.token)

    def sign_botocore() -> None:
        for path in paths:
            request = AWSRequest(method="GET", url=f"{ep.url}{path}", headers={})
            request.headers["host"] = host
            request.context["has_streaming_input"] = True
            theirs.add_auth(request)

    signers = {"project": sign_ours, "boto3": sign_botocore}
    out: dict[str, list[float]] = {name: [] for name in signers}
    for r in range(rounds):
        for name in round_order(list(signers), r):
            started = time.thread_time()
            signers[name]()
            out[name].append((time.thread_time() - started) / len(paths) * 1e6)
    return out


def fmt(values: Sequence[float], digits: int = 3) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def main(argv: Optional[list[str]] = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--child"]:
        return child_main(argv[1])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", choices=("moto", "ceph"), default="ceph")
    ap.add_argument("--endpoint-url", default=None)
    ap.add_argument("--access-key", default=None)
    ap.add_argument("--secret-key", default=None)
    ap.add_argument("--objects", type=int, default=600, help="objects read per 16-thread pass (default %(default)s)")
    ap.add_argument("--single", type=int, default=200, help="objects per 1-thread pass (default %(default)s)")
    ap.add_argument("--puts", type=int, default=150, help="PUTs per writer per round (default %(default)s)")
    ap.add_argument("--size", type=int, default=70_000, help="object bytes (default %(default)s: ~an image)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--readers", default="obstore,s3torchconnector,boto3")
    ap.add_argument("--baseline", default=None, help="another checkout's root: its project reader/writer too")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="get-cpu-"))
    ep = Endpoint(args, work)
    args.conf, args.bucket = ep.conf, f"get-cpu-{os.getpid()}"
    process = ep.server.process if ep.server is not None else None
    pids = ceph_pids() if args.target == "ceph" else ([process.pid] if process is not None else [])
    storage = ep.storage()
    backend = storage.s3_backend(f"s3://{args.bucket}/x")
    backend.ensure_bucket(args.bucket)
    body = os.urandom(args.size)
    keys = [f"o/{i:05d}" for i in range(args.objects)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: storage.put(f"s3://{args.bucket}/{key}", body), keys))
    names = [n for n in args.readers.split(",") if n]

    # (row, reader) -> per-round values
    results: dict[tuple[str, str], list[float]] = {}
    ratios: list[float] = []  # project / obstore objects/s at 16 threads, per round
    harness: list[float] = []  # CPU-ms per item of run_gets(idle_wait) at 16 threads, per round

    def add(row: str, reader: str, value: Optional[float]) -> None:
        if value is not None:
            results.setdefault((row, reader), []).append(value)

    readers_by_threads = {threads: getters(ep, args.bucket, threads, names) for threads in (1, 16)}
    for threads, readers in readers_by_threads.items():
        for get in readers.values():  # warm every client: connections, lazy imports
            run_gets(get, keys[:20], min(threads, 4))
    import boto3  # the boto3 writer, as most code would write a PUT
    from botocore.config import Config
    client = boto3.session.Session().client(
        "s3", endpoint_url=ep.url, aws_access_key_id=ep.access, aws_secret_access_key=ep.secret,
        region_name="us-east-1", config=Config(s3={"addressing_style": "path"}))
    md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
    writers: dict[str, Callable[[str], object]] = {
        "project": functools.partial(project_put, storage, f"s3://{args.bucket}/put", body),
        "boto3": lambda key: client.put_object(Bucket=args.bucket, Key=f"put-boto3/{key}", Body=body, ContentMD5=md5),
    }
    for writer in writers.values():
        writer("warm")
    started = time.monotonic()
    for r in range(args.rounds):
        for threads, readers in readers_by_threads.items():
            subset = keys[:args.single] if threads == 1 else keys
            per_round: dict[str, float] = {}
            order = round_order(list(readers) + (["project@baseline"] if args.baseline else []), r)
            for name in order:
                if name == "project@baseline":
                    out = baseline_child(args, "get", threads, subset, pids)
                    cpu, seconds, server = out["cpu"], out["seconds"], out["server"]
                else:
                    cost = measure(functools.partial(run_gets, readers[name], subset, threads), pids, children=False)
                    cpu, seconds, server = cost.client_cpu, cost.seconds, cost.server_cpu
                assert cpu is not None and seconds is not None
                add(f"GET {threads}t CPU-ms/GET", name, cpu / len(subset) * 1e3)
                add(f"GET {threads}t objects/s", name, len(subset) / seconds)
                add(f"GET {threads}t server CPU-ms/GET", name, None if server is None else server / len(subset) * 1e3)
                per_round[name] = len(subset) / seconds
            if threads == 16 and "obstore" in per_round:
                ratios.append(per_round["project"] / per_round["obstore"])
            if threads == 16:  # the thread pool's own share of every reader's 16-thread CPU
                cost = measure(functools.partial(run_gets, idle_wait, subset, threads), pids, children=False)
                assert cost.client_cpu is not None
                harness.append(cost.client_cpu / len(subset) * 1e3)
        put_keys = [f"r{r}-{i:05d}" for i in range(args.puts)]
        for name in round_order(list(writers) + (["project@baseline"] if args.baseline else []), r):
            if name == "project@baseline":
                out = baseline_child(args, "put", 1, put_keys, pids)
                cpu, server = out["cpu"], out["server"]
            else:
                cost = measure(functools.partial(run_puts, writers[name], put_keys), pids, children=False)
                cpu, server = cost.client_cpu, cost.server_cpu
            assert cpu is not None
            add("PUT 1t CPU-ms/PUT", name, cpu / len(put_keys) * 1e3)
            add("PUT 1t server CPU-ms/PUT", name, None if server is None else server / len(put_keys) * 1e3)
        print(f"round {r + 1}/{args.rounds} done ({time.monotonic() - started:.0f}s)", file=sys.stderr)

    sign_row = "SigV4 sign CPU-us/GET (project: storage/sigv4.py; boto3: botocore S3SigV4Auth)"
    for name, values in sign_cpu_us(ep, args.bucket, args.rounds).items():
        for value in values:
            add(sign_row, name, value)
    if "boto3" not in names:
        names.append("boto3")
    columns = ["project"] + (["project@baseline"] if args.baseline else []) + [n for n in names if n != "project"]
    rows = sorted({row for row, _ in results}, key=lambda row: ({"GET": 0, "PUT": 1}.get(row.split()[0], 2), row))
    load = os.getloadavg()[0]
    print(f"\n{args.rounds} rounds, {args.objects} objects of {args.size} B ({args.single} at 1 thread), "
          f"{args.puts} PUTs/round; target {args.target} at {ep.url}; load average {load:.1f} at the end\n")
    print("| row | " + " | ".join(columns) + " | target | verdict |")
    print("|---|" + "---|" * (len(columns) + 2))
    for row in rows:
        target, verdict = "", "info"
        project = results.get((row, "project"), [])
        if row == "GET 16t CPU-ms/GET" or row == "GET 1t CPU-ms/GET":
            target = f"<= {GET_CPU_TARGET_MS}"
            verdict = "PASS" if project and statistics.median(project) <= GET_CPU_TARGET_MS else "FAIL"
        elif row == "GET 16t objects/s" and ratios:
            target = ">= obstore (same-round ratio)"
            verdict = f"{'PASS' if statistics.median(ratios) >= 1 else 'FAIL'} ({fmt(ratios, 2)}x)"
        elif row == "PUT 1t CPU-ms/PUT" and project:
            target = f"< {PUT_CPU_REFERENCE_MS} (s5cmd cp's client CPU per file)"
            share = statistics.median(project) / PUT_CPU_REFERENCE_MS
            verdict = f"{'PASS' if share < 1 else 'FAIL'} ({share:.2f}x of it)"
        elif row == sign_row:
            theirs = results.get((row, "boto3"), [])
            if project and theirs:
                verdict = f"info ({statistics.median(theirs) / statistics.median(project):.1f}x less CPU than botocore)"
        digits = 0 if "objects/s" in row else (1 if row == sign_row else 3)
        cells = [fmt(results.get((row, c), []), digits) for c in columns]
        print(f"| {row} | " + " | ".join(cells) + f" | {target} | {verdict} |")
    print(f"\nThe 16-thread harness alone (ThreadPoolExecutor(16) over the same keys, each item a "
          f"{IDLE_WAIT_S * 1e3:g} ms wait without the GIL instead of a GET): {fmt(harness)} CPU-ms/item, "
          f"included in every reader's 16-thread CPU above.")
    delete_bucket(client, args.bucket)
    ep.stop()
    return 0


def delete_bucket(client: object, bucket: str) -> None:
    """Remove what the run wrote (the dev store's disk is shared)."""
    paginator = client.get_paginator("list_objects_v2")  # type: ignore[attr-defined]
    for page in paginator.paginate(Bucket=bucket):
        objects = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if objects:
            client.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": True})  # type: ignore[attr-defined]
    client.delete_bucket(Bucket=bucket)  # type: ignore[attr-defined]


if __name__ == "__main__":
    sys.exit(main())
