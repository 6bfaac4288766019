"""Text and tokens for training and comparison: files behind --data (`sources`, the folders and globs they name
walked by `walk`, JSON Lines read by `json_lines`, a file's first bytes judged by `file_head`) and the Hub dataset
they were downloaded from (`hub_origin`), tokenize/cache/pack/split (`tokens`), step-indexed data order (`batches`),
a masked LM's corruption (`masking`, its settings in `masking_settings`), and real English text that installs
offline (`corpus`).
`probe.txt` holds the probe text of `grow expand --verify`."""
