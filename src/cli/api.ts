/** `mars-fleet api` (serve the HTTP API) and `mars-fleet api keys add|list|revoke`. */
import { API_ROLES, ApiKeys, type ApiRole } from "../api/index.js";
import { connectProvisioned } from "../broker/index.js";
import type { FleetConfig } from "../config/index.js";
import { ConfigError, createLogger } from "../core/index.js";
import { EXIT } from "./output.js";

/** Serve the API until SIGTERM or SIGINT; its callback settings come from the configuration. */
export async function serveApi(config: FleetConfig, port: number, host: string): Promise<number> {
  const { startApi } = await import("../api/server.js");
  const log = createLogger({ level: config.logLevel, name: "mars-fleet-api" });
  const api = await startApi({ config, port, host, logger: log });
  process.stderr.write(`mars-fleet api listening on http://${host}:${api.port} (docs: /docs)\n`);
  await new Promise<void>((resolve) => {
    const stop = (): void => resolve();
    process.once("SIGTERM", stop);
    process.once("SIGINT", stop);
  });
  await api.close();
  return EXIT.ok;
}

export async function keysCommand(
  action: string | undefined,
  args: { id?: string; user?: string; role?: string },
  json: boolean,
  config: FleetConfig,
): Promise<number> {
  return connectProvisioned(config, "mars-fleet-admin", async (conn) => {
    try {
      const keys = await ApiKeys.open(conn.js, conn.authority);
      const out = (value: unknown, human: string): void => {
        process.stdout.write(json ? JSON.stringify(value) + "\n" : human + "\n");
      };
      if (action === "add") {
        if (!args.user) throw new ConfigError("api keys add needs --user");
        const role = (args.role ?? "user") as ApiRole;
        if (!API_ROLES.includes(role)) throw new ConfigError(`--role is one of ${API_ROLES.join(", ")}`);
        const { token, key } = await keys.add(args.user, role);
        out(
          { token, id: key.id, user: key.user, role: key.role },
          `${token}\n(key ${key.id} for ${key.user}, role ${key.role}; shown once: keep it)`,
        );
      } else if (action === "list") {
        const all = await keys.list();
        out(
          all.map(({ hash: _hash, ...k }) => k),
          all
            .map((k) => `${k.id}  ${k.role.padEnd(5)}  ${k.user}  ${new Date(k.createdAt).toISOString()}`)
            .join("\n") || "no API keys",
        );
      } else if (action === "revoke") {
        if (!args.id) throw new ConfigError("api keys revoke needs the key id");
        if (!(await keys.revoke(args.id))) throw new ConfigError(`no API key ${args.id}`);
        out({ revoked: args.id }, `revoked ${args.id}`);
      } else {
        throw new ConfigError("api keys: add, list or revoke");
      }
      return EXIT.ok;
    } finally {
      await conn.nc.close();
    }
  });
}
