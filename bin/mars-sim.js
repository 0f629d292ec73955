#!/usr/bin/env node
// The bundled MARS simulator, callable like the real `mars` binary.
import { simulatorMain } from "../dist/src/sim/main.js";

process.exitCode = await simulatorMain(process.argv.slice(2));
