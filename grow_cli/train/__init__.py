"""`grow train-stage`: continued pretraining of a (grown) Hugging Face model folder with accelerate.

The pieces, in the order a run uses them: `config` (the settings), `preflight` (every check before anything is
built, with `model_io`, `freeze` and `checkpoints`), `build` (accelerator, data, model, optimizer with `lr_rule` and
`schedule`, `prepare`, resume), `loop` (`train_stage` and the loop) with `step` (one optimizer step, the loss of a
micro-batch, evaluation), and `finish` (the model, grow.json, the card); `flops` holds FLOPs per token and
`metrics` MFU, the metrics file and the progress bar. The data side (sources, tokens, batches) lives in
`grow_cli.data`. Import `train_stage` from `grow_cli.train.loop`; this package keeps its own imports light.
"""
