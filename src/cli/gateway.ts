/** `mars-fleet gateway`: cads-mars-server's protocols in front of the fleet, until SIGTERM/SIGINT. */
import type { FleetConfig } from "../config/index.js";
import { createLogger } from "../core/index.js";
import { Gateway } from "../gateway/index.js";

export async function runGateway(config: FleetConfig): Promise<number> {
  const logger = createLogger({ level: config.logLevel, name: "mars-fleet-gateway" });
  const gateway = await Gateway.start({ config, logger });
  await new Promise<void>((resolve) => {
    process.once("SIGTERM", () => resolve());
    process.once("SIGINT", () => resolve());
  });
  logger.info("closing: open requests are cut and their jobs cancelled");
  await gateway.close();
  logger.flush();
  return 0;
}
