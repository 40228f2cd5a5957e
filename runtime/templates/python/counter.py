"""The counter state and its commands, as plain Python: no wraft imports here, so the logic
runs under `python3 -m unittest` as well as inside the component.

Commands and queries are JSON:
  {"op": "add", "n": 5}     -> {"count": 5}
  {"op": "roll"}            -> {"count": ..., "roll": 0..999, "time_ms": ...}
  query {"op": "get"}       -> {"count": 5, "rolls": 1, "last_time_ms": ...}

`roll` reads the clock (`time.time()`) and randomness (`os.urandom`). Under wraft's
deterministic WASI profile the clock is the log entry's timestamp and randomness is seeded from
the log index, so every replica computes the same roll. Do not keep a `random.Random` across
entries without putting its state in the snapshot: a replica that restored a snapshot would
draw different numbers from one that replayed the log.
"""

import json
import os
import time


class AppError(Exception):
    """An application error: becomes `app-error { code, message }`, a replicated result."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


BAD_COMMAND = 1
SNAPSHOT_FORMAT = 1


def _parse(data: bytes) -> dict:
    try:
        v = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise AppError(BAD_COMMAND, f"not JSON: {e}")
    if not isinstance(v, dict) or not isinstance(v.get("op"), str):
        raise AppError(BAD_COMMAND, 'expected an object with a string "op"')
    return v


def _out(v) -> bytes:
    return json.dumps(v, sort_keys=True, separators=(",", ":")).encode()


class Counter:
    def __init__(self):
        self.count = 0
        self.rolls = 0
        self.last_time_ms = 0

    def apply(self, command: bytes) -> bytes:
        c = _parse(command)
        op = c["op"]
        if op == "add":
            n = c.get("n")
            if not isinstance(n, int) or isinstance(n, bool):
                raise AppError(BAD_COMMAND, '"n" must be an integer')
            self.count += n
            return _out({"count": self.count})
        if op == "roll":
            roll = int.from_bytes(os.urandom(8), "little") % 1000
            now_ms = int(time.time() * 1000)
            self.count += roll
            self.rolls += 1
            self.last_time_ms = now_ms
            return _out({"count": self.count, "roll": roll, "time_ms": now_ms})
        raise AppError(BAD_COMMAND, f'unknown op "{op}"')

    def query(self, request: bytes) -> bytes:
        q = _parse(request)
        if q["op"] == "get":
            return _out(
                {"count": self.count, "rolls": self.rolls, "last_time_ms": self.last_time_ms}
            )
        raise AppError(BAD_COMMAND, f'unknown query "{q["op"]}"')

    def snapshot(self) -> bytes:
        return _out({"count": self.count, "rolls": self.rolls, "last_time_ms": self.last_time_ms})

    @staticmethod
    def restore(blob: bytes) -> "Counter":
        v = json.loads(blob)
        c = Counter()
        c.count = int(v["count"])
        c.rolls = int(v["rolls"])
        c.last_time_ms = int(v["last_time_ms"])
        return c
