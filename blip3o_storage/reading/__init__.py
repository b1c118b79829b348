"""Read pipeline: sample sources (objects, tar shards), the shard index, block reads, the disk cache, prefetch."""
