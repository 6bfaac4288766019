"""A micro-batch reads nothing back from the device that grow asks for: no step of its forward, loss or backward needs
a value that only the device knows (`.item()`, a mask's count), which on a GPU would stop the host until the queued
work has run, once per micro-batch (`step.micro_batch_loss`, `Objective.train_inputs`). Neither a masked LM's nor a
decoder's reads any: not even the one transformers makes in every forward of a decoder (packed.py).

On the CPU there is no device to wait for, so the check watches the operations themselves: torch tags every
operation whose result (a Python number) or output shape depends on tensor values, and a watcher records each one
that runs. The negative control selects the masked positions by a boolean mask on the device, as grow once did.
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import BertConfig, BertForMaskedLM, LlamaConfig, LlamaForCausalLM

from grow_cli.data.masking import IGNORE_INDEX, MaskingRule
from grow_cli.train.objective import PACKED, Objective
from grow_cli.train.packed import has_packed_rows, packing_known
from grow_cli.train.step import micro_batch_loss
from grow_cli.train.transfer import to_device

VOCAB = 300
RULE = MaskingRule(mask_id=4, vocab_size=VOCAB, special_ids=(0, 1, 2, 3, 4))
CPU = torch.device("cpu")
TORCH = str(Path(torch.__file__).parent)


class HostReads(TorchDispatchMode):
    """Records the operations that run while it is active and must read tensor values on the host (`found`), and
    for each the file of the innermost Python frame outside torch and this test that asked for it (`origins`)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self.origins: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if _reads_values(func, args):
            self.found.append(str(func))
            frames = [f.filename for f in traceback.extract_stack() if not f.filename.startswith((TORCH, __file__))]
            self.origins.append(frames[-1])
        return func(*args, **(kwargs or {}))


def _reads_values(func, args) -> bool:
    if torch.Tag.data_dependent_output in func.tags:  # .item(), torch.equal, …
        return True
    if func is torch.ops.aten.index.Tensor:  # shape-dependent only when an index is a mask
        return any(
            isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1] if i is not None
        )
    return torch.Tag.dynamic_output_shape in func.tags  # nonzero, masked_select, unique, …


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
    )
    return BertForMaskedLM(config).eval()  # no dropout: the loss test compares two forwards


def blocks(rows: int = 4, length: int = 24) -> torch.Tensor:
    return torch.randint(5, VOCAB, (rows, length), generator=torch.Generator().manual_seed(1))


def one_process(processes: int = 1):
    """The parts of an accelerate `Accelerator` that `Objective.train_inputs` uses; with more processes, the others
    are stand-ins that masked as many tokens as this one."""
    return SimpleNamespace(num_processes=processes, device=CPU, reduce=lambda t, how: t * processes)


def test_a_masked_micro_batch_reads_nothing_from_the_device(bert):
    (host,) = Objective("masked", 0, RULE).train_inputs([blocks()], 0, one_process())
    inputs = to_device(host, CPU)
    with HostReads() as watch:
        micro_batch_loss(bert, inputs).backward()
    assert watch.found == []

    def by_mask(model, inputs):  # the negative control: the masked positions picked on the device
        logits = model(input_ids=inputs["input_ids"]).logits
        where = inputs["labels"] != IGNORE_INDEX
        return torch.nn.functional.cross_entropy(logits[where].float(), inputs["labels"][where], reduction="sum")

    with HostReads() as watch:
        by_mask(bert, inputs).backward()
    assert "aten.index.Tensor" in watch.found


