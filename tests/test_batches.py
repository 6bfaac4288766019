"""The step-indexed data order (`grow_cli.data.batches`): a step's blocks depend on the step and the global batch
only, never on the process count, and each epoch visits every training block once."""

from __future__ import annotations

import numpy as np
import pytest

from grow_cli.data.batches import StepBatches, eval_batches


def test_step_batches_depend_only_on_the_global_batch_not_the_process_count():
    blocks = np.arange(40 * 4).reshape(40, 4)
    train_ids = np.arange(2, 40)
    one = StepBatches(blocks, train_ids, micro_batch_size=4, grad_accum=1, num_processes=1, rank=0, seed=3)
    two = [
        StepBatches(blocks, train_ids, micro_batch_size=2, grad_accum=1, num_processes=2, rank=r, seed=3)
        for r in range(2)
    ]
    for step in (0, 5, 9, 10, 31):  # 9 and 10 straddle the first epoch boundary (38 blocks / 4 per step)
        whole = one.micro_batches(step)[0]
        split = [b.micro_batches(step)[0] for b in two]
        assert sorted(map(tuple, whole.tolist())) == sorted(map(tuple, [*split[0].tolist(), *split[1].tolist()]))


def test_each_epoch_visits_every_training_block_once():
    blocks = np.arange(30).reshape(30, 1)
    batches = StepBatches(blocks, np.arange(30), micro_batch_size=5, grad_accum=2, num_processes=1, rank=0, seed=0)
    seen = [int(x) for step in range(3) for mb in batches.micro_batches(step) for x in mb.flatten()]
    assert sorted(seen) == list(range(30))
    second = [int(x) for step in range(3, 6) for mb in batches.micro_batches(step) for x in mb.flatten()]
    assert sorted(second) == list(range(30)) and second != seen  # reshuffled


@pytest.mark.parametrize("count", [1, 7, 9, 16])
@pytest.mark.parametrize("processes", [1, 2, 3, 4])
def test_every_held_out_block_counts_once_whatever_the_process_count(count, processes):
    """The eval loss must not depend on the launch: every block is evaluated once over all processes (none dropped
    to even out the shares), and every process runs as many batches (a forward under FSDP/DeepSpeed is a
    collective), the short ones padded with a batch that does not count."""
    blocks = np.arange(40 * 3).reshape(40, 3)
    eval_ids = np.arange(5, 5 + count)
    shares = [
        eval_batches(blocks, eval_ids, micro_batch_size=2, max_batches=8, num_processes=processes, rank=rank)
        for rank in range(processes)
    ]
    assert len({len(share) for share in shares}) == 1
    counted = sorted(int(row[0]) // 3 for share in shares for ids, counts in share if counts for row in ids)
    assert counted == list(eval_ids)
