import { fileURLToPath } from "node:url";

/** Path of the bundled simulator's executable script. */
export const SIMULATOR_SCRIPT = fileURLToPath(new URL("../../../bin/mars-sim.js", import.meta.url));

/** The command that runs the bundled simulator the way the real `mars` binary is run. */
export function simulatorCommand(): string[] {
  return [process.execPath, SIMULATOR_SCRIPT];
}
