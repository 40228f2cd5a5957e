// The wraft world `wraft:machine/state-machine` for the key-value state in ./state.js.
//
// Built with componentize-js with every WASI feature disabled: the component imports only
// `wraft:machine/host`, and uses the host's zstd (`compress`/`decompress`) for snapshots.
import { beginEntry, endEntry, compress, decompress } from "wraft:machine/host@0.1.0";
import { AppError, Kv, SNAPSHOT_FORMAT } from "./state.js";

let state = new Kv();

const ok = (val) => ({ tag: "ok", val });
const err = (val) => ({ tag: "err", val });

function message(e) {
  if (typeof e === "string") return e;
  if (e && typeof e.payload === "string") return e.payload; // a host import's error
  return String(e && e.message ? e.message : e);
}

function applyOne(entry) {
  beginEntry();
  try {
    return ok(state.apply(entry.command));
  } catch (e) {
    if (e instanceof AppError) return err({ code: e.code, message: e.message });
    throw e; // a bug: trap, the host poisons the instance
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
    return { name: "{{name}}", version: "0.1.0", snapshotFormat: SNAPSHOT_FORMAT };
  },
  apply(entry) {
    return applyOne(entry);
  },
  applyBatch(entries) {
    return entries.map(applyOne);
  },
  query(request) {
    try {
      return ok(state.query(request));
    } catch (e) {
      if (e instanceof AppError) return err({ code: e.code, message: e.message });
      throw e;
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
