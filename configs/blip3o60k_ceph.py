# BLIP3o-60k from an S3-compatible store (Ceph RGW, MinIO, AWS S3).
#
# Images and captions are read from ceph_folder through boto3 with the
# connection settings of ceph_config (a petreloss.conf-style file). When the
# local copy under data_root/raw exists, a sample whose remote read fails
# (store unreachable, object missing) is read from there and counted.
# Environment overrides (mmengine's {{$VAR:default}} syntax, no imports here):
#   BLIP3O_DATA_ROOT    local data.json + raw/ copy     (default data/BLIP3o-60k)
#   BLIP3O_CEPH_FOLDER  remote folder of images/captions (default s3://blip3o-60k/raw)
#   BLIP3O_CEPH_CONFIG  petreloss.conf path              (default petreloss.conf)
# Shared settings (image size, prompt, tokenizer, DataLoader): _base_/blip3o60k.py.
_base_ = ['_base_/blip3o60k.py']

custom_imports = dict(imports=['blip3o_storage.dataset', 'blip3o_storage.mmengine_backend',
                               'blip3o_storage.hooks'])
# Prefetch: each worker reads the bytes of its next samples in background
# threads while it decodes the current one. PrefetchSamplerHook gives the
# dataset the sampler's order before the workers fork; workers are re-forked
# every epoch (persistent_workers=False, from _base_) so their copy of the
# sampler has the epoch that DistSamplerSeedHook set.
# StorageHealthHook: every 10 iterations (the LoggerHook's interval) the workers' storage counters
# (GETs/s, MB/s, retries, bad samples, fallbacks, prefetch and cache hits) go to the log and to
# any visualizer as train/storage/* scalars; one warning if data_time dominates the iteration.
custom_hooks = [dict(type='PrefetchSamplerHook'), dict(type='StorageHealthHook', interval=10)]

data_root = '{{$BLIP3O_DATA_ROOT:data/BLIP3o-60k}}'
ceph_folder = '{{$BLIP3O_CEPH_FOLDER:s3://blip3o-60k/raw}}'
ceph_config = '{{$BLIP3O_CEPH_CONFIG:petreloss.conf}}'

dataset = dict(
    data_path=data_root + '/data.json',
    image_folder=data_root + '/raw',
    cap_folder=data_root + '/raw',
    ceph_folder=ceph_folder,
    ceph_config=ceph_config,
    prefetch=8,
    prefetch_threads=4,
)

train_dataloader = dict(dataset=dataset)
