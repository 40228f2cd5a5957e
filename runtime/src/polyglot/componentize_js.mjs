// Run componentize-js for `wraft build` (embedded in the wraft binary, written to a temp dir).
// usage: node componentize_js.mjs <componentize-js package dir> <entry.js> <wit dir> <out.wasm>
// Every WASI feature is disabled: the component must import only `wraft:machine/host`.
import { writeFile } from "node:fs/promises";
import { pathToFileURL } from "node:url";
import { join } from "node:path";

const [pkg, sourcePath, witPath, out] = process.argv.slice(2);
const { componentize } = await import(pathToFileURL(join(pkg, "src", "componentize.js")).href);
const { component, imports } = await componentize({
  sourcePath,
  witPath,
  worldName: "state-machine",
  disableFeatures: ["stdio", "random", "clocks", "http", "fetch-event"],
});
await writeFile(out, component);
console.log(JSON.stringify({ bytes: component.length, imports }));