def test_the_masked_loss_is_the_mean_over_the_step_s_masked_tokens(bert):
    ids = blocks(rows=8)
    halves = [ids[:4], ids[4:]]
    host = Objective("masked", 0, RULE).train_inputs(halves, 3, one_process())
    masked = sum(int((item["labels"] != IGNORE_INDEX).sum()) for item in host)
    assert host[0]["num_items"] == masked / 2 and host[0]["predicted_at"].numel() > 0
    with torch.no_grad():
        step = sum(micro_batch_loss(bert, item).double() for item in host) / 2  # accelerate's ÷ accumulation
        whole = {name: torch.cat([item[name] for item in host]) for name in ("input_ids", "labels")}
        reference = bert(**whole).loss  # BERT's own loss: the mean over the masked tokens of the whole batch
    assert float(step) == pytest.approx(float(reference), rel=1e-5)


def test_with_more_processes_the_token_count_stays_a_device_tensor(bert):
    host = Objective("masked", 0, RULE).train_inputs([blocks()], 0, one_process(processes=2))
    masked = int((host[0]["labels"] != IGNORE_INDEX).sum())
    count = host[0]["num_items"]
    assert isinstance(count, torch.Tensor) and float(count) == masked  # (2 × masked) ÷ (1 micro-batch × 2)


@pytest.mark.parametrize(
    "objective",
    [Objective("causal", 0), Objective("causal", 0, None, 2), Objective("causal", 0, None, 2, one_row=True)],
    ids=["causal", "document-masking", "document-masking-one-row"],
)
def test_a_decoder_micro_batch_reads_nothing_from_the_device(objective):
    """transformers 5.x reads the device in every forward without a mask, checking the position ids for packed
    sequences (`masking_utils.find_packed_sequence_indices`), as the negative control shows: a forward of the same
    inputs outside `micro_batch_loss`. grow answers that check from the host (packed.py): no read at all."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
    )
    model = LlamaForCausalLM(config)
    ids = blocks()
    ids[:, 10] = 2  # document ends, for document masking
    (host,) = objective.train_inputs([ids], 0, one_process())
    inputs = to_device(host, CPU)
    with HostReads() as watch:
        micro_batch_loss(model, inputs).backward()
    assert watch.found == []

    with HostReads() as watch:
        model(**{k: v for k, v in inputs.items() if k != PACKED}).loss.backward()
    assert len(watch.found) == 1 and watch.origins[0].endswith(os.path.join("transformers", "masking_utils.py"))


@pytest.mark.parametrize(
    "rows", [[[0, 1, 2, 3, 4, 5]] * 2, [[0, 1, 2, 0, 1, 2], [0, 1, 2, 3, 4, 5]], [[0, 1, 0, 1, 2, 3]]]
)
def test_the_host_s_answer_is_the_one_transformers_reads_from_the_device(rows):
    """Unpacked rows (None), one packed row among plain ones, one row of several blocks: the answer `packing_known`
    gives transformers is what its own check returns, and the check is transformers' own again afterwards."""
    import transformers.masking_utils as masking

    real = masking.find_packed_sequence_indices
    positions = torch.tensor(rows)
    expected = real(positions)
    with packing_known(has_packed_rows(positions)):
        answer = masking.find_packed_sequence_indices(positions)
    assert masking.find_packed_sequence_indices is real
    assert (answer is None) == (expected is None) == (not has_packed_rows(positions))
    if expected is not None:
        assert torch.equal(answer, expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", ["masked", "causal", "document-masking"])
def test_on_a_gpu_a_micro_batch_never_synchronises(bert, kind):
    """The same on a GPU, by CUDA's own account: with torch's sync debug mode at "error", any operation that makes
    the host wait for the device (a read, a synchronising copy) raises."""
    cuda = torch.device("cuda")
    if kind == "masked":
        model, objective = BertForMaskedLM(bert.config), Objective("masked", 0, RULE)
    else:
        config = LlamaConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
        )
        model, objective = LlamaForCausalLM(config), Objective("causal", 0, None, 2 if kind != "causal" else None)
    ids = blocks()
    ids[:, 10] = 2  # document ends, for document masking
    (host,) = objective.train_inputs([ids], 0, one_process())
    model, inputs = model.to(cuda), to_device(host, cuda)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        micro_batch_loss(model, inputs).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
