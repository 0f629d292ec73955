/** src/config: the settings table and loading. Other folders import it from here. */
export { loadConfig, marsCommandArgv } from "./load.js";
export type { FleetConfig } from "./load.js";
export { flagName, SETTINGS } from "./settings.js";
