# configs/blip3o60k_ceph.py plus checkpoints and text logs on the object store.
#
# Training nodes' disks are small and short-lived: CheckpointHook writes every epoch's checkpoint
# straight to s3 (torch.save streamed into a multipart upload, nothing visible until it completes) and
# keeps the last 2 there; LoggerHook uploads the text/json logs when the run ends. Both land under
# <root>/<basename of work_dir>/ (mmengine appends it). The integration comes from custom_imports
# ('blip3o_storage.mmengine_backend', inherited): s3:// fileio calls, the checkpoint loader and the
# streamed save. The connection is ceph_config's (BLIP3O_CEPH_CONFIG), as for the data.
#
# Resume after a crash (the checkpoint's Runner state needs full unpickling: trust your own store):
#   BLIP3O_TRUSTED_CHECKPOINTS=1 python train.py CONFIG \
#       --cfg-options load_from=s3://blip3o-ckpts/checkpoints/<run>/epoch_2.pth resume=True
# Environment override (mmengine's {{$VAR:default}} syntax):
#   BLIP3O_CKPT_ROOT    where checkpoints/ and logs/ go   (default s3://blip3o-ckpts)
_base_ = ['blip3o60k_ceph.py']

ckpt_root = '{{$BLIP3O_CKPT_ROOT:s3://blip3o-ckpts}}'

default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', interval=1, by_epoch=True, out_dir=ckpt_root + '/checkpoints',
                    max_keep_ckpts=2),
    logger=dict(type='LoggerHook', interval=50, out_dir=ckpt_root + '/logs'),
)
load_from = None  # e.g. 's3://blip3o-ckpts/checkpoints/<run>/epoch_2.pth', or 'cluster1:s3://...'
resume = False
