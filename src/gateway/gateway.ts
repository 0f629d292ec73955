/** The gateway daemon: cads-mars-server's pipe and shares protocols in front of the fleet. Stateless. */
import type { AddressInfo } from "node:net";
import type { FastifyInstance } from "fastify";
import type { Logger } from "pino";
import { Fleet } from "../client/index.js";
import type { FleetConfig } from "../config/index.js";
import { silentLogger } from "../core/index.js";
import { pipeServer } from "./pipe.js";
import { parseJobMarsEnv } from "../mars/index.js";
import { SharesServer } from "./shares.js";

export interface GatewayOptions {
  config: FleetConfig;
  logger?: Logger;
}

export class Gateway {
  private closing: Promise<void> | undefined;

  private constructor(
    private readonly fleet: Fleet,
    private readonly http: FastifyInstance,
    private readonly shares: SharesServer,
  ) {}

  /** Connect to the fleet and listen on the pipe (HTTP) and shares (WebSocket) ports. */
  static async start(opts: GatewayOptions): Promise<Gateway> {
    const { config } = opts;
    const log = (opts.logger ?? silentLogger()).child({ component: "gateway" });
    const fleet = await Fleet.connect({ config });
    const http = pipeServer({ fleet, sharedRoot: config.sharedRoot, dataPath: config.gatewayData, log });
    try {
      await http.listen({ port: config.pipePort, host: config.gatewayHost });
      const shares = await SharesServer.listen(
        {
          fleet,
          sharedRoot: config.sharedRoot,
          heartbeatMs: config.heartbeatInterval,
          maxConnections: config.maxConcurrentConnections,
          marsEnv: parseJobMarsEnv(config.gatewaySharesEnv),
          log,
        },
        config.sharesPort,
        config.gatewayHost,
      );
      const gateway = new Gateway(fleet, http, shares);
      log.info(
        { pipePort: gateway.pipePort, sharesPort: gateway.sharesPort, dataPath: config.gatewayData },
        "gateway listening",
      );
      return gateway;
    } catch (err) {
      // Nothing may stay open (a listening port keeps the process alive).
      await http.close();
      await fleet.close();
      throw err;
    }
  }

  get pipePort(): number {
    return (this.http.server.address() as AddressInfo).port;
  }

  get sharesPort(): number {
    return this.shares.port;
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      await this.shares.close();
      await this.http.close();
      await this.fleet.close();
    })();
    return this.closing;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
