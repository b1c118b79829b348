"""mmengine hook that lets the dataset's prefetch follow the real sampler.

The dataset cannot see the DataLoader's sampler, and a worker only learns an
index when it is asked for it. This hook hands the sampler (with batch size
and drop_last) to every dataset that has ``set_sampler`` before training
starts, i.e. before the DataLoader forks its workers. In a config::

    custom_hooks = [dict(type='PrefetchSamplerHook')]
"""
from __future__ import annotations

import logging
from typing import Any

from mmengine.hooks import Hook
from mmengine.registry import HOOKS

logger = logging.getLogger(__name__)


def wire_prefetch(dataloader: Any) -> bool:
    """Give ``dataloader.dataset`` its sampler; True if the dataset takes one."""
    dataset = getattr(dataloader, "dataset", None)
    if dataset is None or not hasattr(dataset, "set_sampler"):  # any Dataset may be configured: duck-typed
        return False
    dataset.set_sampler(dataloader.sampler, dataloader.batch_size or 1, bool(dataloader.drop_last))
    return True


@HOOKS.register_module(force=True)
class PrefetchSamplerHook(Hook):
    """Calls :func:`wire_prefetch` on the train dataloader before training."""

    priority = "VERY_HIGH"

    def before_train(self, runner: Any) -> None:
        if wire_prefetch(runner.train_dataloader):
            logger.info("prefetch follows %s", type(runner.train_dataloader.sampler).__name__)


# Registered with `import blip3o_storage.hooks` too (the configs' custom_imports): the storage counters in the log.
from blip3o_storage.training.health_hook import StorageHealthHook  # noqa: E402,F401
