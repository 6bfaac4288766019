"""`grow inspect` as a library call: what a checkpoint is, read from config.json and the shard headers only."""

from __future__ import annotations

from typing import Any

from grow_cli.checkpoint.dtypes import numel
from grow_cli.checkpoint.reader import CheckpointReader, load_config
from grow_cli.checkpoint.source import resolve_source
from grow_cli.growth.plan import source_shape_of
from grow_cli.operators.depth import METHODS as DEPTH_METHODS

WIDTH_METHODS = ("fpi", "aki", "hypercloning", "zero")


def applicable_methods(arch) -> dict[str, list[dict[str, Any]]]:
    """Which growth methods apply to `arch`, with a reason where one does not."""
    depth = []
    for method in DEPTH_METHODS:
        entry: dict[str, Any] = {"method": method, "applies": True}
        if method == "identity" and not arch.identity_exact:
            entry = {"method": method, "applies": False, "why": arch.identity_refusal}
        depth.append(entry)
    width = [{"method": m, "applies": True} for m in WIDTH_METHODS]
    return {"depth": depth, "width": width}


def inspect(source: str, *, revision: str | None = None, token: str | None = None) -> dict[str, Any]:
    """Describe the checkpoint `source` (folder or Hub id) without reading any tensor data."""
    src = resolve_source(source, revision=revision, token=token)
    config = load_config(src.folder)
    with CheckpointReader(src.folder) as reader:
        infos = reader.tensor_infos()
        arch, shape, binding = source_shape_of(config, infos)
        files = [{"name": p.name, "bytes": p.stat().st_size} for p in reader.files]
        fmt = reader.format
    bound = binding.all_tensors()
    dtypes: dict[str, int] = {}
    for t in bound:
        dtypes[t.dtype] = dtypes.get(t.dtype, 0) + 1
    params = sum(numel(t.shape) for t in bound)
    return {
        "source": src.describe(),
        "folder": str(src.folder),
        "architecture": arch.name,
        "description": arch.description,
        "model_type": config.get("model_type"),
        "num_parameters": params,
        **shape.as_dict(),
        "norm": f"{arch.norm} ({arch.residual.replace('_', '-')})",
        "positions": arch.positions,
        "dtypes": dtypes,
        "format": fmt,
        "files": files,
        "tensors": len(bound),
        "not_read": [{"name": n, "why": why} for n, why in binding.dropped],
        "methods": applicable_methods(arch),
    }
