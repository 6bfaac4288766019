"""The strict safetensors header validator: every hostile header is refused — by the reader, `grow expand`,
`grow inspect` and `grow push`'s check — with one line naming the file; valid files, however laid out, pass."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from grow_cli.checkpoint.header import read_safetensors_header
from grow_cli.errors import CheckpointError
from grow_cli.hub.push import check_complete


def _pack(header: bytes | dict, data: bytes) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


def _f32(begin: int, end: int, shape: list | None = None, dtype: object = "F32") -> dict:
    return {"dtype": dtype, "shape": [(end - begin) // 4] if shape is None else shape, "data_offsets": [begin, end]}


# (name, header, data section, words the one line must contain)
HOSTILE = [
    ("overlap", {"a": _f32(0, 16), "b": _f32(8, 24)}, bytes(24), ["overlap", "'a'", "'b'"]),
    (
        "duplicate",
        b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}',
        bytes(8),
        ["'a' twice"],
    ),
    (
        # The repeated key would win silently in plain JSON, and the second copy even tiles the data correctly.
        "duplicate-shadowing",
        b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
        b'"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}',
        bytes(16),
        ["'a' twice"],
    ),
    ("gap", {"a": _f32(0, 8), "b": _f32(16, 24)}, bytes(24), ["gap", "'b'"]),
    ("not-from-zero", {"a": _f32(8, 16)}, bytes(16), ["gap"]),
    ("trailing-bytes", {"a": _f32(0, 8)}, bytes(24), ["16 bytes after the last tensor"]),
    ("truncated", {"a": _f32(0, 8), "b": _f32(8, 64)}, bytes(40), ["truncated", "'b'"]),
    ("dtype-number", {"a": _f32(0, 8, dtype=5)}, bytes(8), ["dtype 5", "expected a string"]),
    ("dtype-unknown", {"a": _f32(0, 8, dtype="F128")}, bytes(8), ["'F128'", "does not read"]),
    (
        "dtype-not-read",
        {"a": {"dtype": "F8_E8M0", "shape": [8], "data_offsets": [0, 8]}},
        bytes(8),
        ["'F8_E8M0'", "does not read"],
    ),
    ("shape-string", {"a": _f32(0, 8, shape="2")}, bytes(8), ["shape '2'"]),
    ("shape-negative", {"a": _f32(0, 8, shape=[-2])}, bytes(8), ["shape [-2]"]),
    ("shape-bool", {"a": _f32(0, 8, shape=[True, 2])}, bytes(8), ["shape [True, 2]"]),
    ("offsets-strings", {"a": {"dtype": "F32", "shape": [2], "data_offsets": ["0", "8"]}}, bytes(8), ["data_offsets"]),
    ("offsets-three", {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 9]}}, bytes(8), ["data_offsets"]),
    ("offsets-null", {"a": {"dtype": "F32", "shape": [2], "data_offsets": None}}, bytes(8), ["data_offsets None"]),
    ("offsets-backwards", {"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, bytes(8), ["inconsistent"]),
    ("size-mismatch", {"a": _f32(0, 8, shape=[3])}, bytes(8), ["inconsistent offsets"]),
    ("entry-not-object", {"a": [0, 8]}, bytes(8), ["no dtype/shape/data_offsets"]),
    ("metadata-numbers", {"__metadata__": {"format": 1}, "a": _f32(0, 8)}, bytes(8), ["__metadata__"]),
    ("header-list", b"[1, 2]", b"", ["not a JSON object"]),
    ("header-not-json", b"{not json", b"", ["not valid JSON"]),
    ("header-not-utf8", b'{"\xff\xfe": 1}', b"", ["not valid JSON"]),
    ("header-deeply-nested", b"[" * 100_000 + b"]" * 100_000, b"", ["not valid JSON"]),
]
# Refused by grow, accepted by safetensors 0.8: a repeated tensor name (serde keeps the last copy), and a dtype that
# safetensors knows but grow's readers do not.
STRICTER_THAN_THE_LIBRARY = {"duplicate", "duplicate-shadowing", "dtype-not-read"}


@pytest.mark.parametrize("name,header,data,words", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_header_is_refused_and_safetensors_agrees(tmp_path, name, header, data, words):
    path = tmp_path / "model.safetensors"
    path.write_bytes(_pack(header, data))
    with pytest.raises(CheckpointError) as info:
        read_safetensors_header(path)
    message = str(info.value)
    assert message.startswith("model.safetensors") and "\n" not in message
    for word in words:
        assert word in message, message
    if name in STRICTER_THAN_THE_LIBRARY:
        safe_open(str(path), "pt").keys()  # the library lets the last copy win; grow refuses the ambiguity
    else:
        with pytest.raises(Exception):  # noqa: B017 - the library's own verdict, whatever its exception type
            safe_open(str(path), "pt").keys()


def test_header_length_beyond_the_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 10**6) + b"{}")
    with pytest.raises(CheckpointError, match="header claims 1,000,000 bytes but the file has 10"):
        read_safetensors_header(path)


def _one_tensor_model(folder, header, data):
    """A checkpoint folder whose single weight file carries `header`: the sources the CLI tests grow and inspect."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "model.safetensors").write_bytes(_pack(header, data))
    return folder


@pytest.mark.parametrize("command", ["expand", "inspect"])
@pytest.mark.parametrize("case", ["overlap", "duplicate-shadowing", "dtype-number", "offsets-strings"])
def test_cli_names_the_damaged_file_in_one_line(cli, tmp_path, command, case):
    _, header, data, words = next(h for h in HOSTILE if h[0] == case)
    src = _one_tensor_model(tmp_path / "src", header, data)
    out = tmp_path / "out"
    args = ("expand", src, out, "--layers", "8") if command == "expand" else ("inspect", src)
    result = cli(*args)
    lines = result.stderr.strip().splitlines()
    assert result.code == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: model.safetensors") and "--debug" not in lines[0]
    assert all(word in lines[0] for word in words)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_push_check_uses_the_same_validator(tmp_path):
    _, header, data, _ = next(h for h in HOSTILE if h[0] == "overlap")
    folder = _one_tensor_model(tmp_path / "grown", header, data)
    with pytest.raises(CheckpointError, match="overlap"):
        check_complete(folder)


@settings(max_examples=30, deadline=None)
@given(
    shapes=st.lists(st.lists(st.integers(0, 5), min_size=0, max_size=3), min_size=1, max_size=6),
    dtypes=st.lists(st.sampled_from([torch.float32, torch.bfloat16, torch.int64, torch.uint8]), min_size=6),
)
def test_every_file_safetensors_writes_is_accepted_exactly(tmp_path_factory, shapes, dtypes):
    """The positive control: whatever the library writes (any order, empty tensors, scalars) passes, and each entry's
    byte range is the one the library reads the tensor from."""
    path = tmp_path_factory.mktemp("valid") / "model.safetensors"
    tensors = {
        f"t{i}": torch.arange(max(1, torch.Size(s).numel()))[: torch.Size(s).numel()].reshape(s).to(dtypes[i])
        for i, s in enumerate(shapes)
    }
    save_file(tensors, path)
    entries, metadata = read_safetensors_header(path)
    assert entries.keys() == tensors.keys()
    raw = path.read_bytes()
    for name, tensor in tensors.items():
        e = entries[name]
        assert e.shape == tuple(tensor.shape) and e.end - e.start == tensor.numel() * tensor.element_size()
        assert raw[e.start : e.end] == tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
