/** `mars-fleet keeper`: answer workers' lane requests until SIGTERM or SIGINT (broker/keeper.ts). */
import { connectWithConfig, LaneKeeper } from "../broker/index.js";
import type { FleetConfig } from "../config/index.js";
import { createLogger } from "../core/index.js";
import { EXIT } from "./output.js";

export async function runKeeper(config: FleetConfig): Promise<number> {
  const log = createLogger({ level: config.logLevel, name: "mars-fleet-keeper" });
  const conn = await connectWithConfig(config, "mars-fleet-keeper");
  const keeper = new LaneKeeper(conn.nc, conn.jsm, log);
  log.info({ servers: config.servers }, "lane keeper answering");
  await new Promise<void>((resolve) => {
    const stop = (): void => resolve();
    process.once("SIGTERM", stop);
    process.once("SIGINT", stop);
  });
  await keeper.close();
  // A drain that fails (the connection already closed) leaves nothing to flush: close is enough.
  await conn.nc.drain().catch(() => conn.nc.close());
  log.info({ answered: keeper.answered }, "lane keeper stopped");
  log.flush();
  return EXIT.ok;
}
