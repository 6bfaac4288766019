"""`grow train-stage`: continued pretraining of a (grown) Hugging Face model folder with accelerate.

The pieces, in the order a run uses them: `config` (the settings), `sources` (files behind --data), `tokens`
(tokenize, cache, pack, split), `model_io` (checks and loading), `freeze` (--train-only new), `lr_rule`
(--max-lr auto), `schedule` (LR shapes), `batches` (step-indexed data order), `checkpoints` (save/resume),
`metrics` (FLOPs, MFU, metrics file, progress) and `loop` (the training loop itself).
Import `train_stage` from `grow_cli.train.loop`; this package keeps its own imports light.
"""
