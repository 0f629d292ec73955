/** `mars-fleet qos apply FILE` and `mars-fleet qos show`: the QoS rules in the broker, with live counters. */
import { readFile } from "node:fs/promises";
import { Fleet } from "../client/index.js";
import type { FleetConfig } from "../config/index.js";
import { ConfigError } from "../core/index.js";
import { describeUse, isDeny, isLimit, isPriority, isSplit, parseRules, type Rule } from "../qos/index.js";
import { EXIT, print } from "./output.js";

/** Validate the file whole, then store it: every worker follows the change within a round trip. */
export async function qosApply(
  file: string | undefined,
  json: boolean,
  config: FleetConfig,
): Promise<number> {
  if (!file) throw new ConfigError("qos apply needs a rules file: mars-fleet qos apply rules.yaml");
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    throw new ConfigError(
      `cannot read the rules file ${file}: ${(err as NodeJS.ErrnoException).code ?? err}`,
      {
        file,
      },
    );
  }
  // An invalid file is refused before any connection (QOS_RULES_INVALID, every line at fault).
  parseRules(text, file);
  const fleet = await Fleet.connect({ config });
  try {
    const { revision, rules } = await fleet.applyQosRules(text, file);
    print(
      json,
      { applied: true, revision, rules: rules.rules.length },
      () =>
        `applied ${rules.rules.length} rule(s) from ${file} (revision ${revision}); workers follow within a second`,
    );
    return EXIT.ok;
  } finally {
    await fleet.close();
  }
}

function describeRule(r: Rule): string {
  const match = r.match ? ` where ${JSON.stringify(r.match)}` : "";
  if (isLimit(r))
    return `limit ${r.name}: at most ${r.limit} running${r.per ? ` per ${r.per}` : " in total"}${match}`;
  if (isPriority(r)) return `priority ${r.name}: ${r.priority > 0 ? "+" : ""}${r.priority}${match}`;
  if (isDeny(r)) return `deny ${r.name}${match}: "${r.deny}"`;
  if (isSplit(r)) return `split ${r.name}${match}: into parts by ${r.split.join(", ")}`;
  return `cache ${r.name}${match}: ${r.cache === "off" ? "results neither served from nor kept in the cache" : `results kept ${r.cache}`}`;
}

/** The rules in force, each limit's running counts per value, queued and running jobs per lane. */
export async function qosShow(json: boolean, config: FleetConfig): Promise<number> {
  const fleet = await Fleet.connect({ config });
  try {
    const out = await fleet.qosState(config.queue);
    const { limits, lanes: laneRows, waiting } = out;
    const stored = out.rules && { rules: out.rules, appliedAt: out.appliedAt!, appliedBy: out.appliedBy };
    print(json, out, () => {
      const lines: string[] = [];
      if (!stored) lines.push("no QoS rules applied: one lane per user, round-robin, no limits");
      else {
        lines.push(
          `rules applied ${new Date(stored.appliedAt).toISOString()}${stored.appliedBy ? ` by ${stored.appliedBy}` : ""}:`,
        );
        const { usage } = stored.rules;
        const byUse = usage
          ? `; recent use: -${usage.weight} per hour of MARS time in the last ${usage.window}`
          : "";
        lines.push(
          `  fair share by ${stored.rules.fairShare}; aging +${stored.rules.agingPerMinute}/min${byUse}`,
        );
        for (const r of stored.rules.rules) lines.push(`  ${describeRule(r)}`);
      }
      lines.push(`limits held now (${limits.length}):`);
      for (const l of limits)
        lines.push(`  ${l.key}: ${l.running}${l.limit === null ? "" : `/${l.limit}`} running`);
      lines.push(`lanes of queue ${config.queue} (${laneRows.length}):`);
      for (const l of laneRows)
        lines.push(
          `  ${l.lane}: ${l.queued} queued, ${l.running} running${l.heldAside ? `, ${l.heldAside} held aside` : ""}`,
        );
      if (out.usage.length > 0 && stored?.rules.usage) {
        lines.push(`recent use (MARS time in the last ${stored.rules.usage.window}):`);
        for (const u of out.usage)
          lines.push(`  ${u.lane}: ${describeUse(u.seconds)}, priority -${u.penalty}`);
      }
      if (waiting.length > 0) {
        lines.push(`held by workers for a limit (${waiting.length}):`);
        for (const w of waiting) lines.push(`  ${w.job} on ${w.worker}: ${w.reason}`);
      }
      return lines.join("\n");
    });
    return EXIT.ok;
  } finally {
    await fleet.close();
  }
}
