"""Under DeepSpeed: the engine's config gets grow's micro-batch, accumulation and clipping (accelerate's own
`DeepSpeedPlugin`, which builds without DeepSpeed installed), and ZeRO-3's partitioned parameters — each an empty
tensor with the whole's `ds_shape` and `ds_numel`, as `deepspeed.zero.Init` leaves them — count as the whole ones
for the parameter count, the FLOPs and weight decay."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import transformers as tf
from accelerate.utils import DeepSpeedPlugin
from tinylm import tiny_config

from grow_cli.errors import UsageError
from grow_cli.train.build import param_groups
from grow_cli.train.deepspeed_engine import fill_deepspeed_config, full_numel
from grow_cli.train.metrics import flops_per_token


def _accelerator(**settings) -> SimpleNamespace:
    """What `fill_deepspeed_config` reads of an Accelerator: its state's DeepSpeed plugin."""
    return SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=DeepSpeedPlugin(zero_stage=2, **settings)))


def test_the_config_left_auto_gets_this_runs_batch_and_clipping():
    accelerator = _accelerator()
    assert accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] == "auto"
    fill_deepspeed_config(accelerator, micro_batch_size=8, grad_accum=4, grad_clip=0.5)
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    assert config["train_micro_batch_size_per_gpu"] == 8 and config["gradient_accumulation_steps"] == 4
    assert config["gradient_clipping"] == 0.5


def test_a_config_that_sets_another_value_is_refused():
    fill_deepspeed_config(_accelerator(gradient_clipping=1.0), 8, 1, 1.0)  # the same value: nothing to say
    with pytest.raises(
        UsageError, match='sets gradient_clipping to 1.0, but this run\'s --grad-clip is 0.5; set it to "auto"'
    ):
        fill_deepspeed_config(_accelerator(gradient_clipping=1.0), 8, 1, 0.5)
    with pytest.raises(UsageError, match="sets gradient_accumulation_steps to 2, but this run's --grad-accum is 4"):
        fill_deepspeed_config(_accelerator(gradient_accumulation_steps=2), 8, 4, 1.0)


def test_without_deepspeed_nothing_changes():
    fill_deepspeed_config(SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=None)), 8, 1, 1.0)


def _partitioned(model: torch.nn.Module) -> torch.nn.Module:
    for param in model.parameters():
        param.ds_shape, param.ds_numel = param.shape, param.numel()
        param.data = torch.empty(0)
    return model


def test_partitioned_parameters_count_as_the_whole_ones():
    torch.manual_seed(0)
    whole, split = tf.LlamaForCausalLM(tiny_config()), _partitioned(tf.LlamaForCausalLM(tiny_config()))
    assert sum(p.numel() for p in split.parameters()) == 0  # what a plain count would see
    assert sum(full_numel(p) for p in split.parameters()) == sum(p.numel() for p in whole.parameters())
    assert flops_per_token(split, 32) == flops_per_token(whole, 32) > 0

    def decayed(model):
        return [len(g["params"]) for g in param_groups(model, 0.1, 1e-3, 1e-8) if g["weight_decay"] > 0]

    assert decayed(split) == decayed(whole) and decayed(whole)[0] > 0
