# BLIP3o-60k in shard mode: the 11 tars as uploaded by tools/upload_shards.py
# (tars + index.json + data.json under one prefix), read in 8 MiB blocks.
#
# Block reads fetch an aligned 8 MiB block of a tar in one GET (20-100
# samples) and serve its members from memory; LocalitySampler shuffles the
# blocks, then the samples inside each, and deals blocks to the DataLoader
# workers so each worker reads its blocks start to end. Its batch_size and
# num_workers must match the dataloader's (they are the same variables
# below). Trade-off: a batch holds neighbours from one or two blocks, not a
# draw from the whole dataset; mix=2 or 3 makes each worker draw from that
# many blocks at once (holding as many), and DefaultSampler (without
# shard_block_bytes) gives full shuffling at one GET per sample.
# Environment overrides (mmengine's {{$VAR:default}} syntax, no imports here):
#   BLIP3O_SHARDS_FOLDER  folder of the tars, index.json, data.json (default s3://blip3o-60k/shards)
#   BLIP3O_CEPH_CONFIG    petreloss.conf path                        (default petreloss.conf)
# Shared settings (image size, prompt, tokenizer, DataLoader): _base_/blip3o60k.py.
_base_ = ['_base_/blip3o60k.py']

custom_imports = dict(imports=['blip3o_storage.dataset', 'blip3o_storage.mmengine_backend',
                               'blip3o_storage.hooks', 'blip3o_storage.locality_sampler'])
# Prefetch threads fetch the next block while the worker decodes the current one.
# StorageHealthHook: every 10 iterations (the LoggerHook's interval) the workers' storage counters
# (GETs/s, MB/s, retries, bad samples, fallbacks, prefetch and cache hits) go to the log and to
# any visualizer as train/storage/* scalars; one warning if data_time dominates the iteration.
custom_hooks = [dict(type='PrefetchSamplerHook'), dict(type='StorageHealthHook', interval=10)]

shards_folder = '{{$BLIP3O_SHARDS_FOLDER:s3://blip3o-60k/shards}}'
ceph_config = '{{$BLIP3O_CEPH_CONFIG:petreloss.conf}}'
batch_size = 4
num_workers = 4

dataset = dict(
    data_path=shards_folder + '/data.json',
    ceph_folder=shards_folder,
    shard_index=shards_folder + '/index.json',
    shard_block_bytes=8 * 1024 * 1024,
    ceph_config=ceph_config,
    prefetch=8,
    prefetch_threads=2,
)

train_dataloader = dict(
    batch_size=batch_size,
    num_workers=num_workers,
    dataset=dataset,
    # _delete_: this sampler replaces the base's DefaultSampler instead of merging into it
    sampler=dict(_delete_=True, type='LocalitySampler', batch_size=batch_size, num_workers=num_workers,
                 shuffle=True, mix=1),
)
