"""What a run reports: FLOPs per token and MFU, the JSON Lines metrics file, and the progress bar.

FLOPs per token are PaLM's count (`grow_cli.train.flops`) over the parameters a token runs (a mixture of experts'
active ones). MFU is achieved FLOPs over the device's dense peak, reported only when the peak is known (a GPU in
`PEAK_TFLOPS`, or `--peak-tflops`); on a CPU it is left out rather than guessed.

The metrics file (`metrics.jsonl` in the output folder) is written on every run as an accelerate tracker, so the
same `accelerator.log` call also feeds TensorBoard or W&B when `--report-to` asks for them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate.tracking import GeneralTracker
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from grow_cli.checkpoint.output import disk_full
from grow_cli.console import err
from grow_cli.errors import OutputError
from grow_cli.train.deepspeed_engine import full_numel
from grow_cli.train.flops import attention_width, training_flops_per_token
from grow_cli.train.metrics_file import read_metrics, step_record
from grow_cli.train.router import inactive_expert_parameters

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# Dense peak TFLOP/s (bf16/fp16 tensor cores, fp32 via TF32), from the vendors' data sheets; matched against
# torch.cuda.get_device_name(), first match wins, so specific names come before general ones.
PEAK_TFLOPS = {
    "H200": (989.0, 494.0),
    "H100 PCIe": (756.0, 378.0),
    "H100": (989.0, 494.0),
    "B200": (2250.0, 1100.0),
    "A100": (312.0, 156.0),
    "L40S": (362.0, 183.0),
    "A10G": (70.0, 35.0),
    "A10": (125.0, 62.5),
    "L4": (121.0, 60.0),
    "V100": (125.0, 15.7),
}


def flops_per_token(model: PreTrainedModel, seq_len: int) -> float:
    """Training FLOPs (forward + backward) per token for `model` at sequence length `seq_len`."""
    config = model.config.get_text_config()
    active = matmul_params(model) - inactive_expert_parameters(model)  # an MoE runs top-k of its E experts per token
    return training_flops_per_token(active, config.num_hidden_layers, attention_width(config), seq_len)


def matmul_params(model: Any) -> int:
    """The parameters that take part in matrix products: all but the embedding tables, which are lookups (the
    tokens', GPT-2's and BERT's learned positions, BERT's token types) — except one tied to the head, whose matmul
    it is. A tiny GPT-2 with its 1,024 learned positions was counted at twice the FLOPs torch's counter measures."""
    output = model.get_output_embeddings()
    head = None if output is None else output.weight
    tables = {
        id(module.weight): module.weight
        for module in model.modules()
        if isinstance(module, torch.nn.Embedding) and module.weight is not head
    }
    return sum(full_numel(p) for p in model.parameters()) - sum(full_numel(w) for w in tables.values())


def peak_flops(device: torch.device, mixed_precision: str, override_tflops: float | None) -> float | None:
    """The device's dense peak in FLOP/s for this precision, or None when unknown (CPUs, unlisted GPUs)."""
    if override_tflops is not None:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, (half, single) in PEAK_TFLOPS.items():
        if key in name:
            return (half if mixed_precision in ("bf16", "fp16") else single) * 1e12
    return None


class JsonlTracker(GeneralTracker):
    """An accelerate tracker that appends one JSON object per `accelerator.log` call to a file.

    On resume, lines the resumed run logs again are dropped first — those of the steps after the checkpoint, and the
    final evaluation a `--save-final-state` checkpoint's run logged at its own step — so the file always tells one
    consistent run with no duplicated or abandoned steps.
    """

    name = "jsonl"
    requires_logging_directory = False
    main_process_only = True

    def __init__(self, path: Path, resume_step: int | None):
        super().__init__()
        self.path = Path(path)
        self.resume_step = resume_step

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.resume_step is None:
            self.path.write_text("")
        elif self.path.is_file():
            step = self.resume_step
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) < step or step_record(r, step)]
            self.path.write_text("".join(json.dumps(record) + "\n" for record in kept))
        self._file = self.path.open("a")

    @property
    def tracker(self):
        return self._file

    def store_init_configuration(self, values: dict) -> None:
        pass  # the configuration goes into grow.json; the metrics file holds metrics only

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        try:
            self._file.write(json.dumps({"step": step, **values}) + "\n")
            self._file.flush()
        except OSError as exc:
            if not disk_full(exc, self.path.parent):
                raise
            raise OutputError(
                f"the disk holding {self.path.parent} filled up while writing {self.path.name}; the checkpoints "
                "saved so far are whole: free some space and continue with --resume auto"
            ) from None

    def finish(self) -> None:
        self._file.close()

    def loss_at(self, step: int) -> float | None:
        """The training loss the file records for `step`, None when it records none: the run's final training loss
        when this process trained no step (it resumed from the checkpoint of the run's last step). Every process
        reads it, from the file the main process writes."""
        records = read_metrics(self.path, missing_ok=True)
        return next((r["loss"] for r in records if step_record(r, step)), None)


def training_progress(total_steps: int, first_step: int, *, enabled: bool) -> tuple[Progress, Any]:
    """A rich progress bar on stderr showing loss, LR, tokens/s, the last --eval-every held-out loss and ETA; returns
    (progress, task id)."""
    progress = Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[tps]} tok/s{task.fields[eval]}"),
        TimeRemainingColumn(),
        console=err,
        disable=not enabled or not err.is_terminal,
    )
    task = progress.add_task("train", total=total_steps, completed=first_step, loss="-", lr="-", tps="-", eval="")
    return progress, task
