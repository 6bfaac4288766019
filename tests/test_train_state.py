"""Growing a training run, not only its weights: `grow expand` of a train-stage checkpoint writes the grown AdamW
state, `grow train-stage --resume grown` continues it — checked on a tiny Llama, a tiny GPT-2 and a tiny DeepSeek-V3
(latent attention, routed and shared experts, a dense first layer) on real Shakespeare (fp32, clipping off, dropout
off).

The properties (docs/training-state.md):
* one step: every grown weight with a counterpart in the source equals the grown image of one AdamW step of the
  source, to ≤ 1e-6 relative; entries without one (new layers, staged's off-diagonal blocks) start from zero
  moments and move;
* 20 steps: where every entry has a counterpart (fpi, hypercloning), the grown loss curve equals the source's to
  ≤ 1e-4; where new entries train, the gap is measured, and it vanishes when they are held at zero;
* negative controls — fresh moments, no LR multiplier, no eps scaling — fail the one-step check; clipping, dropout
  and noise each open a measured gap.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import tiny_moe
import torch
import transformers as tf
from doc_keys import json_output_problems
from safetensors.torch import load_file
from tinylm import run_grow, save_tiny_lm, tiny_config, tiny_tokenizer, write_plays

from grow_cli.checkpoint.arrays import torch_view
from grow_cli.checkpoint.model_config import load_config
from grow_cli.checkpoint.reader import CheckpointReader
from grow_cli.errors import CheckpointError, OptionError, OutputError, UsageError
from grow_cli.growth.expand import expand, materialize
from grow_cli.growth.grown_state import dropout_note
from grow_cli.growth.plan import build_plan
from grow_cli.growth.spec import GrowthSpec
from grow_cli.train.config import TrainConfig
from grow_cli.train.loop import train_stage
from grow_cli.train.metrics_file import read_metrics

torch.set_num_threads(1)

N, MORE = 6, 20  # the source trains N steps before growth; both runs then train MORE
SETTINGS = dict(seq_len=32, micro_batch_size=8, quiet=True, grad_clip=0.0, max_lr=3e-3, warmup_steps=2, eval_batches=1)
ONE_STEP = 1e-6  # relative, per tensor
CURVE = 1e-4  # absolute, on the training loss
EXACT = {
    "fpi": dict(width_method="fpi", width_factor=2),
    "hypercloning": dict(width_method="hypercloning", width_factor=2),
}
PARTLY = {  # exact where a counterpart exists; new entries train from zero moments
    "staged": dict(width_method="staged", width_factor=2),
    "identity": dict(depth_method="identity", layers=4),
    "staged-identity": dict(depth_method="staged-identity", layers=4),
    "layer-map": dict(layer_map="0,1,0,1", identity_repeats=True),  # exact: originals 0, 1 in order, then copies
    "fpi+layer-map": dict(width_method="fpi", width_factor=2, layer_map="0,1,0,1", identity_repeats=True),
}
ARCHS = ("llama", "gpt2", "deepseek_v3")  # deepseek_v3: latent attention, routed and shared experts, a dense layer
MIXTRAL_AUX = 0.02  # router_aux_loss_coef of the tiny Mixtral whose depth growth is not exact


def train(**settings):
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)  # each run builds its own Accelerator, as a fresh process would
    return train_stage(TrainConfig(**{**SETTINGS, **settings}))


def losses(out: Path) -> list[float]:
    return [m["loss"] for m in read_metrics(out / "metrics.jsonl") if "loss" in m]


def step_dir(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step_{step:08d}"


def tiny_model(arch: str, folder: Path) -> Path:
    torch.manual_seed(0)
    if arch == "llama":
        model = tf.LlamaForCausalLM(tiny_config())
    elif arch == "deepseek_v3":
        config = tiny_moe.config(arch)
        config.vocab_size = tiny_config().vocab_size  # the tokenizer's
        model = tf.DeepseekV3ForCausalLM(config)
    elif arch.startswith("mixtral"):  # 2 layers; "mixtral-aux": with a load-balancing loss (MIXTRAL_AUX)
        config = tiny_moe.config("mixtral")
        config.vocab_size, config.num_hidden_layers = tiny_config().vocab_size, 2
        config.router_aux_loss_coef = MIXTRAL_AUX if arch == "mixtral-aux" else 0.0
        model = tf.MixtralForCausalLM(config)
    else:
        config = tf.GPT2Config(vocab_size=512, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1,
                               eos_token_id=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
        model = tf.GPT2LMHeadModel(config)
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


@dataclass
class Source:
    """A source run paused at step N (`checkpoint`) and its own continuation for MORE steps."""

    arch: str
    model: Path
    data: Path
    out: Path
    continued: Path  # the source's continuation: checkpoint at N + 1, losses of steps N + 1 … N + MORE

    @property
    def checkpoint(self) -> Path:
        return step_dir(self.out, N)


class Lab:
    """Sources, grown folders and runs, built once per module and shared by the tests."""

    def __init__(self, root: Path):
        self.root = root
        self.data = write_plays(root / "data", count=2, chars=40_000)
        self._sources: dict[str, Source] = {}
        self._grown: dict[tuple, Path] = {}

    def source(self, arch: str) -> Source:
        if arch not in self._sources:
            model = tiny_model(arch, self.root / f"{arch}-model")
            out = self.root / f"{arch}-src"
            train(model=model, data=[str(self.data)], out=out, max_steps=N + MORE, exit_interval=N)
            continued = self.root / f"{arch}-src-continued"
            shutil.copytree(out, continued)
            # checkpoints at N + 1 (the one-step weights), 2(N + 1), 3(N + 1)
            train(model=model, data=[str(self.data)], out=continued, max_steps=N + MORE, resume="auto",
                  save_every=N + 1, keep_last=3)  # fmt: skip
            self._sources[arch] = Source(arch, model, self.data, out, continued)
        return self._sources[arch]

    def grown(self, arch: str, case: str, **spec) -> Path:
        key = (arch, case, tuple(sorted(spec.items())))
        if key not in self._grown:
            out = self.root / f"{arch}-{case}-grown"
            report = expand(str(self.source(arch).checkpoint), out, GrowthSpec(**spec), quiet=True)
            assert json_output_problems("`grow expand`", report) == []  # with its grown training state
            self._grown[key] = out
        return self._grown[key]

    def run_grown(self, grown: Path, name: str, *, steps: int = MORE, **settings) -> Path:
        out = self.root / name
        shutil.rmtree(out, ignore_errors=True)
        train(model=grown, data=[str(self.data)], out=out, max_steps=MORE, resume="grown",
              save_every=N + 1, keep_last=3, exit_interval=steps if steps < MORE else None, **settings)  # fmt: skip
        return out

    def image(self, arch: str, step_out: Path, spec: dict, step: int = N + 1) -> dict[str, torch.Tensor]:
        """The grown image of the source's weights at `step` of `step_out`, by the same plan (uniform maps) as the
        state was grown with."""
        plan, reader = growth_plan(self.source(arch), spec, step_dir(step_out, step))
        with reader:
            return {t.name: torch_view(materialize(plan, reader, i)).clone() for i, t in enumerate(plan.tensors)}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    return Lab(tmp_path_factory.mktemp("train-state"))


def growth_plan(source: Source, spec: dict, checkpoint: Path):
    """The plan `grow expand` makes for a checkpoint with a training state, and a reader of that checkpoint."""
    reader = CheckpointReader(checkpoint)
    return build_plan(load_config(source.model), reader.tensor_infos(), GrowthSpec(**spec), uniform_maps=True), reader


def carried_masks(source: Source, spec: dict) -> dict[str, torch.Tensor | None]:
    """For every grown tensor, the entries that have a counterpart in the source (None: a new tensor)."""
    plan, reader = growth_plan(source, spec, source.checkpoint)
    reader.close()
    masks = {}
    for t in plan.tensors:
        if t.new:
            masks[t.name] = None
            continue
        if plan.width is None:
            mask = torch.ones(t.shape, dtype=torch.bool)
        else:
            mask = torch.from_numpy(plan.width.state_layout(t.source, np.ones(t.source.shape, np.float32), "mask") != 0)
        if t.name.endswith("c_attn.bias"):
            # The key bias has no gradient in exact arithmetic (it shifts all scores of a query alike, which softmax
            # ignores); AdamW normalises the round-off there in both runs alike, carrying no function: left out.
            third = t.shape[0] // 3
            mask[third : 2 * third] = False
        masks[t.name] = mask
    return masks


def one_step(
    lab: Lab, source: Source, run: Path, spec: dict, *, image_of: Path | None = None, grown: Path | None = None
):
    """(worst relative error over carried entries, how far the fresh entries moved) after one step of `run`, which
    continued `grown` (by default the lab's growth of `source` by `spec`)."""
    image = lab.image(source.arch, image_of or source.continued, spec)
    grown = grown or run.parent / f"{source.arch}-{_case(spec)}-grown"
    grown_before = load_file(grown / "model.safetensors")
    after = load_file(step_dir(run, N + 1) / "model.safetensors")
    worst, moved = 0.0, 0.0
    for name, mask in carried_masks(source, spec).items():
        if mask is None:
            moved = max(moved, float((after[name] - grown_before[name]).abs().max()))
            continue
        scale = float(image[name][mask].abs().max()) or 1.0  # all zeros: a router's untrained correction bias
        worst = max(worst, float((after[name] - image[name])[mask].abs().max()) / scale)
        if not mask.all():
            moved = max(moved, float((after[name] - grown_before[name])[~mask].abs().max()))
    return worst, moved


def _case(spec: dict) -> str:
    return next(case for case, s in {**EXACT, **PARTLY}.items() if s == spec)


def curve_gap(source: Source, run: Path, steps: int = MORE) -> float:
    theirs = losses(source.continued)[N : N + steps]
    ours = losses(run)[:steps]
    assert len(ours) == len(theirs) == steps
    return max(abs(a - b) for a, b in zip(ours, theirs, strict=True))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("case", EXACT)
def test_exact_width_growth_continues_the_source_run(lab, arch, case):
    source, spec = lab.source(arch), EXACT[case]
    grown = lab.grown(arch, case, **spec)
    state = json.loads((grown / "training-state" / "state.json").read_text())
    assert state["step"] == N and state["dynamics"]["exact"] is True and not state["dynamics"]["fresh"]
    run = lab.run_grown(grown, f"{arch}-{case}-run")
    worst, _ = one_step(lab, source, run, spec)
    assert worst <= ONE_STEP, worst
    gap = curve_gap(source, run)
    assert gap <= CURVE, gap
    print(f"{arch} {case}: one-step {worst:.2e}, 20-step loss gap {gap:.2e}")
    record = json.loads((run / "grow.json").read_text())["stages"][-1]
    assert record["continued"]["start_step"] == N and record["steps"] == MORE and record["end_step"] == N + MORE
    assert {g["lr"] for g in record["continued"]["multipliers"]} == {0.5, 1.0}  # IN-divided matrices at half LR
    card = (run / "README.md").read_text()
    assert f"continued the grown training state of step {N}" in card and "LR ×0.5" in card


@pytest.mark.parametrize(
    ("arch", "case"),
    # refused for DeepSeek: staged needs its heads ×k (test_mla_width.py); staged-identity's new layers would never
    # train behind its zeroed latent norms (test_staged.py)
    [(arch, case) for arch in ARCHS for case in PARTLY if arch != "deepseek_v3" or case == "identity"],
)
def test_new_entries_train_from_fresh_moments_and_the_rest_is_exact(lab, arch, case):
    source, spec = lab.source(arch), PARTLY[case]
    grown = lab.grown(arch, case, **spec)
    state = json.loads((grown / "training-state" / "state.json").read_text())
    assert state["dynamics"]["exact"] is False
    assert state["dynamics"]["fresh"] or state["dynamics"]["partly_fresh"]
    run = lab.run_grown(grown, f"{arch}-{case}-run")
    worst, moved = one_step(lab, source, run, spec)
    assert worst <= ONE_STEP, worst  # every entry with a counterpart: the grown image of the source's step
    assert moved > 1e-5, moved  # …while the new entries got gradients at once and moved from their init
    gap = curve_gap(source, run)
    assert gap < 0.5, gap  # measured (docs/training-state.md), not exact
    print(f"{arch} {case}: one-step {worst:.2e}, new entries moved {moved:.2e}, 20-step loss gap {gap:.2e}")


@pytest.mark.parametrize("arch", ["mixtral", "mixtral-aux"])
def test_depth_growth_under_a_load_balancing_loss_is_not_claimed_exact(lab, arch):
    """The load-balancing loss averages over the MoE layers, so a growth that adds some changes the original layers'
    gradients: with router_aux_loss_coef > 0 the state says so in a note and the one-step check measures a real gap
    (it was once marked exact where a counterpart exists); with 0, the original layers take exactly the grown image
    of the source's step, through the grown folder written and loaded back by train-stage."""
    source, spec = lab.source(arch), PARTLY["identity"]
    grown = lab.grown(arch, "identity", **spec)
    dynamics = json.loads((grown / "training-state" / "state.json").read_text())["dynamics"]
    noted = [note for note in dynamics["notes"] if "load-balancing loss" in note]
    run = lab.run_grown(grown, f"{arch}-identity-run", steps=1)
    worst, moved = one_step(lab, source, run, spec)
    print(f"{arch} identity 2 → 4: one-step {worst:.2e} on the original layers, new layers moved {moved:.2e}")
    assert dynamics["exact"] is False and moved > 1e-5
    if arch == "mixtral":
        assert not noted and worst <= ONE_STEP, worst
    else:
        assert noted == [
            f"the load-balancing loss (router_aux_loss_coef {MIXTRAL_AUX}) averages over the MoE layers, 2 in the "
            "source and 4 grown, so the original layers' gradients are not the source run's: their moments are "
            "carried, but the run does not continue the source's dynamics exactly (with router_aux_loss_coef 0 it "
            "would)"
        ]
        assert worst > 1e-3, worst


@pytest.mark.parametrize("case", ["identity", "staged-identity", "layer-map", "fpi+layer-map"])
def test_with_the_new_layers_held_at_zero_the_curve_is_the_sources(lab, case):
    """What the 20-step gap of depth growth comes from: LR multiplier 0 on the new layers' tensors."""
    source, grown = lab.source("llama"), lab.grown("llama", case, **PARTLY[case])
    held = lab.root / f"llama-{case}-held"
    shutil.rmtree(held, ignore_errors=True)
    shutil.copytree(grown, held)
    edit_state(held, lambda name, p: p.update(lr=0.0) if p["moments"] == "fresh" else None)
    gap = curve_gap(source, lab.run_grown(held, f"llama-{case}-held-run"))
    print(f"llama {case}, new layers held at zero: 20-step loss gap {gap:.2e}")
    assert gap <= CURVE, gap


def edit_state(folder: Path, edit) -> None:
    path = folder / "training-state" / "state.json"
    state = json.loads(path.read_text())
    for name, p in state["parameters"].items():
        edit(name, p)
    path.write_text(json.dumps(state))


@pytest.mark.parametrize(
    "control, edit, at_least",
    [
        ("fresh-moments", lambda name, p: p.update(moments="fresh"), 1e-3),
        ("no-lr-multiplier", lambda name, p: p.update(lr=1.0, weight_decay=1.0), 1e-3),
        ("no-eps-scaling", lambda name, p: p.update(eps=1.0), 10 * ONE_STEP),
    ],
)
def test_negative_controls_fail_the_one_step_check(lab, control, edit, at_least):
    source, spec = lab.source("llama"), EXACT["hypercloning"]
    grown = lab.grown("llama", "hypercloning", **spec)
    broken = lab.root / f"llama-hypercloning-grown-{control}"
    shutil.rmtree(broken, ignore_errors=True)
    shutil.copytree(grown, broken)
    edit_state(broken, edit)
    run = lab.run_grown(broken, f"llama-{control}-run", steps=1)
    image = lab.image("llama", source.continued, spec)
    after = load_file(step_dir(run, N + 1) / "model.safetensors")
    worst = max(float((after[k] - image[k]).abs().max() / image[k].abs().max()) for k in image)
    print(f"negative control {control}: one-step {worst:.2e}")
    assert worst > at_least, (control, worst)


def test_clipping_dropout_and_noise_each_open_a_measured_gap(lab):
    """Each breaks an assumption of the exact continuation (docs/training-state.md): the gap over 5 steps is
    measured against the source under the same condition and must be visible."""
    gaps = {}
    # noise: HyperCloning's symmetric noise keeps the function, not the gradients' symmetry
    source = lab.source("llama")
    noisy = lab.grown("llama", "noise", width_method="hypercloning", width_factor=2, noise_snr_db=10)
    assert json.loads((noisy / "training-state" / "state.json").read_text())["dynamics"]["exact"] is False
    gaps["noise"] = curve_gap(source, lab.run_grown(noisy, "llama-noise-run", steps=5), steps=5)
    # clipping: the grown gradient norm is not the source's, so neither is the clipping factor
    clipped = lab.root / "llama-src-clipped"
    shutil.rmtree(clipped, ignore_errors=True)
    train(model=source.model, data=[str(lab.data)], out=clipped, max_steps=N + MORE, resume=str(source.checkpoint),
          grad_clip=0.05, exit_interval=5)  # fmt: skip
    grown = lab.grown("llama", "hypercloning", **EXACT["hypercloning"])
    run = lab.run_grown(grown, "llama-clipped-run", steps=5, grad_clip=0.05)
    gaps["clipping"] = max(abs(a - b) for a, b in zip(losses(run), losses(clipped), strict=True))
    # dropout: the copies draw different masks
    gpt2 = lab.source("gpt2")
    dropped_model = lab.root / "gpt2-model-dropout"
    shutil.rmtree(dropped_model, ignore_errors=True)
    shutil.copytree(gpt2.model, dropped_model)
    grown = lab.root / "gpt2-hypercloning-dropout"
    shutil.rmtree(grown, ignore_errors=True)
    shutil.copytree(lab.grown("gpt2", "hypercloning", **EXACT["hypercloning"]), grown)
    for folder in (dropped_model, grown):
        config = json.loads((folder / "config.json").read_text())
        config.update(resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)
        (folder / "config.json").write_text(json.dumps(config))
    dropped = lab.root / "gpt2-src-dropout"
    shutil.rmtree(dropped, ignore_errors=True)
    train(model=dropped_model, data=[str(lab.data)], out=dropped, max_steps=N + MORE, resume=str(gpt2.checkpoint),
          exit_interval=5)  # fmt: skip
    run = lab.run_grown(grown, "gpt2-dropout-run", steps=5)
    # …and a state grown from the dropout run says so, naming the dropout the LM applies, not its classifier head's
    dropout_grown = lab.root / "gpt2-dropout-grown-from-run"
    shutil.rmtree(dropout_grown, ignore_errors=True)
    notes = expand(str(step_dir(dropped, N + 5)), dropout_grown, GrowthSpec(**EXACT["hypercloning"]), quiet=True)
    notes = notes["training_state"]["notes"]
    assert any("dropout (attn_pdrop 0.1, embd_pdrop 0.1, resid_pdrop 0.1)" in n for n in notes), notes
    assert not any("summary_first_dropout" in n for n in notes), notes
    gaps["dropout"] = max(abs(a - b) for a, b in zip(losses(run), losses(dropped), strict=True))
    print("5-step loss gaps:", {k: f"{v:.2e}" for k, v in gaps.items()})
    assert all(gap > CURVE for gap in gaps.values()), gaps


def test_the_dropout_note_names_a_rate_nested_in_the_lms_config(tmp_path):
    """DBRX (a derived definition, depth growth) keeps its attention dropout in `attn_config`: a state grown from it
    is not called exact, and the note names the rate by its path in config.json. (clip_qkv is set, as in DBRX's
    released configs: transformers 5.25's DBRX attention does not run without it.)"""
    torch.manual_seed(0)
    attention = {"attn_pdrop": 0.1, "kv_n_heads": 2, "clip_qkv": 8.0, "rope_theta": 10000.0}
    experts = {"ffn_hidden_size": 48, "moe_num_experts": 2, "moe_top_k": 1}
    config = tf.DbrxConfig(
        d_model=32, n_heads=4, n_layers=2, max_seq_len=64, vocab_size=96, attn_config=attention, ffn_config=experts
    )
    tf.DbrxForCausalLM(config).save_pretrained(tmp_path)
    with CheckpointReader(tmp_path) as reader:
        plan = build_plan(load_config(tmp_path), reader.tensor_infos(), GrowthSpec(layers=4, depth_method="identity"))
    note = dropout_note(plan)
    assert note is not None and note.startswith("the model trains with dropout (attn_config.attn_pdrop 0.1)"), note


def test_a_state_grown_from_a_clipping_run_is_not_called_exact_and_is_not(lab):
    """Clipping by the global gradient norm — grow's default, --grad-clip 1 — ties each step to that norm, which
    growth changes (copies and value scales change each tensor's share): the state grown from a clipping run says so,
    and its first step leaves the grown image of the source's by far more than an unclipped run's, both through a
    real save and from_pretrained of the grown folder."""
    source, spec = lab.source("llama"), EXACT["hypercloning"]
    clipped, continued = lab.root / "llama-src-clip", lab.root / "llama-src-clip-continued"
    for folder in (clipped, continued):
        shutil.rmtree(folder, ignore_errors=True)
    train(model=source.model, data=[str(lab.data)], out=clipped, max_steps=N + MORE, grad_clip=1.0, exit_interval=N)
    shutil.copytree(clipped, continued)
    train(model=source.model, data=[str(lab.data)], out=continued, max_steps=N + MORE, resume="auto", grad_clip=1.0,
          exit_interval=1)  # fmt: skip
    grown = lab.root / "llama-clip-grown"
    shutil.rmtree(grown, ignore_errors=True)
    state = expand(str(step_dir(clipped, N)), grown, GrowthSpec(**spec), quiet=True)["training_state"]
    assert state["exact_dynamics"] is False and state["carried_tensors"] > 0 and state["fresh_tensors"] == 0
    assert any("clipped the gradient's global norm at 1" in n and "--grad-clip 0" in n for n in state["notes"]), state
    card = (grown / "README.md").read_text()  # the card says so too, with the reason; an exact state's card does not
    assert "continues the source run, not exactly" in card and "clipped the gradient's global norm at 1" in card
    clipped_worst, _ = one_step(lab, source, lab.run_grown(grown, "llama-clip-run", steps=1, grad_clip=1.0), spec,
                                image_of=continued, grown=grown)  # fmt: skip
    unclipped = lab.grown("llama", "hypercloning", **spec)
    assert json.loads((unclipped / "training-state" / "state.json").read_text())["dynamics"]["exact"] is True
    card = (unclipped / "README.md").read_text()
    assert "exactly continues the source run" in card and "clipped the gradient" not in card
    worst, _ = one_step(lab, source, lab.run_grown(unclipped, "llama-unclipped-run", steps=1), spec)
    print(f"llama hypercloning, one step: clipped source {clipped_worst:.2e}, unclipped {worst:.2e}")
    assert worst <= ONE_STEP < 100 * ONE_STEP < clipped_worst, (worst, clipped_worst)


def test_schedule_offset_and_restart_warmup_continue_the_schedule(lab):
    """--schedule-offset R starts the grown run at step R of its schedule (data continuing after the source's), a
    restart warmup ramps the LR from there; 'auto' takes the state's suggested R (staged training's S / c_op)."""
    grown = lab.grown("llama", "hypercloning", **EXACT["hypercloning"])
    state = json.loads((grown / "training-state" / "state.json").read_text())
    suggested = state["restart"]["suggested_step"]
    assert suggested == round(N / 1.81) and state["loss_at_growth"] > 0
    run = lab.run_grown(grown, "llama-restart-run", steps=3, schedule_offset="auto", restart_warmup_steps=3)
    metrics = [m for m in read_metrics(run / "metrics.jsonl") if "lr" in m]
    assert [m["step"] for m in metrics] == [suggested + 1, suggested + 2, suggested + 3]
    lrs = [m["lr"] for m in metrics]
    assert lrs[0] < lrs[1] < lrs[2] and lrs[0] == pytest.approx(lrs[1] / 2)  # the ramp: 1/3, 2/3, 3/3 of its end
    saved = json.loads((step_dir(run, suggested + 3) / "grow-state.json").read_text())
    assert saved["continuation"]["start_step"] == suggested and saved["multipliers"]
    # Its data position is the source's plus its own 3 steps (not step × batch, which a state grown from this run
    # would then re-read from): what a further growth continues after.
    batch = saved["global_batch"]
    assert saved["data_blocks"] == state["data_blocks"] + 3 * batch != saved["step"] * batch


def test_a_bare_schedule_offset_starts_a_fresh_optimizer_later_in_the_schedule(lab, tmp_path):
    source = lab.source("llama")
    out = tmp_path / "offset"
    train(model=source.model, data=[str(lab.data)], out=out, max_steps=3, schedule_offset=5, schedule="linear")
    metrics = [m for m in read_metrics(out / "metrics.jsonl") if "lr" in m]
    assert [m["step"] for m in metrics] == [6, 7, 8]
    schedule = json.loads((out / "grow.json").read_text())["stages"][-1]["schedule"]
    assert schedule["max_steps"] == 8 and schedule["restart_step"] == 5
    assert metrics[0]["lr"] == pytest.approx(3e-3 * (1 - 0.9 * (6 - 2) / 6))  # linear decay, warmup 2, 8 steps


def test_a_grown_run_grows_again_and_its_multipliers_compose(lab):
    """Two ×2 growths of a run (the second from a checkpoint of the first's continuation) continue the source as one
    ×4 growth would: LR and eps multipliers multiply, and the weights after 7 more steps are the ×4 image of the
    source's at the same step."""
    source = lab.source("llama")
    first = lab.grown("llama", "hypercloning", **EXACT["hypercloning"])
    run = lab.run_grown(first, "llama-twice-first", steps=1)  # pauses at N + 1 with a checkpoint
    second = lab.root / "llama-twice-grown"
    shutil.rmtree(second, ignore_errors=True)
    expand(str(step_dir(run, N + 1)), second, GrowthSpec(**EXACT["hypercloning"]), quiet=True)
    state = json.loads((second / "training-state" / "state.json").read_text())
    q = state["parameters"]["model.layers.0.self_attn.q_proj.weight"]
    assert (q["lr"], q["eps"], q["weight_decay"]) == (0.25, 0.25, 4.0) and q["step"] == N + 1
    out = lab.root / "llama-twice-run"
    shutil.rmtree(out, ignore_errors=True)
    train(model=second, data=[str(lab.data)], out=out, max_steps=MORE - 1, resume="grown", exit_interval=N + 1)
    image = lab.image("llama", source.continued, dict(width_method="hypercloning", width_factor=4), step=2 * (N + 1))
    after = load_file(step_dir(out, 2 * (N + 1)) / "model.safetensors")
    worst = max(float((after[k] - image[k]).abs().max() / image[k].abs().max()) for k in image)
    assert worst <= 10 * ONE_STEP, worst
    print(f"llama hypercloning ×2 twice, {N + 1} steps after the second growth: {worst:.2e}")


def test_an_interrupted_continuation_resumes_with_its_multipliers(lab):
    source, spec = lab.source("llama"), EXACT["hypercloning"]
    grown = lab.grown("llama", "hypercloning", **spec)
    out = lab.run_grown(grown, "llama-interrupted", steps=8)
    train(model=grown, data=[str(lab.data)], out=out, max_steps=MORE, resume="auto")
    assert curve_gap(source, out) <= CURVE


def test_a_resume_refuses_another_restart_warmup_or_schedule_offset_than_its_checkpoints(lab, tmp_path):
    """Resuming a checkpoint restores the schedule it was saved with, its restart step and restart warmup included.
    A continued run resumed with another --restart-warmup-steps went on with the checkpoint's without a word (the
    option silently ignored); a plain run's checkpoint resumed with either option was refused for a setting the user
    never touched ("max_steps=40 but this run has max_steps=45", "start_step=None but this run has start_step=0").
    Each is refused naming the option and what the checkpoint holds; leaving them out takes the checkpoint's."""
    grown = lab.grown("llama", "hypercloning", **EXACT["hypercloning"])
    continued = lab.run_grown(grown, "llama-restart-resumed", steps=2, restart_warmup_steps=3)
    with pytest.raises(UsageError, match="--restart-warmup-steps 5: the checkpoint being resumed has a 3-step restart"):
        train(model=grown, data=[str(lab.data)], out=continued, max_steps=MORE, resume="auto", restart_warmup_steps=5)
    plain = tmp_path / "plain"
    shutil.copytree(lab.source("llama").out, plain)
    model, more = lab.source("llama").model, dict(data=[str(lab.data)], out=plain, max_steps=N + MORE, resume="auto")
    with pytest.raises(UsageError, match="--restart-warmup-steps 2: the checkpoint being resumed has no restart"):
        train(model=model, restart_warmup_steps=2, **more)
    with pytest.raises(UsageError, match="--schedule-offset 3: the checkpoint being resumed started at step 0;"):
        train(model=model, schedule_offset=3, **more)
    result = train(model=grown, data=[str(lab.data)], out=continued, max_steps=MORE, resume="auto", exit_interval=1)
    assert result["end_step"] == N + 3  # the checkpoint's restart warmup, taken when the option is left out


def test_a_continued_runs_checkpoints_count_the_lineages_tokens_as_its_steps(lab, tmp_path):
    """A `--resume grown` run's steps go on from its source's, and so do the tokens its checkpoints record (what a
    further growth and the card report: step 14 after 14 steps' tokens, not after this run's 8), across an
    interruption too; its stage, its metrics and its summary count the tokens this run trained, beside its steps. A
    checkpoint an earlier grow wrote (this run's tokens alone, no `continuation.tokens`) resumes as it counted."""
    per_step = SETTINGS["seq_len"] * SETTINGS["micro_batch_size"]
    spec = EXACT["hypercloning"]
    grown = lab.grown("llama", "hypercloning", **spec)
    out = lab.run_grown(grown, "llama-tokens", steps=8)
    paused = json.loads((step_dir(out, N + 8) / "grow-state.json").read_text())
    assert paused["tokens"] == (N + 8) * per_step and paused["continuation"]["tokens"] == N * per_step
    again = tmp_path / "again"
    state = expand(str(step_dir(out, N + 8)), again, GrowthSpec(**spec), quiet=True)["training_state"]
    assert (state["step"], state["tokens"]) == (N + 8, (N + 8) * per_step)
    assert f"(step {N + 8}, {(N + 8) * per_step:,} tokens)" in (again / "README.md").read_text()
    earlier = tmp_path / "earlier"  # as an earlier grow saved the same checkpoint
    shutil.copytree(out, earlier)
    path = step_dir(earlier, N + 8) / "grow-state.json"
    del paused["continuation"]["tokens"]
    path.write_text(json.dumps({**paused, "tokens": 8 * per_step}))
    for folder in (out, earlier):
        result = train(model=grown, data=[str(lab.data)], out=folder, max_steps=MORE, resume="auto")
        assert (result["steps"], result["end_step"], result["tokens"]) == (MORE, N + MORE, MORE * per_step)
        stage = json.loads((folder / "grow.json").read_text())["stages"][-1]
        assert (stage["steps"], stage["tokens"]) == (MORE, MORE * per_step), folder
        assert read_metrics(folder / "metrics.jsonl")[-2]["tokens"] == MORE * per_step  # (the last: the final eval)
    card = (out / "README.md").read_text()
    assert f"Trained** for {MORE} steps on {MORE * per_step:,} tokens" in card
    assert f"continued the grown training state of step {N} ({N * per_step:,} tokens trained) from step {N}" in card


def test_a_final_state_lets_the_finished_run_grow_on(lab, tmp_path):
    """--save-final-state leaves the last step's state; the output folder is then a SRC with a training state, and
    what it publishes is the same as without it."""
    source = lab.source("llama")
    plain, kept = tmp_path / "plain", tmp_path / "kept"
    for out, save in ((plain, False), (kept, True)):
        shutil.copytree(source.out, out)
        result = train(model=source.model, data=[str(lab.data)], out=out, max_steps=N + 2, resume=None,
                       overwrite=True, save_final_state=save)  # fmt: skip
    assert result["final_state"] and (step_dir(kept, N + 2) / "optimizer.bin").is_file()
    assert (plain / "model.safetensors").read_bytes() == (kept / "model.safetensors").read_bytes()
    # As a run from a bf16 model writes it: config.json says bfloat16, the final state holds float32 master weights.
    config = json.loads((kept / "config.json").read_text())
    (kept / "config.json").write_text(json.dumps({**config, "dtype": "bfloat16"}))
    report = expand(str(kept), tmp_path / "wide", GrowthSpec(width_method="staged", width_factor=2), quiet=True)
    assert report["training_state"]["step"] == N + 2
    # The growth's config says what its tensors are (it said bfloat16 over float32 tensors)
    assert json.loads((tmp_path / "wide" / "config.json").read_text())["dtype"] == "float32"
    assert {t.dtype for t in load_file(tmp_path / "wide" / "model.safetensors").values()} == {torch.float32}
    stage = json.loads((tmp_path / "wide" / "grow.json").read_text())["stages"]
    assert [s["kind"] for s in stage] == ["train", "expand"] and stage[-1]["training_state"]["carried_tensors"] > 0
    assert not (tmp_path / "wide" / "checkpoints").exists() and not (tmp_path / "wide" / "metrics.jsonl").exists()
    plain_report = expand(str(plain), tmp_path / "wide-plain", GrowthSpec(layers=4, depth_method="stack"), quiet=True)
    assert plain_report["training_state"] is None  # no state in SRC: as before


BF16 = ["--mixed-precision", "bf16", "--schedule", "constant", "--warmup-steps", 2]  # constant: any horizon agrees
BF16_CURVE = 3e-3  # a logit of order 1 rounded once more in bf16 moves by ≤ 2⁻⁸ ≈ 3.9e-3


def cli_train(capsys, model: Path, out: Path, data: Path, *extra) -> None:
    """One `grow train-stage` run through the command, with the lab's settings."""
    args = ["train-stage", model, "--data", data, "--out", out, "--seq-len", 32, "--micro-batch-size", 8, "-q"]
    code, _, stderr = run_grow([*args, "--max-lr", "3e-3", "--grad-clip", 0, *extra], capsys)
    assert code == 0, stderr


def test_a_bf16_run_resumes_exactly_and_its_grown_final_state_continues_it(lab, tmp_path, capsys):
    """docs/training.md's --mixed-precision bf16 (autocast on CPU too): a run paused at step 4 and resumed with
    --resume auto ends as the uninterrupted one, bit for bit (the same bf16 ops on the same inputs); and a 4-step run
    with --save-final-state, widened ×2 by HyperCloning with its state, continues under --resume grown with the
    uninterrupted run's losses at steps 5–8 within BF16_CURVE (HyperCloning's copies and halvings are exact in bf16 as
    in fp32: measured 0). The control, the grown state's moments made fresh, leaves them by more (2.9e-2)."""
    model, data = save_tiny_lm(tmp_path / "model"), lab.data
    whole, parts, source = tmp_path / "whole", tmp_path / "parts", tmp_path / "source"
    cli_train(capsys, model, whole, data, "--max-steps", 8, *BF16)
    cli_train(capsys, model, parts, data, "--max-steps", 8, "--exit-interval", 4, *BF16)
    cli_train(capsys, model, parts, data, "--max-steps", 8, "--resume", "auto", *BF16)
    assert losses(parts) == losses(whole)
    a, b = load_file(whole / "model.safetensors"), load_file(parts / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((parts / "grow.json").read_text())["stages"][-1]["mixed_precision"] == "bf16"

    cli_train(capsys, model, source, data, "--max-steps", 4, "--save-final-state", *BF16)
    code, _, stderr = run_grow(["expand", source, tmp_path / "wide", "--width-factor", 2, "--width-method",
                                "hypercloning", "-q"], capsys)  # fmt: skip
    assert code == 0, stderr
    shutil.copytree(tmp_path / "wide", tmp_path / "fresh")
    edit_state(tmp_path / "fresh", lambda name, p: p.update(moments="fresh"))
    gaps = {}
    for grown in ("wide", "fresh"):
        cli_train(capsys, tmp_path / grown, tmp_path / f"{grown}-run", data, "--max-steps", 4, "--resume", "grown",
                  *BF16)  # fmt: skip
        ours = losses(tmp_path / f"{grown}-run")
        gaps[grown] = max(abs(x - y) for x, y in zip(ours, losses(whole)[4:], strict=True))
    print(f"bf16 hypercloning ×2 of a final state, 4 steps: loss gap {gaps['wide']:.2e}, fresh {gaps['fresh']:.2e}")
    assert gaps["wide"] <= BF16_CURVE < gaps["fresh"], gaps


def test_a_resume_in_another_mixed_precision_goes_on_with_a_note_and_resume_grown_notes_it_too(lab, tmp_path, capsys):
    """A checkpoint records the mixed precision it was saved in. `--resume auto` in another one (a GPU without bf16)
    goes on — the float32 state loads under any — with one note that the continuation is no longer exact; the same
    precision, or a checkpoint of an earlier grow that did not record it, gets none. `--resume grown` notes a
    precision and an objective setting (--document-masking) the source run did not have, as it notes the batch."""
    model, data = save_tiny_lm(tmp_path / "model"), lab.data
    args = ["--seq-len", 32, "--micro-batch-size", 8, "--max-lr", "3e-3", "--max-steps", 4, "--save-final-state"]

    def grow_train(out: Path, *extra, model: Path = model) -> str:
        code, _, stderr = run_grow(["train-stage", model, "--data", data, "--out", out, *args, *extra], capsys)
        assert code == 0, stderr
        return " ".join(stderr.split())

    grow_train(tmp_path / "fp32", "--exit-interval", 2, *BF16)
    state = step_dir(tmp_path / "fp32", 2) / "grow-state.json"
    assert json.loads(state.read_text())["mixed_precision"] == "bf16"
    for copy in ("bf16", "older"):
        shutil.copytree(tmp_path / "fp32", tmp_path / copy)
    older = step_dir(tmp_path / "older", 2) / "grow-state.json"
    older.write_text(json.dumps({k: v for k, v in json.loads(older.read_text()).items() if k != "mixed_precision"}))

    inexact = "no longer exactly as the paused run would have gone on"
    notes = grow_train(tmp_path / "fp32", "--resume", "auto", "--mixed-precision", "no", *BF16[2:])
    assert "note: the checkpoint was made with mixed_precision='bf16' but this run has mixed_precision='no'" in notes
    assert notes.count(inexact) == 1 and "resumed from" in notes
    assert json.loads((tmp_path / "fp32" / "grow.json").read_text())["stages"][-1]["mixed_precision"] == "no"
    assert inexact not in grow_train(tmp_path / "bf16", "--resume", "auto", *BF16)
    assert inexact not in grow_train(tmp_path / "older", "--resume", "auto", "--mixed-precision", "no", *BF16[2:])

    code, _, stderr = run_grow(["expand", tmp_path / "bf16", tmp_path / "wide", "--width-factor", 2, "--width-method",
                                "hypercloning", "-q"], capsys)  # fmt: skip
    assert code == 0, stderr
    notes = grow_train(tmp_path / "grown", "--resume", "grown", "--mixed-precision", "no", "--document-masking",
                       *BF16[2:], model=tmp_path / "wide")  # fmt: skip
    continues = "the run continues the state, not the source's exact dynamics"
    assert f"note: the grown state's run had mixed_precision 'bf16', this run 'no': {continues}" in notes
    assert f"note: the grown state's run had document_masking False, this run True: {continues}" in notes
    assert notes.count(continues) == 2  # the batch, schedule, optimizer and masking rule are the source's


def test_train_only_new_continues_a_grown_state_and_resumes_with_the_frozen_tensors_bit_identical(
    lab, tmp_path, capsys
):
    """--train-only new with --resume grown (LLaMA-Pro's recipe on a grown run): only the added layers train, every
    other tensor of the grown model comes out bit-identical (docs/training.md: frozen tensors are not in the
    optimizer), and the run paused at step 5 and resumed with --resume auto ends as the uninterrupted one, bit for
    bit."""
    source = tmp_path / "source"
    cli_train(capsys, save_tiny_lm(tmp_path / "model"), source, lab.data, "--max-steps", 4, "--save-final-state")
    code, _, stderr = run_grow(["expand", source, tmp_path / "deep", "--layers", 4, "--depth-method", "identity",
                                "-q"], capsys)  # fmt: skip
    assert code == 0, stderr
    deep, whole, parts = tmp_path / "deep", tmp_path / "whole", tmp_path / "parts"
    only_new = ("--max-steps", 3, "--resume", "grown", "--train-only", "new")
    cli_train(capsys, deep, whole, lab.data, *only_new)
    cli_train(capsys, deep, parts, lab.data, *only_new, "--exit-interval", 1)
    cli_train(capsys, deep, parts, lab.data, "--max-steps", 3, "--resume", "auto", "--train-only", "new")
    added = set(json.loads((deep / "grow.json").read_text())["stages"][-1]["added_tensors"])
    grown, trained, resumed = (load_file(folder / "model.safetensors") for folder in (deep, whole, parts))
    assert added and grown.keys() == trained.keys() == resumed.keys()
    for name in grown:
        assert torch.equal(grown[name], trained[name]) != (name in added), name
        assert torch.equal(trained[name], resumed[name]), name
    assert losses(parts) == losses(whole)
    stage = json.loads((whole / "grow.json").read_text())["stages"][-1]
    assert stage["train_only"] == "new" and stage["continued"]["start_step"] == 4


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the kernel's page accounting (smaps)")
def test_growing_the_state_keeps_one_tensors_moments_resident(lab, tmp_path, monkeypatch):
    """optimizer.bin is memory-mapped; growing its moments must give each tensor's pages back once written, or the
    whole file ends up resident (it did: 2× the fp32 model beyond the weights' one tensor). The model is wider than
    the lab's so that a tensor's moments span many pages beyond the kernel's 64 KB fault-around."""
    from test_mapped import resident

    from grow_cli.growth import grown_state

    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(tiny_config(hidden_size=256, intermediate_size=1024))
    model.save_pretrained(tmp_path / "model")
    tiny_tokenizer().save_pretrained(tmp_path / "model")
    run = tmp_path / "run"  # one step, so one warmup step (SETTINGS' two would outlast it)
    train(model=tmp_path / "model", data=[str(lab.data)], out=run, max_steps=1, warmup_steps=1, save_final_state=True)
    optimizer = (step_dir(run, 1) / "optimizer.bin").resolve()
    seen: list[int] = []

    class Watched(grown_state.ShardWriter):
        def write(self, name, data, rows=None):
            seen.append(resident(optimizer))
            return super().write(name, data, rows)

    monkeypatch.setattr(grown_state, "ShardWriter", Watched)
    expand(str(run), tmp_path / "deep", GrowthSpec(**PARTLY["identity"]), quiet=True)
    largest_pair = 2 * 4 * max(p.numel() for p in model.parameters())
    assert len(seen) > 10 and optimizer.stat().st_size > 8 * largest_pair
    assert max(seen) <= largest_pair + (2 << 20)  # one tensor's moments, plus fault-around pages of the steps read


# -- bad input: one clear line, nothing written ----------------------------------------------------------------


def damaged_checkpoint(lab: Lab, tmp_path: Path, edit) -> Path:
    copy = tmp_path / "step"
    shutil.copytree(lab.source("llama").checkpoint, copy)
    edit(copy)
    # As a checkpoint saved this way would list its files (a file changed behind the list is damage, tested in
    # test_checkpoints.py): what is tested here is the state's content.
    state_file = copy / "grow-state.json"
    state = json.loads(state_file.read_text())
    files = (p for p in sorted(copy.rglob("*")) if p.is_file() and p != state_file)
    state["files"] = {str(p.relative_to(copy)): p.stat().st_size for p in files}
    state_file.write_text(json.dumps(state))
    return copy


def _rewrite_optimizer(change):
    def edit(folder: Path) -> None:
        state = torch.load(folder / "optimizer.bin", weights_only=True)
        change(state)
        torch.save(state, folder / "optimizer.bin")

    return edit


def _sgd(state):
    for entry in state["state"].values():
        entry["momentum_buffer"] = entry.pop("exp_avg")
        del entry["exp_avg_sq"]


def _misshapen(state):
    state["state"][0]["exp_avg"] = state["state"][0]["exp_avg"][:-1]


def _fsdp(folder: Path):
    (folder / "optimizer.bin").unlink()
    (folder / "optimizer_0").mkdir()


@pytest.mark.parametrize(
    "edit, message",
    [
        (_rewrite_optimizer(_sgd), "not AdamW's step/exp_avg/exp_avg_sq"),
        (_rewrite_optimizer(_misshapen), "has shape .* but the weight has"),
        (
            _rewrite_optimizer(lambda s: s["state"].pop(0) and s["param_groups"][0]["params"].pop()),
            "parameters but the run recorded",
        ),
        (_fsdp, "FSDP/DeepSpeed sharded save"),
    ],
    ids=["another-optimizer", "wrong-shape", "missing-parameter", "fsdp"],
)
def test_a_state_that_does_not_fit_is_refused_in_one_line(lab, tmp_path, cli, edit, message):
    src = damaged_checkpoint(lab, tmp_path, edit)
    with pytest.raises(CheckpointError, match=message):
        expand(str(src), tmp_path / "out", GrowthSpec(width_method="hypercloning", width_factor=2), quiet=True)
    result = cli("expand", src, tmp_path / "out", "--width-factor", "2", "--width-method", "hypercloning")
    assert result.code != 0 and len(result.stderr.strip().splitlines()) == 1 and "--weights-only" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("key, value", [("exp_avg", float("nan")), ("exp_avg_sq", float("inf"))])
def test_moments_a_diverged_run_saved_are_refused_naming_the_tensor(lab, tmp_path, cli, key, value):
    """AdamW moments holding NaN or infinities were grown into the output's training state without a word (exit 0);
    `--resume grown` then trained NaN weights, or weights that an infinite second moment keeps from moving. Refused
    now, naming optimizer.bin, the moment and its tensor, with nothing in OUT; the weights alone still grow."""
    edit = _rewrite_optimizer(lambda s: s["state"][1][key].view(-1)[:2].fill_(value))
    src = damaged_checkpoint(lab, tmp_path, edit)
    name = json.loads((src / "grow-state.json").read_text())["parameters"][1]
    result = cli("expand", src, tmp_path / "out", "--width-factor", "2", "--width-method", "hypercloning")
    line = result.stderr.strip()
    assert result.code == 1 and "\n" not in line, result.stderr
    assert line.startswith(f"error: {src / 'optimizer.bin'}: the AdamW {key} of {name} holds 2 NaN or infinite values")
    assert line.endswith(
        "grow a checkpoint saved before the run diverged, or grow the weights only with --weights-only"
    )
    assert not (tmp_path / "out").exists()
    weights = cli(
        "expand", src, tmp_path / "out", "--width-factor", "2", "--width-method", "hypercloning", "--weights-only"
    )
    assert weights.code == 0, weights.stderr


@pytest.mark.parametrize(
    "edit",
    [lambda f: (f / "optimizer.bin").unlink(), lambda f: os.truncate(f / "optimizer.bin", 3000)],
    ids=["optimizer-missing", "optimizer-truncated"],
)
def test_weights_only_grows_a_checkpoint_whose_optimizer_is_lost(lab, tmp_path, cli, edit):
    """The refusal of a damaged optimizer state advises --weights-only; with it the weights, which are whole, grow
    (it refused again with the same advice). A damaged weights file is still refused."""
    copy = tmp_path / "step"
    shutil.copytree(lab.source("llama").checkpoint, copy)
    edit(copy)
    args = ("expand", copy, tmp_path / "out", "--layers", "4", "--weights-only")
    refused = cli(*args[:-1])
    assert refused.code != 0 and "optimizer.bin is damaged" in refused.stderr and "--weights-only" in refused.stderr
    result = cli(*args)
    assert result.code == 0, result.stderr
    assert tf.AutoConfig.from_pretrained(tmp_path / "out").num_hidden_layers == 4
    assert not (tmp_path / "out" / "training-state").exists()
    os.truncate(copy / "model.safetensors", 100)
    broken = cli("expand", copy, tmp_path / "out2", "--layers", "4", "--weights-only")
    assert broken.code != 0 and "model.safetensors is damaged" in broken.stderr
    assert len(broken.stderr.strip().splitlines()) == 1 and "--weights-only" not in broken.stderr


def test_methods_that_change_the_function_are_refused_unless_weights_only(lab, tmp_path, cli):
    checkpoint = lab.source("llama").checkpoint
    for flags in (["--layers", "4", "--depth-method", "stack"], ["--width-factor", "2", "--width-method", "aki"]):
        result = cli("expand", checkpoint, tmp_path / "out", *flags)
        assert (
            result.code == 2 and "changes the model's function" in result.stderr and "--weights-only" in result.stderr
        )
        assert not (tmp_path / "out").exists()
    with pytest.raises(UsageError, match="copy some units of it more often"):
        expand(str(checkpoint), None, GrowthSpec(width_method="fpi", hidden_size=48), dry_run=True)
    report = expand(str(checkpoint), tmp_path / "w", GrowthSpec(layers=4, depth_method="stack", weights_only=True))
    assert report["training_state"] is None and not (tmp_path / "w" / "training-state").exists()


@pytest.mark.parametrize(
    "flags, why",
    [
        (["--layer-map", "0-1,1"], "its repeats are plain copies"),
        (["--layer-map", "1,0,0", "--identity-repeats"], "its originals are out of order (layer 1 before layer 0)"),
        (["--layer-map", "0,0,0", "--identity-repeats"], "it leaves out source 1 layer: 1"),  # seen against the source
    ],
)
def test_a_layer_map_that_changes_the_function_is_refused_with_its_state_and_grows_its_weights_alone(
    lab, tmp_path, cli, flags, why
):
    """A layer map carries the state on only where it keeps the function (the `layer-map` case above): any other is
    refused in one line naming --weights-only, nothing written; with it, the weights grow by the map."""
    checkpoint, out = lab.source("llama").checkpoint, tmp_path / "out"
    result = cli("expand", checkpoint, out, *flags)
    assert result.code == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"layer map {flags[1]} changes the model's function ({why}" in result.stderr, result.stderr
    assert "--weights-only" in result.stderr
    assert not out.exists()
    result = cli("expand", checkpoint, out, *flags, "--weights-only", "-q")
    assert result.code == 0 and not (out / "training-state").exists(), result.stderr


MERGEKIT = """
merge_method: passthrough
slices:
  - sources: [{{model: {model}, layer_range: [0, 2]}}]
  - sources: [{{model: {model}, layer_range: [0, 2]}}]
    parameters:
      scale: [{{filter: o_proj, value: 0}}, {{filter: down_proj, value: 0}}, {{value: 1}}]
"""


def test_a_mergekit_config_of_the_exact_map_grows_the_same_state_and_one_of_a_plain_repeat_is_refused(lab, tmp_path):
    """The mergekit spelling of the `layer-map` case (its copies' residual writers scaled by 0) grows the same
    training state, moments bit for bit; without the scale filters its copies are plain repeats: refused."""
    checkpoint = lab.source("llama").checkpoint
    config = tmp_path / "exact.yml"
    config.write_text(MERGEKIT.format(model=checkpoint))
    expand(str(checkpoint), tmp_path / "mk", GrowthSpec(mergekit_config=str(config)), quiet=True)
    mapped = lab.grown("llama", "layer-map", **PARTLY["layer-map"])
    ours, theirs = (json.loads((f / "training-state" / "state.json").read_text()) for f in (tmp_path / "mk", mapped))
    assert ours["parameters"] == theirs["parameters"] and ours["dynamics"] == theirs["dynamics"]
    assert any(p["moments"] == "fresh" for p in ours["parameters"].values())  # the copies' tensors
    a, b = (load_file(f / "training-state" / "model.safetensors") for f in (tmp_path / "mk", mapped))
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    plain = tmp_path / "plain.yml"
    plain.write_text(MERGEKIT.format(model=checkpoint).split("    parameters:")[0])
    with pytest.raises(OptionError, match=r"layer map 0-1,0-1 changes .* \(its repeats are plain copies.*weights-only"):
        expand(str(checkpoint), tmp_path / "plain", GrowthSpec(mergekit_config=str(plain)), quiet=True)
    assert not (tmp_path / "plain").exists()


def test_upcycling_a_checkpoint_is_refused_with_its_state_and_upcycles_its_weights_alone(lab, tmp_path, cli):
    """Upcycling keeps the function but not a copy count: each expert's gradient is the dense MLP's weighed per token
    by its renormalised router weight, which no moment scaling follows. Growing a checkpoint into experts is one line
    naming --weights-only, with nothing written; with it, the weights upcycle and no state is written."""
    checkpoint, out = lab.source("llama").checkpoint, tmp_path / "moe"
    result = cli("expand", checkpoint, out, "--experts", "4", "--top-k", "2")
    lines = result.stderr.strip().splitlines()
    assert result.code == 2 and len(lines) == 1 and "renormalised top-k" in lines[0] and "--weights-only" in lines[0]
    assert not out.exists()
    result = cli("expand", checkpoint, out, "--experts", "4", "--top-k", "2", "--weights-only", "-q")
    assert result.code == 0, result.stderr
    assert tf.AutoConfig.from_pretrained(out).num_local_experts == 4 and not (out / "training-state").exists()


def test_resume_grown_refuses_what_it_cannot_continue(lab, tmp_path):
    source = lab.source("llama")
    with pytest.raises(UsageError, match="has no grown training state"):
        train(model=source.model, data=[str(lab.data)], out=tmp_path / "a", max_steps=2, resume="grown")
    grown = lab.grown("llama", "hypercloning", **EXACT["hypercloning"])
    with pytest.raises(UsageError, match="lies beyond the grown state's step"):
        train(model=grown, data=[str(lab.data)], out=tmp_path / "b", max_steps=2, resume="grown", schedule_offset=N + 1)
    with pytest.raises(UsageError, match="add --resume grown"):
        train(model=grown, data=[str(lab.data)], out=tmp_path / "c", max_steps=2, schedule_offset="auto")
    under_way = tmp_path / "under-way"  # a run's --out with its checkpoints: continued by --resume auto, not replaced
    shutil.copytree(source.out, under_way)
    with pytest.raises(OutputError, match="already holds checkpoints of a run under way; continue it with --resume"):
        train(model=grown, data=[str(lab.data)], out=under_way, max_steps=2, resume="grown")
    files = {folder: {p.relative_to(folder) for p in folder.rglob("*")} for folder in (source.out, under_way)}
    assert files[under_way] == files[source.out]  # nothing written into it
    with pytest.raises(OptionError, match="changes the model's function"):
        expand(str(source.checkpoint), None, GrowthSpec(layers=4, depth_method="stack"), dry_run=True)


def test_resume_grown_killed_before_its_first_checkpoint_starts_again_with_its_own_command(lab, tmp_path):
    """A `--resume grown` run killed (SIGKILL, the OOM killer) before its first checkpoint leaves metrics.jsonl and a
    half-saved checkpoint in --out. Run again, the same command was refused ("pass --resume auto to continue it"),
    and --resume auto, finding no checkpoint, then started a fresh optimizer at step 0 with the size rule's LR: the
    grown state the run was meant to continue was dropped without a word. It starts again, as --resume auto starts
    a fresh run again after such a kill, from the grown state."""
    grown = lab.grown("llama", "hypercloning", **EXACT["hypercloning"])
    out = tmp_path / "killed"
    step_dir(out, N + 1).mkdir(parents=True)  # half-saved: no grow-state.json
    (out / "metrics.jsonl").write_text(json.dumps({"step": N + 1, "loss": 5.0, "lr": 3e-3, "tokens": 256}) + "\n")
    result = train(model=grown, data=[str(lab.data)], out=out, max_steps=2, resume="grown")
    assert (result["end_step"], result["max_lr"]) == (N + 2, SETTINGS["max_lr"])
    assert [m["step"] for m in read_metrics(out / "metrics.jsonl") if "loss" in m] == [N + 1, N + 2]
    assert not step_dir(out, N + 1).exists()


def test_a_sharded_engine_is_refused_before_the_model_loads_where_the_state_must_be_whole(tmp_path):
    """FSDP and DeepSpeed save the optimizer sharded, and a sharded save is refused by grow expand, so
    --save-final-state under them would end a run with a state nobody can grow; --resume grown would shard a state
    loaded whole. Both are refused as the run starts (tests/test_deepspeed_cpu.py: for real, under DeepSpeed);
    one process and DDP (engine None) go on."""
    from types import SimpleNamespace

    from grow_cli.train.continuation import check_whole_state

    final = TrainConfig(model="m", data=["d"], out=str(tmp_path / "o"), max_steps=2, save_final_state=True)
    plain = TrainConfig(model="m", data=["d"], out=str(tmp_path / "o"), max_steps=2)
    grown = SimpleNamespace(load_from=tmp_path / "training-state")
    with pytest.raises(UsageError, match="--save-final-state .* DEEPSPEED saves it sharded"):
        check_whole_state(final, None, "DEEPSPEED")
    with pytest.raises(UsageError, match="--resume grown loads .* which FSDP would shard"):
        check_whole_state(plain, grown, "FSDP")
    check_whole_state(final, grown, None)
    check_whole_state(plain, SimpleNamespace(load_from=None), "FSDP")  # a continuation that loads no state


def test_resume_grown_takes_the_source_runs_peak_lr_and_notes_each_setting_that_differs(lab, tmp_path, capsys):
    """--max-lr auto, the default, continues a grown state at its source run's peak LR (3e-3 here; the size rule gives
    this model 1.5e-3): the multipliers already carry the size change. grow.json says where the LR came from (it
    named the size rule), and each setting in which the run differs from the source's is a note."""
    from grow_cli.train.lr_rule import auto_max_lr

    grown = lab.grown("llama", "hypercloning", **EXACT["hypercloning"])
    out = tmp_path / "run"
    args = ["train-stage", grown, "--data", lab.data, "--out", out, "--resume", "grown", "--max-steps", 2]
    code, stdout, stderr = run_grow([*args, "--seq-len", 32, "--micro-batch-size", 4, "--json"], capsys)
    assert code == 0, stderr
    result = json.loads(stdout)
    assert json_output_problems("`grow train-stage`", result) == []
    assert result["max_lr"] == SETTINGS["max_lr"] != auto_max_lr(result["num_parameters"])
    stage = json.loads((out / "grow.json").read_text())["stages"][-1]
    assert stage["max_lr"] == SETTINGS["max_lr"] and stage["max_lr_rule"] == "the grown training state's run"
    notes = " ".join(stderr.split())
    assert "max LR 0.003 (--max-lr auto: the grown training state's run)" in notes
    continues = "the run continues the state, not the source's exact dynamics"
    assert f"note: the grown state's run had global_batch 8, this run 4: {continues}" in notes
    assert f"note: the grown state's run had grad_clip 0.0, this run 1.0: {continues}" in notes
    # the default 1% warmup of this 8-step horizon is not the source's 2 steps, which every later LR follows
    assert f"note: the grown state's run had warmup_steps 2, this run 1: {continues}" in notes
    assert notes.count(continues) == 3  # seq_len, seed, schedule, LR floor and the betas are the source's


def test_resume_grown_at_another_peak_lr_than_the_sources_is_a_note(lab):
    """A --max-lr given that is not the source run's peak scales every step the grown moments were made for: a note
    (it was taken without one, while another batch or clipping got one); the source's own value, none."""
    from types import SimpleNamespace

    from grow_cli.train.continuation import differences
    from grow_cli.train.schedule import Schedule

    grown = lab.grown("llama", "hypercloning", **EXACT["hypercloning"])
    source_run = json.loads((grown / "training-state" / "state.json").read_text())["source"]
    config = SimpleNamespace(
        seed=0, schedule="cosine", beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=0.0, seq_len=32
    )
    schedule = Schedule("cosine", N + MORE, SETTINGS["warmup_steps"])
    this_run = {"global_batch": source_run["run"]["global_batch"], "mixed_precision": "no", "objective": None}
    this_run |= {"schedule": schedule}
    assert differences(grown / "training-state", config, {**this_run, "max_lr": SETTINGS["max_lr"]}) == []
    said = differences(grown / "training-state", config, {**this_run, "max_lr": 1e-3})
    assert said == ["the grown state's run had max_lr 0.003, this run 0.001"]
    other = replace(schedule, warmup_steps=1, min_lr_ratio=0.0)  # the same horizon: only these move the LR
    said = differences(grown / "training-state", config, {**this_run, "max_lr": SETTINGS["max_lr"], "schedule": other})
    assert said == [
        "the grown state's run had warmup_steps 2, this run 1",
        "the grown state's run had min_lr_ratio 0.1, this run 0.0",
    ]


def test_resume_grown_in_another_data_order_reads_it_from_its_first_block(lab, tmp_path, capsys):
    """The source's `data_blocks` count blocks of its own order (data, seq_len, seed): another seq_len makes
    another permutation, where skipping that many blocks would skip unread data and re-read the source's. Such a run
    reads its order from the first block and says so; the same order reads on after the source's blocks."""
    grown = lab.grown("llama", "hypercloning", **EXACT["hypercloning"])
    state = json.loads((grown / "training-state" / "state.json").read_text())

    def blocks(name: str, **settings) -> int:
        train(model=grown, data=[str(lab.data)], out=tmp_path / name, max_steps=2, resume="grown", **settings)
        return json.loads((tmp_path / name / "grow.json").read_text())["stages"][-1]["data_blocks"]

    assert blocks("same") == state["data_blocks"] + 2 * SETTINGS["micro_batch_size"]
    capsys.readouterr()
    assert blocks("other", seq_len=16, quiet=False) == 2 * SETTINGS["micro_batch_size"]
    assert "another data order" in capsys.readouterr().err


def test_resume_grown_refuses_a_model_edited_to_fewer_layers_than_its_state(lab, tmp_path):
    """A grown folder whose config.json was cut to fewer layers after growth loads (transformers drops the extra
    weights) but is not the model the state was grown for: refused, as a state missing a parameter is (it trained),
    now before the state is read, as any model folder whose checkpoint stores layers past its config's count is."""
    edited = tmp_path / "edited"
    shutil.copytree(lab.grown("llama", "hypercloning", **EXACT["hypercloning"]), edited)
    config = json.loads((edited / "config.json").read_text())
    (edited / "config.json").write_text(json.dumps({**config, "num_hidden_layers": config["num_hidden_layers"] - 1}))
    with pytest.raises(CheckpointError, match="tensor model.layers.1.* belongs to layer 1 but .*config.json says 1"):
        train(model=edited, data=[str(lab.data)], out=tmp_path / "run", max_steps=1, resume="grown")
    assert not (tmp_path / "run").exists()  # refused after --out was made: no empty folder is left


def test_growing_a_grown_folder_again_says_its_state_is_not_carried(lab, tmp_path):
    """A grown folder's training-state/ is grown only through a continued run's checkpoint: growing the folder
    itself again writes weights only, and now says so instead of dropping the state silently."""
    report = expand(str(lab.grown("llama", "fpi", **EXACT["fpi"])), tmp_path / "again", GrowthSpec(layers=8))
    assert report["training_state"] is None and not (tmp_path / "again" / "training-state").exists()
    assert any(note.startswith("training-state/ (a grown training state that has not") for note in report["notes"])
    plain = expand(str(lab.source("llama").model), tmp_path / "plain", GrowthSpec(layers=8))
    assert not any("training-state" in note for note in plain["notes"])  # the control: a folder without one


def test_a_damaged_grown_state_is_named_as_the_state_not_the_model(lab, tmp_path):
    """A cut `training-state/model.safetensors` (the moments) was reported as "model.safetensors is corrupted…",
    which reads as the model's own weights; the line now says it is the grown training state's."""
    damaged = tmp_path / "damaged"
    shutil.copytree(lab.grown("llama", "hypercloning", **EXACT["hypercloning"]), damaged)
    moments = damaged / "training-state" / "model.safetensors"
    moments.write_bytes(moments.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"^the grown training state in .*training-state: model.safetensors is"):
        train(model=damaged, data=[str(lab.data)], out=tmp_path / "run", max_steps=1, resume="grown")


@pytest.mark.parametrize("case", ["fpi", "identity"])
def test_the_dry_run_reports_the_peak_of_growing_the_moments(lab, case):
    """Growing a run peaks while its moments grow (both source moments of a tensor, its scaled result and, for width,
    the gathers), above the weights' stream; the dry-run reports that peak, the one `require_memory` refuses by (it
    reported the weights' alone)."""
    from grow_cli.checkpoint.dtypes import numel
    from grow_cli.growth import expand as executor
    from grow_cli.growth.grown_state import peak_bytes as state_peak

    checkpoint = lab.source("llama").checkpoint
    spec = GrowthSpec(**{**EXACT, **PARTLY}[case])
    report = expand(str(checkpoint), None, spec, dry_run=True)
    assert json_output_problems("`grow expand --dry-run`", report) == []  # a checkpoint's source, a training state
    with executor.training_source(executor.resolve_source(str(checkpoint)), weights_only=False) as (src, state):
        with CheckpointReader(src.folder) as reader:
            plan, grown, _ = executor._plan(load_config(src.folder), reader, spec, state, checkpoint=True)
    carried = [t for t, s in zip(plan.tensors, grown.tensors, strict=True) if s.carried]
    largest = max(4 * numel(t.shape) for t in carried)  # fp32 moments
    assert state_peak(plan, grown) >= 3 * largest  # two moments and a result, at least
    assert report["estimated_peak_memory_bytes"] == max(plan.peak_bytes, state_peak(plan, grown))


@pytest.mark.parametrize("case", ["fpi", "identity"])
def test_the_moments_are_scaled_and_gathered_into_reused_buffers(lab, case, tmp_path, monkeypatch):
    """Each scaled moment is written from one reused buffer, and a width growth lays both moments of a tensor out in
    the same gather buffers (`grown_state.peak_bytes` counts one set): a fresh result per moment, freed one after
    another, fragment the heap glibc keeps."""
    from grow_cli.growth import grown_state
    from grow_cli.operators.width import WidthOperator

    written, laid = [], {}

    class Recording(grown_state.ShardWriter):
        def write(self, name, data, rows=None):
            written.append(data)  # kept alive: fresh results could not share an address
            return super().write(name, data, rows)

    layout = WidthOperator.state_layout

    def recorded_layout(self, tensor, x, tag):
        out = layout(self, tensor, x, tag)
        laid.setdefault(tensor.name, []).append(out)
        return out

    monkeypatch.setattr(grown_state, "ShardWriter", Recording)
    monkeypatch.setattr(WidthOperator, "state_layout", recorded_layout)
    spec = GrowthSpec(**{**EXACT, **PARTLY}[case])
    expand(str(lab.source("llama").checkpoint), tmp_path / "out", spec, quiet=True)
    assert len(written) > 2
    assert len({t.values.ctypes.data for t in written}) == 1
    if case == "fpi":
        assert laid and all(len(both) == 2 for both in laid.values())
        assert all(m.ctypes.data == v.ctypes.data for m, v in laid.values())


@pytest.mark.parametrize("case", ["fpi", "identity"])
def test_moments_grown_a_block_of_rows_at_a_time_are_the_same_bytes(lab, case, tmp_path, monkeypatch):
    """The moments of a tensor whose rows come from the same source rows (every tensor under depth growth, the
    embedding and an untied head under width) are grown a block of rows at a time (`grown_state.moment_blocks`), so
    that an embedding's moments are never resident whole: the grown state is the same bytes as grown whole, and the
    estimate counts the blocks. Blocks of a few rows here, against 32 MB in a real run."""
    from grow_cli.checkpoint.files import TRAINING_STATE_DIR
    from grow_cli.growth import grown_state
    from grow_cli.growth import plan as planning

    spec = GrowthSpec(**{**EXACT, **PARTLY}[case])
    checkpoint = lab.source("llama").checkpoint
    expand(str(checkpoint), tmp_path / "whole", spec, quiet=True)
    rows, real = [], grown_state.ShardWriter.write
    monkeypatch.setattr(
        grown_state.ShardWriter, "write", lambda self, name, data, r=None: rows.append(r) or real(self, name, data, r)
    )
    monkeypatch.setattr(planning, "BLOCK_BYTES", 7 * 4 * 64)  # 7 rows of a 64-wide tensor
    expand(str(checkpoint), tmp_path / "blocked", spec, quiet=True)
    assert any(rows) and None in rows  # the embedding in blocks, a layer's widened tensors whole (width)
    state = sorted((tmp_path / "whole" / TRAINING_STATE_DIR).iterdir())
    assert state and [p.name for p in state] == [
        p.name for p in sorted((tmp_path / "blocked" / TRAINING_STATE_DIR).iterdir())
    ]
    for path in state:
        assert path.read_bytes() == (tmp_path / "blocked" / TRAINING_STATE_DIR / path.name).read_bytes(), path.name


def test_an_older_checkpoint_without_its_parameter_order_is_rebuilt_or_refused(lab, tmp_path, capsys):
    """A checkpoint of grow before it recorded the optimizer's parameter order (`parameters` in grow-state.json) has
    the order rebuilt from the model: the same as recorded for the added layers --train-only new trains. An MoE's
    added experts are saved under names the model renames on load; the rebuild dropped them silently (then refused
    the optimizer as not the model's, a wrong cause): it names the tensor and says to grow the weights alone."""
    from grow_cli.growth.train_state import _parameter_names

    dense, moe = tmp_path / "dense", tmp_path / "moe"
    save_tiny_lm(dense)
    expand(str(dense), tmp_path / "deep", GrowthSpec(layers=4, depth_method="identity"), quiet=True)
    expand(str(dense), moe, GrowthSpec(experts=4, top_k=2, layers=4, depth_method="identity"), quiet=True)
    for model in (tmp_path / "deep", moe):
        cli_train(capsys, model, tmp_path / f"{model.name}-run", lab.data, "--max-steps", 2, "--save-every", 1,
                  "--train-only", "new")  # fmt: skip
    for model in (tmp_path / "deep", moe):
        state = json.loads((step_dir(tmp_path / f"{model.name}-run", 1) / "grow-state.json").read_text())
        older = {k: v for k, v in state.items() if k != "parameters"}
        if model == moe:
            with pytest.raises(CheckpointError, match=r"block_sparse_moe.*under another name.*--weights-only"):
                _parameter_names(older, model)
        else:
            assert _parameter_names(older, model) == state["parameters"]
