"""Read an offline W&B run directory (test helper): the records of ``run-<id>.wandb`` and the media files.

The ``.wandb`` file is wandb's transaction log: a 7-byte header (``:W&B``, magic ``0xBEE1``, version) followed by
LevelDB-log framed records (32 KiB blocks; each chunk = CRC32 (4 bytes), length (2, little endian), type (1):
FULL=1, FIRST=2, MIDDLE=3, LAST=4), each record a ``wandb_internal_pb2.Record`` protobuf.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

HEADER_SIZE = 7
BLOCK_SIZE = 32 * 1024
CHUNK_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[Any]:
    """Every protobuf record of a ``.wandb`` file, in order."""
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    records: list[Any] = []
    pos = HEADER_SIZE
    pending = b""
    while pos + CHUNK_HEADER <= len(data):
        left_in_block = BLOCK_SIZE - pos % BLOCK_SIZE
        if left_in_block < CHUNK_HEADER:
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + CHUNK_HEADER])
        if length == 0 and kind == 0:
            pos += left_in_block
            continue
        chunk = data[pos + CHUNK_HEADER : pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
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
        record = pb.Record()
        record.ParseFromString(pending)
        records.append(record)
        pending = b""
    return records


@dataclass
class OfflineRun:
    """What an offline run directory holds."""

    directory: Path
    group: str = ""
    name: str = ""
    project: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def metric_values(self, key: str) -> list[Any]:
        """Values of one history key, in logging order."""
        return [row[key] for row in self.history if key in row]

    def media(self, kind: str) -> list[Path]:
        """Media files of a kind (``images``, ``table``), recursively."""
        return sorted((self.directory / "files" / "media" / kind).rglob("*.*"))


def _key(item: Any) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def read_offline_run(directory: Path) -> OfflineRun:
    """Parse the run record, config updates, history rows and summary of an ``offline-run-*`` folder."""
    directory = Path(directory)
    files = list(directory.glob("run-*.wandb"))
    assert len(files) == 1, f"expected one run-*.wandb in {directory}, found {files}"
    run = OfflineRun(directory)
    for record in read_records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.group, run.name, run.project = record.run.run_group, record.run.display_name, record.run.project
            run.tags = list(record.run.tags)
            for item in record.run.config.update:
                run.config[_key(item)] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                run.config[_key(item)] = json.loads(item.value_json)
        elif kind == "history":
            run.history.append({_key(item): json.loads(item.value_json) for item in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                run.summary[_key(item)] = json.loads(item.value_json)
    return run
