"""grow and the Hugging Face Hub: push a finished output folder, download a checkpoint by `org/name`.

- `push_folder` (push.py): checks the folder, creates the repo and branch, refreshes the model card with the repo
  id, uploads through `huggingface_hub.upload_folder` (LFS/xet for large files; re-running resumes).
- `download_checkpoint` (download.py): fetches config, one weight format, tokenizer and small files into the
  standard cache; honours `HF_HUB_OFFLINE`.
- headers.py: a Hub id's config.json and shard headers by HTTP ranges, without its weights (`grow inspect`,
  `grow expand --dry-run`, `grow family --check`).
- client.py: endpoint, offline mode, token resolution and the single translation of client errors to HubError.
- network.py: every wait of a read from the Hub bounded by HF_HUB_ETAG_TIMEOUT / HF_HUB_DOWNLOAD_TIMEOUT, and transient
  failures (5xx, a reset connection, a timeout) tried again at most GROW_HUB_RETRIES times.
"""

from grow_cli.hub.download import download_checkpoint
from grow_cli.hub.push import check_complete, push_folder

__all__ = ["check_complete", "download_checkpoint", "push_folder"]
