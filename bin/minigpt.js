#!/usr/bin/env node
// The CLI is compiled by `npm install` (prepare -> tsc); this shim only points at the build.
import { main } from '../dist/src/cli/main.js';

main(process.argv).then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    console.error(`minigpt: ${err instanceof Error ? err.message : String(err)}`);
    process.exitCode = 1;
  },
);
