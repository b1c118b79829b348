# BLIP3o-60k from local disk (dev, or a node with the data copied).
#
# Load with mmengine.Config.fromfile; paths can be changed without editing
# this file through the environment (mmengine's {{$VAR:default}} syntax):
#   BLIP3O_DATA_ROOT   folder holding data.json and raw/ (default data/BLIP3o-60k)
# No Python imports here: mmengine would switch to lazy-import parsing.
custom_imports = dict(imports=['blip3o_storage.dataset', 'blip3o_storage.mmengine_backend'],
                      allow_failed_imports=False)

data_root = '{{$BLIP3O_DATA_ROOT:data/BLIP3o-60k}}'
image_size = 512
max_length = 128
prompt_template = dict(INSTRUCTION='<|user|>\n{input}<|end|>\n<|assistant|>\n')

dataset = dict(
    type='BLIP3oDataset',
    data_path=data_root + '/data.json',
    image_folder=data_root + '/raw',
    cap_folder=data_root + '/raw',
    ceph_folder=None,
    ceph_config=None,
    image_size=image_size,
    unconditional=0.1,
    prompt_template=prompt_template,
    tokenizer=dict(type='ByteTokenizer'),
    max_length=max_length,
    max_retries=10,
)

train_dataloader = dict(
    batch_size=4,
    num_workers=4,
    persistent_workers=True,
    pin_memory=True,
    dataset=dataset,
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='blip3o_collate', pad_index=0),
)
