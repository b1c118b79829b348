#!/usr/bin/env python3
"""What StorageHealthHook costs a DataLoader worker: the counters each batch carries, against reading the batch.

Usage::

    python benchmarks/health_overhead.py [--rounds 5] [--batch 4]

On a moto server, a tiny BLIP3o dataset with prefetch: per round, the time to read and collate
one batch, then ``flat_counters(dataset.stats())`` and pickling it (what StatsCollate adds to a
batch; 1000 calls each, mean). Interleaved over ``--rounds``, median and range; PASS when the
added cost is below 1 % of the batch.
"""
from __future__ import annotations

import argparse
import pickle
import statistics
import tempfile
import time
from pathlib import Path

from blip3o_storage.testing.endpoints import S3Endpoint, new_bucket
from blip3o_storage.testing.local_s3 import start_moto_server
from blip3o_storage.testing.tiny import make_tiny_data, s3_ds, upload_tree
from blip3o_storage.training.collate import blip3o_collate
from blip3o_storage.training.health_hook import flat_counters

CALLS = 1000
TARGET = 0.01


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args()
    server = start_moto_server()
    try:
        endpoint = S3Endpoint("moto", server.endpoint_url, server.access_key, server.secret_key)
        tiny = make_tiny_data(Path(tempfile.mkdtemp()), with_bad=False)
        storage, bucket = new_bucket(endpoint)
        upload_tree(storage, tiny.raw, f"{bucket}/raw")
        storage.put(f"{bucket}/data.json", tiny.data_json.read_bytes())
        dataset = s3_ds(tiny, bucket, endpoint, prefetch=4)
        n = len(dataset)
        batch_s, stats_s, pickle_s, size = [], [], [], 0
        for r in range(args.rounds):
            start = time.perf_counter()
            blip3o_collate([dataset[(r * args.batch + i) % n] for i in range(args.batch)])
            batch_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            for _ in range(CALLS):
                counters = flat_counters(dataset.stats())
            stats_s.append((time.perf_counter() - start) / CALLS)
            start = time.perf_counter()
            for _ in range(CALLS):
                blob = pickle.dumps(((1, 2), counters))
            pickle_s.append((time.perf_counter() - start) / CALLS)
            size = len(blob)
    finally:
        server.stop()
    added = [s + p for s, p in zip(stats_s, pickle_s)]
    share = statistics.median(added) / statistics.median(batch_s)
    print(f"| measurement ({args.rounds} rounds, median [min-max]) | value |\n|---|---|")
    print(f"| read + collate one batch of {args.batch} | {statistics.median(batch_s) * 1e3:.1f} ms "
          f"[{min(batch_s) * 1e3:.1f}-{max(batch_s) * 1e3:.1f}] |")
    print(f"| flat_counters(dataset.stats()) | {statistics.median(stats_s) * 1e6:.0f} us "
          f"[{min(stats_s) * 1e6:.0f}-{max(stats_s) * 1e6:.0f}] |")
    print(f"| pickle the {len(counters)} counters ({size} bytes) | {statistics.median(pickle_s) * 1e6:.0f} us "
          f"[{min(pickle_s) * 1e6:.0f}-{max(pickle_s) * 1e6:.0f}] |")
    print(f"| added per batch / batch | {share * 100:.2f} % (target < {TARGET * 100:g} %): "
          f"{'PASS' if share < TARGET else 'FAIL'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
