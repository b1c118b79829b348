# BLIP3o-60k from local disk (dev, or a node with the data copied).
#
# Load with mmengine.Config.fromfile; paths can be changed without editing
# this file through the environment (mmengine's {{$VAR:default}} syntax):
#   BLIP3O_DATA_ROOT   folder holding data.json and raw/ (default data/BLIP3o-60k)
# No Python imports here: mmengine would switch to lazy-import parsing.
# Shared settings (image size, prompt, tokenizer, DataLoader): _base_/blip3o60k.py.
_base_ = ['_base_/blip3o60k.py']

data_root = '{{$BLIP3O_DATA_ROOT:data/BLIP3o-60k}}'

dataset = dict(
    data_path=data_root + '/data.json',
    image_folder=data_root + '/raw',
    cap_folder=data_root + '/raw',
    ceph_folder=None,
    ceph_config=None,
)

train_dataloader = dict(persistent_workers=True, dataset=dataset)
