"""A shuffling sampler that keeps each DataLoader worker inside one block of storage.

Why: shard mode with block reads (``shard_block_bytes``) fetches a block of
a tar (tens of samples) in one request, which only pays when the samples a
worker is asked for next lie in that block. A fully random sampler sends
every worker to a different tar for every sample. This sampler shuffles at
two levels, like WebDataset's shard shuffle or MosaicML streaming's block
shuffles: the order of the *groups* (the dataset's
``locality_groups()``: samples fetched by one request) and the order inside
each group. Each epoch is still a permutation of every index (per rank).

It also knows how torch hands out batches: batch ``k`` goes to worker
``k % num_workers``. So it deals groups to ``num_workers`` slots and emits
one batch from each slot in turn; every worker then reads its own groups
start to end instead of two workers fetching the same block for half of it
each. ``batch_size``/``num_workers`` must match the DataLoader's for that;
when they do not, results are the same and only the locality is lost.

The trade-off: a batch holds samples of one or two groups (neighbours in a
tar, typically the same source dataset), not a draw from the whole dataset.
With 60k samples in 8 MiB blocks there are about 1,500 groups, shuffled
anew every epoch. ``mix=k`` lets each worker draw from ``k`` groups at once
(a batch then spans about ``k`` blocks, and the worker holds ``k`` blocks);
use DefaultSampler where batch diversity matters more than read cost.

Distributed: the shuffled groups are laid end to end, padded to a multiple
of the world size by repeating from the start (like DefaultSampler's
``round_up``) and cut into one contiguous run per rank, which keeps the
groups whole except at the cuts.
"""
from __future__ import annotations

import collections
import math
import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from mmengine.dist import get_dist_info, sync_random_seed
from mmengine.registry import DATA_SAMPLERS
from torch.utils.data import Sampler

__all__ = ["LocalitySampler", "deal_batches"]

#: Group size for datasets that cannot say where their bytes live (runs of data.json order).
FALLBACK_GROUP = 32


def deal_batches(groups: Sequence[Sequence[int]], batch_size: int, num_workers: int, mix: int = 1,
                 rng: random.Random | None = None) -> list[int]:
    """Flatten ``groups`` so that batch ``k`` (of ``batch_size``) comes from slot
    ``k % num_workers``, each slot taking the next whole group when one of its own runs out.

    With ``mix`` > 1 a slot keeps up to ``mix`` groups open and draws each
    sample from one of them at random (``rng``), so a batch mixes ``mix``
    blocks; the worker then holds that many blocks at once. Every index
    appears exactly as often as in ``groups``. Once no group is left, slots
    that are empty are skipped (only the last few batches can then land on
    another worker than their group's)."""
    slots = max(1, num_workers)
    mix = max(1, mix)
    rng = rng or random.Random(0)
    queue: collections.deque[Sequence[int]] = collections.deque(groups)
    open_groups: list[list[collections.deque[int]]] = [[] for _ in range(slots)]
    out: list[int] = []

    def draw(mine: list[collections.deque[int]]) -> int | None:
        mine[:] = [g for g in mine if g]
        while len(mine) < mix and queue:
            mine.append(collections.deque(queue.popleft()))
        if not mine:
            return None
        return mine[rng.randrange(len(mine)) if len(mine) > 1 else 0].popleft()

    k = 0
    while queue or any(any(g) for g in open_groups):
        mine = open_groups[k % slots]
        k += 1
        for _ in range(batch_size):
            idx = draw(mine)
            if idx is None:
                break
            out.append(idx)
    return out


@DATA_SAMPLERS.register_module(force=True)
class LocalitySampler(Sampler):
    """Shuffled groups, shuffled within, dealt to workers batch by batch (see module doc).

    Args:
        dataset: a dataset with ``locality_groups()`` (the BLIP3o datasets); any
            other sized dataset is cut into runs of ``FALLBACK_GROUP`` indices.
        batch_size / num_workers: the DataLoader's (0 workers = 1 slot).
        shuffle: shuffle groups and within groups (False: storage order).
        mix: groups each worker draws from at once (1: one block at a time; 2-3 mix
            blocks within a batch, at the cost of holding as many blocks per worker;
            keep it below the block reader's ``max_blocks``, 4).
        seed: shared by all ranks; None draws one and syncs it like mmengine's DefaultSampler.
        round_up: pad so every rank gets ``ceil(len / world_size)`` indices (else truncate).
        rank / world_size: default from mmengine's dist info (set them without a process group).
    """

    def __init__(self, dataset: Any, batch_size: int = 1, num_workers: int = 0, shuffle: bool = True,
                 seed: int | None = None, round_up: bool = True, rank: int | None = None,
                 world_size: int | None = None, mix: int = 1) -> None:
        if batch_size < 1 or num_workers < 0 or mix < 1:
            raise ValueError(f"batch_size and mix must be >= 1 and num_workers >= 0 "
                             f"(got {batch_size}, {mix}, {num_workers})")
        self.mix = int(mix)
        dist_rank, dist_world = get_dist_info()
        self.rank = dist_rank if rank is None else int(rank)
        self.world_size = dist_world if world_size is None else int(world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in [0, world_size={self.world_size})")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.shuffle = shuffle
        self.seed = sync_random_seed() if seed is None else int(seed)
        self.round_up = round_up
        self.epoch = 0
        groups = dataset.locality_groups() if hasattr(dataset, "locality_groups") else None
        if groups is None:
            n = len(dataset)
            groups = [list(range(i, min(i + FALLBACK_GROUP, n))) for i in range(0, n, FALLBACK_GROUP)]
        self.groups: list[list[int]] = [list(map(int, g)) for g in groups if len(g)]
        total = sum(len(g) for g in self.groups)
        if total != len(dataset):
            raise ValueError(f"{type(dataset).__name__}.locality_groups() covers {total} indices, "
                             f"the dataset has {len(dataset)}")
        if round_up:
            self.num_samples = math.ceil(total / self.world_size)
        else:
            self.num_samples = total // self.world_size
        self.total_size = self.num_samples * self.world_size

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """A new shuffle per epoch (mmengine's DistSamplerSeedHook calls this)."""
        self.epoch = epoch

    def _rank_groups(self) -> list[list[int]]:
        """This rank's contiguous run of the (shuffled) groups, cut where ranks meet."""
        groups = self.groups  # never changed below: shuffling and cutting make new lists
        if self.shuffle:
            gen = torch.Generator()
            gen.manual_seed(self.seed + self.epoch)
            groups = [groups[i] for i in torch.randperm(len(groups), generator=gen).tolist()]
            groups = [[g[i] for i in torch.randperm(len(g), generator=gen).tolist()] for g in groups]
        flat_len = sum(len(g) for g in groups)
        # pad by repeating from the start, as DefaultSampler does
        if self.round_up and self.total_size > flat_len and groups:
            need, pad = self.total_size - flat_len, []
            while need > 0:
                for g in groups:
                    if need <= 0:
                        break
                    pad.append(g[:need])
                    need -= len(pad[-1])
            groups = groups + pad
        lo, hi = self.rank * self.num_samples, (self.rank + 1) * self.num_samples
        out, pos = [], 0
        for g in groups:
            a, b = max(lo, pos), min(hi, pos + len(g))
            if a < b:
                out.append(g[a - pos:b - pos])
            pos += len(g)
        return out

    def __iter__(self) -> Iterator[int]:
        rng = random.Random(f"{self.seed}:{self.epoch}:{self.rank}")  # the same draws in every copy of the sampler
        return iter(deal_batches(self._rank_groups(), self.batch_size, self.num_workers, self.mix, rng))
