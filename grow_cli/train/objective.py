"""What a training stage optimizes: next-token prediction (causal LMs) or masked-token prediction (BERT-style
encoders), decided from the architecture so that no model is ever trained under the wrong one.

The decision reads transformers' own registry of model classes and the config: a model type with only a causal-LM
class (Llama, Qwen, GPT-2, …) is a decoder; one with only a masked-LM class (ModernBERT, DeBERTa, …) is an encoder;
one with both (BERT, RoBERTa, XLM-R, …) is whatever its config's `is_decoder` says — False for every pretrained
BERT, whose bidirectional attention lets each position see the token a causal loss would ask it to predict.
`--objective causal|masked` overrides the decision only where transformers has both classes (the config's
`is_decoder` is then set to match, and the run says so); an encoder under a causal loss, a decoder under masking,
or an encoder-decoder model is refused in one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from grow_cli.data.masking import EVAL_SEED, IGNORE_INDEX, MaskingRule, mask_rows
from grow_cli.data.masking_settings import masking_in_words
from grow_cli.errors import CheckpointError, UsageError
from grow_cli.train.documents import document_inputs
from grow_cli.train.packed import has_packed_rows
from grow_cli.train.transfer import tensor_to_device

LOSS_ONLY = ("labels", "num_items", "predicted_at")  # inputs of the loss that the model itself is not given
PACKED = "packed"  # with --document-masking: whether a row packs two documents (known on the host; packed.py)
NAMES = {"causal": "causal LM (next-token prediction)", "masked": "masked LM (masked-token prediction)"}


@dataclass(frozen=True)
class Choice:
    """The objective of a model and, when an override changes it, the `is_decoder` value the config gets."""

    name: str  # "causal" | "masked"
    is_decoder: bool | None  # None: leave the config as it is
    note: str | None  # what the choice changed, for the run's output


# What each command that chooses an objective does with the model, for its refusal of one it cannot take.
VERBS = {"train-stage": "train", "compare": "compare"}


def choose_objective(model_config: Any, requested: str, *, command: str = "train-stage") -> Choice:
    """The objective for a model of `model_config` given `--objective` (auto, causal or masked); a model no
    objective fits is refused in the words of `command` (a key of `VERBS`)."""
    verb = VERBS[command]
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = model_config.model_type
    if getattr(model_config, "is_encoder_decoder", False):
        raise UsageError(
            f"{model_type} is an encoder-decoder model; grow {command} {verb}s decoders (causal LM) and "
            "encoders (masked LM)"
        )
    causal = model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    masked = model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    if not (causal or masked):
        raise CheckpointError(
            f"{model_type} has neither a causal-LM nor a masked-LM class in transformers; grow {command} "
            f"cannot {verb} it"
        )
    is_decoder = bool(getattr(model_config.get_text_config(), "is_decoder", False))
    natural = "causal" if causal and (is_decoder or not masked) else "masked"
    if requested in ("auto", natural):
        return Choice(natural, None, None)
    if requested == "masked" and not masked:
        raise UsageError(
            f"--objective masked: {model_type} is a decoder (causal attention, no masked-LM class in "
            "transformers); a masked token would be predicted from its left context only. Train it with "
            "--objective causal (its default)"
        )
    if requested == "causal" and not causal:
        raise UsageError(
            f"--objective causal: {model_type} is a bidirectional encoder with no causal mode in transformers; "
            "every position would see the token it must predict. Train it with --objective masked (its default)"
        )
    if requested == "causal":
        note = f"--objective causal: {model_type} trains as a decoder (is_decoder=true: causal attention)"
    else:
        note = f"--objective masked: {model_type} trains as an encoder (is_decoder=false: bidirectional attention)"
    return Choice(requested, requested == "causal", note)


@dataclass(frozen=True)
class Objective:
    """The inputs and labels of the chosen objective for each micro-batch of token blocks [B, T] (on the host)."""

    name: str
    seed: int
    masking: MaskingRule | None = None  # for "masked"
    document_eos: int | None = None  # causal with --document-masking: positions restart after this token
    one_row: bool = False  # with document_eos: a micro-batch goes in as one row (flash attention; attention.py)

    def train_inputs(self, micro_batches: list[torch.Tensor], step: int, accelerator: Any) -> list[dict[str, Any]]:
        """The inputs of optimizer step `step`'s micro-batches of this process.

        A masked LM's loss is the mean over the masked tokens of the whole step — all micro-batches, all processes
        — as if it were one batch; a mean per micro-batch would weigh the tokens of a sparsely masked micro-batch
        more, and differ with the split over processes. So each gets `num_items`: the step's masked tokens over
        the micro-batch count (accelerate divides by the accumulation and DDP averages over processes)."""
        inputs = [self._inputs(ids, (self.seed, step)) for ids in micro_batches]
        if self.masking is not None:
            total: int | torch.Tensor = sum(self.predicted(item) for item in inputs)
            if accelerator.num_processes > 1:  # the other processes' counts, summed on the devices: no host wait
                total = accelerator.reduce(tensor_to_device(torch.tensor(total), accelerator.device), "sum")
            share = total / (len(inputs) * accelerator.num_processes)
            for item in inputs:
                item["num_items"] = share
        return inputs

    def eval_inputs(self, ids: torch.Tensor) -> dict[str, Any]:
        """The same for held-out blocks: masked with one fixed pattern per block, whatever the run."""
        return self._inputs(ids, (EVAL_SEED,))

    def _inputs(self, ids: torch.Tensor, seed: tuple[int, ...]) -> dict[str, Any]:
        if self.masking is None:
            # No KV cache: training never decodes, and under Apollo's shared layers one cache slot per layer
            # object would mix the positions that share it.
            if self.document_eos is None:
                return {"input_ids": ids, "labels": ids, "use_cache": False}
            inputs = document_inputs(ids, self.document_eos, one_row=self.one_row)
            return {**inputs, "use_cache": False, PACKED: has_packed_rows(inputs["position_ids"])}
        masked, labels = mask_rows(self.masking, ids, seed)
        # the flat positions of the masked tokens, for `step.micro_batch_loss`
        return {
            "input_ids": masked,
            "labels": labels,
            "predicted_at": (labels.flatten() != IGNORE_INDEX).nonzero()[:, 0],
        }

    def predicted(self, inputs: dict[str, Any]) -> int:
        """How many positions the loss of `inputs` averages over."""
        if self.masking is None:  # every position but a block's first is predicted from its left context
            return int((inputs["labels"][:, 1:] != IGNORE_INDEX).sum())
        return inputs["predicted_at"].numel()  # the masked positions, found once in `_inputs`

    def describe(self) -> dict[str, Any]:
        """The objective as grow.json records it."""
        documents = {"document_masking": True} if self.document_eos is not None else {}
        return {"name": self.name, **documents, **(self.masking.describe() if self.masking else {})}


def objective_notes(checked: Any, loaded: Any) -> list[str]:
    """What the run's output says about the objective: masking (for a masked LM), an override, the head created for
    it and the checkpoint tensors the head class does not use (carried into the output)."""
    notes = [checked.objective.note] if checked.objective.note else []
    if checked.masking is not None:
        notes.append(f"objective: {NAMES['masked']}, {masking_in_words(checked.masking.describe())}")
    model = loaded.model
    if loaded.created:
        tied = model.get_output_embeddings() is not None and (
            model.get_output_embeddings().weight is model.get_input_embeddings().weight
        )
        notes.append(
            f"the checkpoint has no {type(model).__name__} head: created {_names(loaded.created)}"
            f"{', its decoder tied to the word embeddings' if tied and checked.objective.name == 'masked' else ''}"
        )
    elif loaded.headless:  # nothing created: the head is the (tied) word embeddings
        notes.append(
            f"the checkpoint is the base model saved alone (headless): it trains as a {type(model).__name__}, its "
            "head the word embeddings (tied), and is written as one"
        )
    if loaded.carried:
        notes.append(f"not used by {type(model).__name__}, carried unchanged into the output: {_names(loaded.carried)}")
    if loaded.modules:
        folders = sorted({name.split("/")[0] + "/" for name in loaded.modules if "/" in name})
        notes.append(
            "a sentence-transformers model: its transformer trains; modules.json and its modules "
            f"({_names(folders)}) are carried unchanged into the output"
        )
    return notes


def _names(names: list[str], limit: int = 4) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
