"""Width growth of a definition with *config spaces* (DeepSeek's multi-head latent attention; see
grow_cli/arch/registry.py): grow's width maps have no rule that changes a config space, so each is copied as it is —
an identity map, exact — and every config key that sizes one keeps its value. A width role whose key is among them
(DeepSeek's heads: the `num_attention_heads` of mla_q, mla_kv and mla_o) does not follow the hidden size or
`--width-factor`; a flag that would change it is refused in one line before anything is written.
"""

from __future__ import annotations

from grow_cli.arch.registry import ArchDef
from grow_cli.errors import OptionError
from grow_cli.field_types import flag


def kept_roles(arch: ArchDef) -> set[str]:
    """grow's width roles (hidden, ffn, heads, …) whose config key also sizes one of the definition's config spaces:
    width growth has no map that changes a config space, so these keep their values."""
    return {role for role, key in arch.config.items() if key in arch.config_space_keys}


# the GrowthSpec field (and flag) that sets each width role
_ROLE_FIELDS = {
    "hidden": "hidden_size",
    "ffn": "intermediate_size",
    "heads": "num_heads",
    "kv_heads": "num_kv_heads",
    "expert_ffn": "intermediate_size",
    "shared_ffn": "intermediate_size",
}


def refuse_config_space_changes(arch: ArchDef, changes: dict[str, tuple[int, int]]) -> None:
    """A width target that would change a config key sizing a config space (DeepSeek's num_attention_heads) is one
    OptionError naming the keys, before anything is written: width growth maps a config space only as it is."""
    changed = [(role, old, new) for role, (old, new) in changes.items() if role in kept_roles(arch) and old != new]
    if not changed:
        return
    spaces = arch.config_space_keys
    what = "; ".join(
        f"{arch.config[role]} {old} → {new} (it sizes {', '.join(spaces[arch.config[role]])})"
        for role, old, new in changed
    )
    fields = list(dict.fromkeys(_ROLE_FIELDS[role] for role, _, _ in changed))
    raise OptionError(
        fields[0],
        f"width growth of {arch.name} keeps every key of its config spaces, but this target would change {what}; "
        f"drop {', '.join(flag(f) for f in fields)} (the hidden size and FFNs grow with them kept), or grow in "
        "depth",
    )
