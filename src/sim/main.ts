/** The simulator as an executable: `mars-sim [requestfile]`, request on stdin otherwise. */
import { readFile } from "node:fs/promises";
import { text } from "node:stream/consumers";
import { runSimulator } from "./simulator.js";

/** Run the simulator against this process's argv, stdio and environment; returns the exit code. */
export async function simulatorMain(args: string[]): Promise<number> {
  return runSimulator(args, {
    readStdin: () => text(process.stdin),
    readFile: (path) => readFile(path, "utf8"),
    write: (chunk) => process.stdout.write(chunk),
    env: process.env,
  });
}
