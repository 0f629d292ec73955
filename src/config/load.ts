/**
 * Configuration: defaults < YAML file < environment < CLI flags, validated by one zod schema.
 * Invalid values are rejected with a ConfigError naming the setting and where it came from.
 */
import { existsSync, readFileSync } from "node:fs";
import { z } from "zod";
import { ConfigError, describeZodError, parseDuration, yaml } from "../core/index.js";
import { parseJobMarsEnv } from "../mars/index.js";
import { SETTINGS, flagName, yamlName, type Setting, type SettingKind } from "./settings.js";

export const DEFAULT_CONFIG_FILE = "/etc/mars-fleet.yaml";

/** A port to listen on: 0 takes any free one (tests, several gateways on one host). */
const listenPort = z.number().int().min(0).max(65535);
const durationMs = z.number().int().min(0);

/** The compiled configuration (durations in milliseconds). */
export const configSchema = z
  .object({
    servers: z.array(z.string().min(1)),
    creds: z.string(),
    natsUser: z.string(),
    natsPassword: z.string(),
    tlsCa: z.string(),
    tlsCert: z.string(),
    tlsKey: z.string(),
    trustKey: z.string(),
    signingKey: z.string(),
    callbackBackoff: durationMs.min(1),
    callbackMaxAge: durationMs,
    callbackAllow: z.array(z.string()),
    useShares: z.boolean(),
    filterLogs: z.boolean(),
    maxConcurrentConnections: z.number().int().min(0),
    requestTimeout: durationMs.min(1),
    jobTimeout: durationMs,
    heartbeatInterval: durationMs.min(50),
    laneIdle: durationMs,
    keeper: z.enum(["auto", "on", "off"]),
    sharedRoot: z.string().min(1).startsWith("/", "must be an absolute path"),
    pipePort: listenPort,
    sharesPort: listenPort,
    metricsPort: z.number().int().min(0).max(65535),
    gatewayHost: z.string().min(1),
    gatewayData: z.enum(["share", "objectstore"]),
    gatewaySharesEnv: z.array(z.string()).superRefine((list, ctx) => {
      try {
        parseJobMarsEnv(list);
      } catch (err) {
        ctx.addIssue({ code: "custom", message: (err as Error).message });
      }
    }),
    gatewayPipeRequestId: z.boolean(),
    maxRetries: z.number().int().min(1).max(100),
    retryDelay: durationMs,
    marsCommand: z.string(),
    queue: z.string().regex(/^[a-z0-9_-]+$/, "use lower-case letters, digits, - and _"),
    concurrency: z.number().int().min(1).max(1024),
    drainGrace: durationMs,
    killGrace: durationMs,
    streamReplicas: z.union([z.literal(1), z.literal(3)]),
    eventsMaxAge: durationMs.min(1000),
    retention: durationMs.min(1000),
    cacheMaxBytes: z.number().int().min(0),
    cacheTtl: durationMs.min(1000),
    logLevel: z.enum(["trace", "debug", "info", "warn", "error", "fatal", "silent"]),
  })
  .strict()
  .superRefine((c, ctx) => {
    if ((c.tlsCert === "") !== (c.tlsKey === ""))
      ctx.addIssue({ code: "custom", path: ["tlsKey"], message: "tls_cert and tls_key go together" });
    if (c.natsPassword !== "" && c.natsUser === "")
      ctx.addIssue({ code: "custom", path: ["natsUser"], message: "a NATS password needs a user" });
    if (c.creds !== "" && c.natsUser !== "")
      ctx.addIssue({
        code: "custom",
        path: ["creds"],
        message: "give either creds or a NATS user, not both",
      });
  });
export type FleetConfig = z.infer<typeof configSchema>;

