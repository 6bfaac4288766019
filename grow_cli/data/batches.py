"""Which token blocks each process reads at each optimizer step — a pure function of (seed, step).

We shard the data ourselves instead of letting `accelerator.prepare` wrap a DataLoader, because then the data
position *is* the step: resuming needs no sampler state, and one optimizer step reads the same set of blocks
whether the global batch is split over 1 process with 4 micro-batches or 2 processes with 2. Every epoch is a
new seeded permutation of the training blocks; a step that crosses an epoch boundary simply reads from both. A
global batch larger than the training blocks is refused (`check_global_batch`): its step would span epochs.

Within a step the global batch is laid out as [grad_accum, num_processes, micro_batch_size].
"""

from __future__ import annotations

import math

import numpy as np
import torch

from grow_cli.errors import UsageError, shown


def check_global_batch(*, micro_batch_size: int, grad_accum: int, num_processes: int, train_blocks: int) -> None:
    """Refuse a global batch of more blocks than the data has for training: each step would read some blocks twice
    or more (a step reads on into the next epochs), train on them as if they were new, and count an epoch per step."""
    global_batch = micro_batch_size * grad_accum * num_processes
    if global_batch > train_blocks:
        raise UsageError(
            f"the global batch of {shown(global_batch)} blocks (--micro-batch-size {micro_batch_size} × grad "
            f"accumulation {grad_accum} × {num_processes} process{'es' * (num_processes != 1)}) is more than the "
            f"data's {train_blocks:,} training blocks, so every step would read some of them twice; lower "
            "--micro-batch-size, --grad-accum, --global-batch-tokens or --seq-len, or add data"
        )


class StepBatches:
    def __init__(
        self,
        blocks: np.ndarray,
        train_ids: np.ndarray,
        *,
        micro_batch_size: int,
        grad_accum: int,
        num_processes: int,
        rank: int,
        seed: int,
        offset: int = 0,
    ):
        """`offset`: blocks added to every step's position — a run continued from another one's step reads on
        after the blocks that run read (train/continuation.py)."""
        self.blocks, self.train_ids = blocks, train_ids
        self.micro, self.accum, self.world, self.rank, self.seed = (
            micro_batch_size,
            grad_accum,
            num_processes,
            rank,
            seed,
        )
        self.global_batch = micro_batch_size * grad_accum * num_processes
        self.offset = offset
        self._orders: dict[int, np.ndarray] = {}

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.train_ids)}
        return self._orders[epoch]

    def epoch_of(self, step: int) -> float:
        """How many passes over the training blocks the first `step` steps make."""
        return (step * self.global_batch + self.offset) / len(self.train_ids)

    def step_block_ids(self, step: int) -> np.ndarray:
        """The global batch of optimizer step `step` as block ids, shaped [grad_accum, processes, micro]."""
        positions = step * self.global_batch + self.offset + np.arange(self.global_batch)
        n = len(self.train_ids)
        ids = np.empty(self.global_batch, dtype=np.int64)
        for epoch in np.unique(positions // n):
            where = positions // n == epoch
            ids[where] = self._order(int(epoch))[positions[where] % n]
        return ids.reshape(self.accum, self.world, self.micro)

    def micro_batches(self, step: int) -> list[torch.Tensor]:
        """This process's `grad_accum` micro-batches of step `step`, as int64 token tensors [micro, seq_len]."""
        ids = self.step_block_ids(step)[:, self.rank]
        return [torch.from_numpy(self.blocks[row].astype(np.int64)) for row in ids]


def eval_batches(
    blocks: np.ndarray,
    eval_ids: np.ndarray,
    *,
    micro_batch_size: int,
    max_batches: int,
    num_processes: int,
    rank: int,
) -> list[tuple[torch.Tensor, bool]]:
    """This process's share of the held-out blocks: the first `max_batches × micro_batch_size` eval blocks (spread
    over the whole held-out set, `tokens.evaluation_order`), dealt round-robin to the processes, in micro-batches,
    each with whether it counts.

    Every process runs the same number of batches, because under FSDP or DeepSpeed each forward is a collective:
    one with fewer blocks than another (at most one fewer) ends with a batch that repeats a block and does not
    count. Every block is evaluated once whatever the process count, so the eval loss does not depend on it.
    """
    count = min(len(eval_ids), max_batches * micro_batch_size)
    chosen = eval_ids[:count][rank::num_processes]
    batches = [
        (torch.from_numpy(blocks[chosen[i : i + micro_batch_size]].astype(np.int64)), True)
        for i in range(0, len(chosen), micro_batch_size)
    ]
    most = math.ceil(math.ceil(count / num_processes) / micro_batch_size)  # of the process dealt the most blocks
    filler = torch.from_numpy(blocks[eval_ids[:1]].astype(np.int64))
    return batches + [(filler, False)] * (most - len(batches))
