"""Read back an offline W&B run: its `run-*.wandb` transaction log, framed as a LevelDB log
(7-byte file header ':W&B' + magic + version, then 32 KiB blocks of records with a 7-byte
header crc32 / length / type), each payload a `wandb_internal_pb2.Record`."""

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    position, pending = HEADER, b""
    while position + HEADER <= len(data):
        left = BLOCK - position % BLOCK
        if left < HEADER:  # block trailer padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + HEADER])
        if kind == 0 and length == 0:
            break
        chunk = data[position + HEADER:position + HEADER + length]
        position += HEADER + length
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def read_run(folder: Path) -> dict:
    """{run: the run record, summary: final summary values, history: logged rows, metrics,
    artifacts: (type, name)} of one offline run folder."""
    run, summary, history, metrics, artifacts = None, {}, [], {}, []
    for record in records(next(Path(folder).glob("run-*.wandb"))):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
        elif kind == "summary":
            for item in record.summary.update:
                key = item.key or "/".join(item.nested_key)
                summary[key] = json.loads(item.value_json)
        elif kind == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
        elif kind == "metric":
            metrics[record.metric.name or record.metric.glob_name] = record.metric.step_metric
        elif kind == "artifact":
            artifacts.append((record.artifact.type, record.artifact.name))
    return {"run": run, "summary": summary, "history": history, "metrics": metrics, "artifacts": artifacts}
