// The wraft world `wraft:machine/state-machine` for the key-value state in ./state.js.
//
// Built with componentize-js with every WASI feature disabled: the component imports only
// `wraft:machine/host`, and uses the host's zstd (`compress`/`decompress`) for snapshots.
//
// Two rules this file keeps for every replica to compute the same thing:
// - Only a deliberate `AppError` becomes an application error (a replicated result). Any other
//   exception is a bug and traps, in `apply` and `applyBatch` alike: the node then discards the
//   instance, so the entry's half-done writes are never kept.
// - `Math.random()` is restarted at every entry from the entry's log index, so it does not
//   depend on whether this instance applied the log live or was restored from a snapshot.
import { beginEntry, endEntry, compress, decompress, log } from "wraft:machine/host@0.1.0";
import { AppError, Kv, SNAPSHOT_FORMAT } from "./state.js";

let state = new Kv();

const ok = (val) => ({ tag: "ok", val });
const err = (val) => ({ tag: "err", val });

function message(e) {
  if (typeof e === "string") return e;
  if (e && typeof e.payload === "string") return e.payload; // a host import's error
  return String(e && e.message ? e.message : e);
}

/**
 * Trap with `e`. componentize-js turns anything thrown out of an export that returns a
 * `result` into the result's `err` case (that is how an uncaught exception used to become
 * application error 0). So the error is logged (the host puts a `panic:` line into the trap's
 * message) and rethrown from the result's `val` getter, which componentize-js reads only after
 * its catch, while writing the result for the host: the exception leaves the export and the
 * call traps, as it does from `applyBatch`, which returns no `result`.
 */
function trap(e) {
  log("error", `panic: ${message(e)}${e && e.stack ? `\n${e.stack}` : ""}`);
  return {
    tag: "err",
    get val() {
      throw e;
    },
  };
}

// Math.random: SplitMix64 (the generator the host's deterministic WASI profile uses), seeded
// with `index ^ (3 * 0xD1B54A32D192ED03)` at every entry (index 0 for queries), 53 bits per
// draw. componentize-js (random disabled) would otherwise give each instance one fixed
// sequence that is not part of the snapshot: a restored replica would draw differently.
const U64 = (x) => BigInt.asUintN(64, x);
let rngState = 0n;
function reseedRandom(index) {
  rngState = U64(BigInt(index) ^ U64(3n * 0xd1b54a32d192ed03n));
}
Math.random = function random() {
  rngState = U64(rngState + 0x9e3779b97f4a7c15n);
  let z = rngState;
  z = U64((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n);
  z = U64((z ^ (z >> 27n)) * 0x94d049bb133111ebn);
  z ^= z >> 31n;
  return Number(z >> 11n) / 2 ** 53;
};

function applyOne(entry) {
  reseedRandom(entry.meta.index);
  beginEntry();
  try {
    return ok(state.apply(entry.command));
  } catch (e) {
    if (e instanceof AppError) return err({ code: e.code, message: e.message });
    throw e; // a bug
  } finally {
    endEntry();
  }
}

class SnapshotReader {
  constructor(blob) {
    this.blob = blob;
    this.offset = 0;
  }
  nextChunk(maxBytes) {
    if (this.offset >= this.blob.length) return ok(undefined);
    const end = Math.min(this.blob.length, this.offset + Math.max(1, maxBytes));
    const chunk = this.blob.subarray(this.offset, end);
    this.offset = end;
    return ok(chunk);
  }
}

class Restorer {
  constructor() {
    this.parts = [];
    this.total = 0;
  }
  writeChunk(chunk) {
    this.parts.push(chunk);
    this.total += chunk.length;
    return ok(undefined);
  }
  finish() {
    const blob = new Uint8Array(this.total);
    let at = 0;
    for (const p of this.parts) {
      blob.set(p, at);
      at += p.length;
    }
    try {
      state = Kv.restore(blob, decompress);
    } catch (e) {
      return err(`kv snapshot does not restore: ${message(e)}`);
    }
    return ok(undefined);
  }
}

export const machine = {
  info() {
    return { name: "js-kv", version: "0.1.0", snapshotFormat: SNAPSHOT_FORMAT };
  },
  apply(entry) {
    try {
      return applyOne(entry);
    } catch (e) {
      return trap(e);
    }
  },
  applyBatch(entries) {
    return entries.map(applyOne); // an exception leaves the export: a trap
  },
  query(request) {
    reseedRandom(0);
    try {
      return ok(state.query(request));
    } catch (e) {
      if (e instanceof AppError) return err({ code: e.code, message: e.message });
      return trap(e);
    }
  },
  SnapshotReader,
  beginSnapshot() {
    try {
      return ok(new SnapshotReader(state.snapshot(compress)));
    } catch (e) {
      return err(`kv snapshot failed: ${message(e)}`);
    }
  },
  Restorer,
  beginRestore(format) {
    if (format !== SNAPSHOT_FORMAT) {
      return err(`kv restores snapshot format ${SNAPSHOT_FORMAT}, not ${format}`);
    }
    return ok(new Restorer());
  },
};
