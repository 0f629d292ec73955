/** src/local: a fleet on one machine: a throwaway nats-server and worker processes (demo, tests, bench). Other folders import it from here. */
export { LocalFleet } from "./fleet.js";
export type { Settings } from "./fleet.js";
export { freePort, LocalNatsCluster, LocalNatsServer } from "./server.js";
