/** src/sim: the MARS simulator's command (its entry, sim/main.ts, is loaded on demand). Other folders import it from here. */
export { simulatorCommand } from "./command.js";
