/**
 * `mars-fleet cache stats` and `mars-fleet cache purge [--older-than D] [--key K]`: the result
 * cache under the shared root (src/runner/result-cache.ts), for an operator on a host that mounts
 * it. Workers keep it inside its budget on their own; purging is for a result known to be wrong.
 */
import type { FleetConfig } from "../config/index.js";
import { ConfigError, formatDuration, parseDuration } from "../core/index.js";
import { ResultCache } from "../runner/index.js";
import { EXIT, print } from "./output.js";

function cacheOf(config: FleetConfig): ResultCache {
  return new ResultCache(config.sharedRoot, { maxBytes: config.cacheMaxBytes, ttlMs: config.cacheTtl });
}

export async function cacheStats(json: boolean, config: FleetConfig): Promise<number> {
  const stats = await cacheOf(config).stats();
  print(json, stats, () =>
    [
      `result cache in ${config.sharedRoot}/.cache: ${stats.entries} entries, ${stats.bytes} bytes`,
      config.cacheMaxBytes > 0
        ? `budget ${config.cacheMaxBytes} bytes; entries served for ${formatDuration(config.cacheTtl)}`
        : "no budget set (MARS_CACHE_MAX_BYTES=0): workers neither serve nor keep results",
      stats.oldestUse === null ? "" : `least recently used: ${new Date(stats.oldestUse).toISOString()}`,
    ]
      .filter(Boolean)
      .join("\n"),
  );
  return EXIT.ok;
}

export async function cachePurge(
  opts: { olderThan?: string; key?: string },
  json: boolean,
  config: FleetConfig,
): Promise<number> {
  let olderThanMs: number | undefined;
  if (opts.olderThan !== undefined) {
    olderThanMs = parseDuration(opts.olderThan);
    if (olderThanMs === undefined)
      throw new ConfigError(
        `--older-than must be a duration such as "7d" or "12h", got ${JSON.stringify(opts.olderThan)}`,
        {
          setting: "older-than",
        },
      );
  }
  if (opts.key !== undefined && !/^[0-9a-f]{64}$/.test(opts.key))
    throw new ConfigError(`--key must be a cache key (64 hex digits), got ${JSON.stringify(opts.key)}`, {
      setting: "key",
    });
  const removed = await cacheOf(config).purge({
    ...(olderThanMs !== undefined && { olderThanMs }),
    ...(opts.key !== undefined && { key: opts.key }),
  });
  print(json, { removed }, () => `removed ${removed} entr${removed === 1 ? "y" : "ies"}`);
  return EXIT.ok;
}
