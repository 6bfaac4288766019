"""`grow train-stage`: continued pretraining of a (grown) Hugging Face model folder with accelerate.

The pieces, in the order a run uses them: `config` (the settings), `model_io` (checks and loading), `freeze`
(--train-only new), `lr_rule` (--max-lr auto), `schedule` (LR shapes), `checkpoints` (save/resume), `flops`
(FLOPs per token), `metrics` (MFU, metrics file, progress) and `loop` (the training loop itself); the data side
(sources, tokens, batches) lives in `grow_cli.data`. Import `train_stage` from `grow_cli.train.loop`; this package
keeps its own imports light.
"""
