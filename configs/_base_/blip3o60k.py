# What every BLIP3o-60k config shares: the dataset's text and image settings and the DataLoader around it.
#
# The configs in configs/ inherit this file (mmengine `_base_`) and set only what differs: where the data is
# (data_path, folders, ceph_config, shard index), prefetching, the sampler and their custom_imports/hooks.
# A config's dict merges into the one here key by key, and a list replaces the one here.
# No Python imports here: mmengine would switch to lazy-import parsing.
custom_imports = dict(imports=['blip3o_storage.dataset', 'blip3o_storage.mmengine_backend'],
                      allow_failed_imports=False)

image_size = 512
max_length = 128
prompt_template = dict(INSTRUCTION='<|user|>\n{input}<|end|>\n<|assistant|>\n')

dataset = dict(
    type='BLIP3oDataset',
    image_size=image_size,
    unconditional=0.1,
    prompt_template=prompt_template,
    tokenizer=dict(type='ByteTokenizer'),
    max_length=max_length,
    max_retries=10,
)

# persistent_workers=False: workers are re-forked every epoch, so their copy of the sampler has the epoch
# that DistSamplerSeedHook set (what PrefetchSamplerHook relies on); a config without prefetch may keep them.
train_dataloader = dict(
    batch_size=4,
    num_workers=4,
    persistent_workers=False,
    pin_memory=True,
    dataset=dataset,
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='blip3o_collate', pad_index=0),
)
