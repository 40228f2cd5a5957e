// The key-value state and its commands, as plain JavaScript: no wraft imports here, so the
// logic runs under `node --test` as well as inside the component.
//
// Commands and queries are JSON:
//   {"op":"put","key":"k","value":"v"}  -> {"previous": "old" | null}
//   {"op":"delete","key":"k"}           -> {"previous": "old" | null}
//   query {"op":"get","key":"k"}        -> {"value": "v" | null}
//   query {"op":"len"}                  -> {"len": 3}
// Snapshot: zstd(JSON [[key, value], ...] sorted by key), so two replicas with the same state
// write byte-identical snapshots.

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** An application error: becomes `app-error { code, message }`, a replicated result. */
export class AppError {
  constructor(code, message) {
    this.code = code;
    this.message = message;
  }
}

export const BAD_COMMAND = 1;
export const SNAPSHOT_FORMAT = 1;
/** Upper bound of a decompressed snapshot, bytes (the host caps it as well). */
export const SNAPSHOT_BYTES_MAX = 256 * 1024 * 1024;

function parse(bytes) {
  let v;
  try {
    v = JSON.parse(decoder.decode(bytes));
  } catch (e) {
    throw new AppError(BAD_COMMAND, `not JSON: ${e.message}`);
  }
  if (v === null || typeof v !== "object" || typeof v.op !== "string") {
    throw new AppError(BAD_COMMAND, 'expected an object with a string "op"');
  }
  return v;
}

function str(v, field) {
  if (typeof v[field] !== "string") {
    throw new AppError(BAD_COMMAND, `"${field}" must be a string`);
  }
  return v[field];
}

const out = (v) => encoder.encode(JSON.stringify(v));

export class Kv {
  constructor() {
    this.map = new Map();
  }

  /** Apply one command (bytes); returns output bytes or throws AppError. */
  apply(command) {
    const c = parse(command);
    switch (c.op) {
      case "put": {
        const key = str(c, "key");
        const previous = this.map.has(key) ? this.map.get(key) : null;
        this.map.set(key, str(c, "value"));
        return out({ previous });
      }
      case "delete": {
        const key = str(c, "key");
        const previous = this.map.has(key) ? this.map.get(key) : null;
        this.map.delete(key);
        return out({ previous });
      }
      default:
        throw new AppError(BAD_COMMAND, `unknown op "${c.op}"`);
    }
  }

  /** Answer a read-only request; never changes state. */
  query(request) {
    const q = parse(request);
    switch (q.op) {
      case "get": {
        const key = str(q, "key");
        return out({ value: this.map.has(key) ? this.map.get(key) : null });
      }
      case "len":
        return out({ len: this.map.size });
      default:
        throw new AppError(BAD_COMMAND, `unknown query "${q.op}"`);
    }
  }

  /** The whole state as one compressed blob (`compress` is the host's zstd). */
  snapshot(compress) {
    const entries = [...this.map.entries()].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    return compress(encoder.encode(JSON.stringify(entries)), 3);
  }

  /** A new state from a blob written by `snapshot` (throws a string on bad input). */
  static restore(blob, decompress) {
    const entries = JSON.parse(decoder.decode(decompress(blob, BigInt(SNAPSHOT_BYTES_MAX))));
    if (!Array.isArray(entries)) throw "snapshot is not a list of entries";
    const kv = new Kv();
    for (const e of entries) {
      if (!Array.isArray(e) || typeof e[0] !== "string" || typeof e[1] !== "string") {
        throw "snapshot entry is not a [key, value] pair of strings";
      }
      kv.map.set(e[0], e[1]);
    }
    return kv;
  }
}
