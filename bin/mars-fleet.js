#!/usr/bin/env node
// The mars-fleet command line; the TypeScript is compiled to dist/ by `npm ci` (prepare).
import { main } from "../dist/src/cli/main.js";

await main(process.argv);