function coerce(setting: Setting, value: unknown, source: string): unknown {
  const fail = (expected: string): never => {
    throw new ConfigError(`${source}: ${setting.key} must be ${expected}, got ${JSON.stringify(value)}`, {
      setting: setting.key,
      source,
    });
  };
  const kind: SettingKind = setting.kind;
  switch (kind) {
    case "string":
      return typeof value === "string" ? value : typeof value === "number" ? String(value) : fail("a string");
    case "int": {
      const n =
        typeof value === "number"
          ? value
          : typeof value === "string" && /^\s*-?\d+\s*$/.test(value)
            ? Number(value)
            : NaN;
      return Number.isInteger(n) ? n : fail("a whole number");
    }
    case "bool": {
      if (typeof value === "boolean") return value;
      const text = String(value).trim().toLowerCase();
      if (["1", "true", "yes", "on"].includes(text)) return true;
      if (["0", "false", "no", "off", ""].includes(text)) return false;
      return fail("true or false");
    }
    case "duration": {
      const ms = typeof value === "number" || typeof value === "string" ? parseDuration(value) : undefined;
      return ms ?? fail('a duration such as "30s", "500ms", "2m" or a number of seconds');
    }
    case "list":
      if (Array.isArray(value)) return value.map(String);
      if (typeof value === "string")
        return value
          .split(",")
          .map((s) => s.trim())
          .filter(Boolean);
      return fail("a list");
  }
}

/** Read the YAML file; an explicitly named file must exist and be valid, the default one may be absent. */
export function readConfigFile(path: string, explicit: boolean): Record<string, unknown> {
  if (!existsSync(path)) {
    if (explicit) throw new ConfigError(`configuration file ${path} does not exist`, { file: path });
    return {};
  }
  let doc: unknown;
  try {
    doc = yaml().parse(readFileSync(path, "utf8"));
  } catch (err) {
    throw new ConfigError(
      `configuration file ${path} is not valid YAML: ${(err as Error).message}`,
      { file: path },
      err,
    );
  }
  if (doc === null || doc === undefined) return {};
  if (typeof doc !== "object" || Array.isArray(doc)) {
    throw new ConfigError(`configuration file ${path} must hold a mapping of settings`, { file: path });
  }
  const byYamlName = new Map(SETTINGS.map((s) => [yamlName(s.key), s]));
  const out: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(doc)) {
    const setting = byYamlName.get(name);
    if (!setting) {
      const known = [...byYamlName.keys()].join(", ");
      throw new ConfigError(`configuration file ${path}: unknown setting "${name}" (known: ${known})`, {
        file: path,
        setting: name,
      });
    }
    out[setting.key] = coerce(setting, value, path);
  }
  return out;
}

export interface LoadOptions {
  /** Values from CLI flags or code, keyed by setting key; undefined entries are ignored. */
  overrides?: Record<string, unknown>;
  env?: NodeJS.ProcessEnv;
  /** An explicit configuration file (e.g. `--config`); else MARS_CONFIG_FILE, else the default path. */
  configFile?: string;
}

/** Load and validate the configuration from all sources. Never mutates its inputs. */
export function loadConfig(opts: LoadOptions = {}): FleetConfig {
  const env = opts.env ?? process.env;
  const explicitFile = opts.configFile ?? (env["MARS_CONFIG_FILE"] || undefined);
  const merged: Record<string, unknown> = {};
  for (const s of SETTINGS) merged[s.key] = s.default;
  Object.assign(merged, readConfigFile(explicitFile ?? DEFAULT_CONFIG_FILE, explicitFile !== undefined));
  for (const s of SETTINGS as readonly Setting[]) {
    for (const name of [...(s.envAliases ?? []), s.env]) {
      const value = env[name];
      // An empty variable counts as unset, but for a list, where it says "none" (MARS_GATEWAY_SHARES_ENV=).
      if (value !== undefined && (value !== "" || s.kind === "list"))
        merged[s.key] = coerce(s, value, `environment ${name}`);
    }
  }
  for (const s of SETTINGS as readonly Setting[]) {
    const value = opts.overrides?.[s.key];
    if (value !== undefined) merged[s.key] = coerce(s, value, `option --${flagName(s.key)}`);
  }
  const parsed = configSchema.safeParse(merged);
  if (!parsed.success)
    throw new ConfigError(`invalid configuration: ${describeZodError(parsed.error)}`, {}, parsed.error);
  return parsed.data;
}

/** The MARS command as an argv list; empty means the bundled simulator. */
export function marsCommandArgv(config: Pick<FleetConfig, "marsCommand">): string[] | undefined {
  const parts = config.marsCommand.trim().split(/\s+/).filter(Boolean);
  return parts.length > 0 ? parts : undefined;
}
