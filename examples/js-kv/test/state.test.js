// Plain-node tests of the state logic: `npm test` (no wasm, no wraft needed).
import { test } from "node:test";
import assert from "node:assert/strict";
import { AppError, Kv } from "../src/state.js";

const enc = (v) => new TextEncoder().encode(JSON.stringify(v));
const dec = (b) => JSON.parse(new TextDecoder().decode(b));
// Stand-ins for the host's zstd: the snapshot logic only needs a reversible pair.
const compress = (b) => b;
const decompress = (b) => b;

test("put then get returns the value and the previous one", () => {
  const kv = new Kv();
  assert.deepEqual(dec(kv.apply(enc({ op: "put", key: "a", value: "1" }))), { previous: null });
  assert.deepEqual(dec(kv.apply(enc({ op: "put", key: "a", value: "2" }))), { previous: "1" });
  assert.deepEqual(dec(kv.query(enc({ op: "get", key: "a" }))), { value: "2" });
});

test("a bad command is an application error, not a crash", () => {
  assert.throws(() => new Kv().apply(enc({ op: "nope" })), AppError);
  assert.throws(() => new Kv().apply(new TextEncoder().encode("{")), AppError);
});

test("snapshot then restore answers the same, and equal states write equal snapshots", () => {
  const a = new Kv();
  const b = new Kv();
  for (const k of ["x", "b", "m"]) a.apply(enc({ op: "put", key: k, value: k + k }));
  for (const k of ["m", "x", "b"]) b.apply(enc({ op: "put", key: k, value: k + k }));
  assert.deepEqual(a.snapshot(compress), b.snapshot(compress));
  const r = Kv.restore(a.snapshot(compress), decompress);
  assert.deepEqual(dec(r.query(enc({ op: "len" }))), { len: 3 });
  assert.deepEqual(dec(r.query(enc({ op: "get", key: "m" }))), { value: "mm" });
});
