"""Read an offline W&B run file (``run-*.wandb``) back, for tests.

wandb >= 0.2x writes runs from its Go core and no longer ships a Python reader, so this reads the
documented record log directly: a 7-byte header (``:W&B``, magic 0xBEE1, version 0) then 32 KiB
blocks of LevelDB-log records (crc32 4, length 2, type 1: full/first/middle/last), each a
``wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0
            continue
        if kind == FULL:
            pending = chunk
        elif kind == FIRST:
            pending = chunk
            continue
        elif kind == MIDDLE:
            pending += chunk
            continue
        elif kind == LAST:
            pending += chunk
        rec = pb.Record()
        rec.ParseFromString(pending)
        pending = b""
        yield rec


def read_run(run_dir: Path) -> dict:
    """{"history": [dict per step], "config": {key: value}, "summary": {...}, "artifacts": [logged artifacts]} of an
    offline run folder."""
    (path,) = list(Path(run_dir).glob("*.wandb"))
    history, config, summary, artifacts = [], {}, {}, []
    for rec in records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            row = {}
            for item in rec.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            history.append(row)
        elif kind == "config":
            for item in rec.config.update:
                config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "artifact":
            a = rec.artifact
            artifacts.append({"name": a.name, "type": a.type, "aliases": list(a.aliases),
                              "metadata": json.loads(a.metadata or "{}"),
                              "files": {c.path: c.local_path for c in a.manifest.contents}})
        elif kind == "summary":
            for item in rec.summary.update:
                summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return {"history": history, "config": config, "summary": summary, "artifacts": artifacts}
