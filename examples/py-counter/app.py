"""The wraft world `wraft:machine/state-machine` for the counter in counter.py.

Built with componentize-py, which links a WASI build of CPython: deploy it with the
deterministic WASI profile (`wraft deploy --wasi deterministic`).

Two rules this file keeps for every replica to compute the same thing:
- Only a deliberate `AppError` becomes an application error (componentize-py: `raise Err(..)`).
  Any other exception leaves the export, which componentize-py turns into a trap, in `apply`
  and `apply_batch` alike: the node discards the instance and the entry's half-done writes.
- The `random` module's global generator is reseeded with the entry's log index before every
  entry (with 0 before a query): it is not part of the snapshot, so without this a replica
  restored from a snapshot would draw different numbers from one that applied the log live.
"""

import random
import traceback
from typing import List, Optional

import wit_world
from wit_world.exports import machine
from wit_world.imports import host, types
from componentize_py_types import Err, Ok, Result

from counter import AppError, Counter, SNAPSHOT_FORMAT

# zstd level for snapshots (the host's `compress`), and the cap on a restored snapshot.
ZSTD_LEVEL = 3
SNAPSHOT_BYTES_MAX = 64 * 1024 * 1024

_state = Counter()


def _log_panic() -> None:
    """Log the exception being handled as a `panic:` line: the host puts it into the trap's
    message, which the client then receives."""
    host.log(host.LogLevel.ERROR, "panic: " + traceback.format_exc().strip())


def _apply_one(entry: types.Entry) -> Result[bytes, types.AppError]:
    random.seed(entry.meta.index)
    host.begin_entry()
    try:
        return Ok(_state.apply(entry.command))
    except AppError as e:
        return Err(types.AppError(code=e.code, message=e.message))
    except Exception:
        _log_panic()
        raise  # a bug: leaves the export, a trap
    finally:
        host.end_entry()


class SnapshotReader(machine.SnapshotReader):
    def __init__(self, blob: bytes):
        self.blob = blob
        self.offset = 0

    def next_chunk(self, max_bytes: int) -> Optional[bytes]:
        if self.offset >= len(self.blob):
            return None
        end = min(len(self.blob), self.offset + max(1, max_bytes))
        chunk = self.blob[self.offset:end]
        self.offset = end
        return chunk


class Restorer(machine.Restorer):
    def __init__(self):
        self.parts: List[bytes] = []

    def write_chunk(self, chunk: bytes) -> None:
        self.parts.append(chunk)

    def finish(self) -> None:
        global _state
        try:
            blob = host.decompress(b"".join(self.parts), SNAPSHOT_BYTES_MAX)
            _state = Counter.restore(blob)
        except Err as e:
            raise Err(f"counter snapshot does not decompress: {e.value}")
        except (ValueError, KeyError, TypeError) as e:
            raise Err(f"counter snapshot does not restore: {e}")


class Machine(wit_world.exports.Machine):
    def info(self) -> types.MachineInfo:
        return types.MachineInfo(name="py-counter", version="0.1.0", snapshot_format=SNAPSHOT_FORMAT)

    def apply(self, entry: types.Entry) -> bytes:
        r = _apply_one(entry)
        if isinstance(r, Err):
            raise r
        return r.value

    def apply_batch(self, entries: List[types.Entry]) -> List[Result[bytes, types.AppError]]:
        return [_apply_one(e) for e in entries]

    def query(self, request: bytes) -> bytes:
        random.seed(0)
        try:
            return _state.query(request)
        except AppError as e:
            raise Err(types.AppError(code=e.code, message=e.message))
        except Exception:
            _log_panic()
            raise

    def begin_snapshot(self) -> machine.SnapshotReader:
        try:
            return SnapshotReader(host.compress(_state.snapshot(), ZSTD_LEVEL))
        except Err as e:
            raise Err(f"counter snapshot failed: {e.value}")

    def begin_restore(self, format: int) -> machine.Restorer:
        if format != SNAPSHOT_FORMAT:
            raise Err(f"counter restores snapshot format {SNAPSHOT_FORMAT}, not {format}")
        return Restorer()
