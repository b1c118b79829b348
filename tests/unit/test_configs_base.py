"""configs/: the three configs inherit configs/_base_/blip3o60k.py (mmengine ``_base_``) and each loads
to exactly the settings it had when it spelled everything out (dataset, DataLoader, imports, hooks)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
from mmengine.config import Config

REPO_ROOT = Path(__file__).resolve().parents[2]
RAW = "data/BLIP3o-60k/raw"
COMMON = dict(type="BLIP3oDataset", image_size=512, unconditional=0.1, max_length=128, max_retries=10,
              tokenizer=dict(type="ByteTokenizer"),
              prompt_template=dict(INSTRUCTION="<|user|>\n{input}<|end|>\n<|assistant|>\n"))
LOADER = dict(batch_size=4, num_workers=4, pin_memory=True, collate_fn=dict(type="blip3o_collate", pad_index=0))
IMPORTS = ["blip3o_storage.dataset", "blip3o_storage.mmengine_backend"]
#: The object-store configs wire prefetch and log the storage counters (StorageHealthHook, issue #17).
HOOKS: List[Dict[str, Any]] = [dict(type="PrefetchSamplerHook"), dict(type="StorageHealthHook", interval=10)]
Case = Tuple[Dict[str, Any], Dict[str, Any], List[str], Optional[List[Dict[str, Any]]]]
CASES: Dict[str, Case] = {
    "blip3o60k_local.py": (
        dict(data_path="data/BLIP3o-60k/data.json", image_folder=RAW, cap_folder=RAW, ceph_folder=None,
             ceph_config=None),
        dict(persistent_workers=True, sampler=dict(type="DefaultSampler", shuffle=True)), IMPORTS, None),
    "blip3o60k_ceph.py": (
        dict(data_path="data/BLIP3o-60k/data.json", image_folder=RAW, cap_folder=RAW,
             ceph_folder="s3://blip3o-60k/raw", ceph_config="petreloss.conf", prefetch=8, prefetch_threads=4),
        dict(persistent_workers=False, sampler=dict(type="DefaultSampler", shuffle=True)),
        IMPORTS + ["blip3o_storage.hooks"], HOOKS),
    "blip3o60k_shards.py": (
        dict(data_path="s3://blip3o-60k/shards/data.json", ceph_folder="s3://blip3o-60k/shards",
             shard_index="s3://blip3o-60k/shards/index.json", shard_block_bytes=8 << 20,
             ceph_config="petreloss.conf", prefetch=8, prefetch_threads=2),
        dict(persistent_workers=False, sampler=dict(type="LocalitySampler", batch_size=4, num_workers=4,
                                                    shuffle=True, mix=1)),
        IMPORTS + ["blip3o_storage.hooks", "blip3o_storage.locality_sampler"], HOOKS),
}
ENV = ("BLIP3O_DATA_ROOT", "BLIP3O_CEPH_FOLDER", "BLIP3O_CEPH_CONFIG", "BLIP3O_SHARDS_FOLDER")


@pytest.mark.parametrize("name", sorted(CASES))
def test_config_loads_to_its_settings(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ENV:
        monkeypatch.delenv(var, raising=False)
    dataset, loader, imports, hooks = CASES[name]
    cfg = Config.fromfile(str(REPO_ROOT / "configs" / name)).to_dict()
    assert "_base_" not in cfg
    assert cfg["dataset"] == dict(COMMON, **dataset)  # nothing more, nothing less
    assert cfg["train_dataloader"] == dict(LOADER, **loader, dataset=cfg["dataset"])
    assert cfg["custom_imports"] == dict(imports=imports, allow_failed_imports=False)
    assert cfg.get("custom_hooks") == hooks
    assert (cfg["image_size"], cfg["max_length"]) == (512, 128)


def test_env_overrides_reach_the_merged_dataset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BLIP3O_DATA_ROOT", str(tmp_path))
    monkeypatch.setenv("BLIP3O_CEPH_FOLDER", "s3://b/raw")
    monkeypatch.setenv("BLIP3O_CEPH_CONFIG", str(tmp_path / "p.conf"))
    cfg = Config.fromfile(str(REPO_ROOT / "configs" / "blip3o60k_ceph.py"))
    for ds in (cfg.dataset, cfg.train_dataloader.dataset):
        assert ds.data_path == f"{tmp_path}/data.json" and ds.image_folder == f"{tmp_path}/raw"
        assert ds.ceph_folder == "s3://b/raw" and ds.ceph_config == str(tmp_path / "p.conf")
        assert ds.image_size == 512 and ds.type == "BLIP3oDataset"
