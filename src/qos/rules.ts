/**
 * The QoS rules language: limits, priorities and denials, written in YAML by an operator, applied
 * with `mars-fleet qos apply`. A file is validated whole; any problem rejects it, each named with
 * its line, and nothing changes. docs/QOS.md describes the language with examples.
 */
import { z } from "zod";
import type { Document } from "yaml";
import { HOUR, MINUTE, parseDuration, QosRulesError, yaml } from "../core/index.js";
import { parseSplit } from "../mars/index.js";

const SELECTOR_KEY = /^(user|queue|fields|environ\.[A-Za-z_][A-Za-z0-9_]*|[a-z][a-z0-9_]*)$/;
const RULE_NAME = /^[a-z0-9][a-z0-9-]{0,47}$/;

const scalar = z.union([z.string().min(1), z.number()]).transform((v) => String(v).toLowerCase());
const range = z
  .object({ min: z.number().int().min(0).optional(), max: z.number().int().min(0).optional() })
  .strict()
  .refine((r) => r.min !== undefined || r.max !== undefined, "give min, max or both");

/** What a selector compares one key with: a value, any of several values, or a range (fields). */
const condition = z.union([scalar, z.array(scalar).min(1), range]);
export type Condition = z.infer<typeof condition>;

const selector = z
  .record(
    z.string().regex(SELECTOR_KEY, "a selector key is user, queue, fields, environ.<name> or a request key"),
    condition,
  )
  .superRefine((sel, ctx) => {
    for (const [key, cond] of Object.entries(sel)) {
      const isRange = typeof cond === "object" && !Array.isArray(cond);
      if ((key === "fields") !== isRange)
        ctx.addIssue({
          code: "custom",
          path: [key],
          message:
            key === "fields"
              ? "fields takes a range: {min: N, max: N}"
              : "only fields takes a range; give a value or a list",
        });
    }
  });
export type Selector = z.infer<typeof selector>;

const perKey = z
  .string()
  .regex(SELECTOR_KEY, "per is user, queue, environ.<name> or a request key")
  .refine((k) => k !== "fields", "fields is a number, not something to count by");

const base = {
  name: z.string().regex(RULE_NAME, "names are lower case letters, digits and -"),
  match: selector.optional(),
};

const limitRule = z
  .object({
    ...base,
    limit: z.number().int().min(0),
    per: perKey.optional(),
  })
  .strict();
const priorityRule = z.object({ ...base, priority: z.number().int().min(-1000).max(1000) }).strict();
const denyRule = z.object({ ...base, deny: z.string().min(1).max(500) }).strict();
/** Whether the result cache may serve and keep matching jobs' results (`off`), or for how long. */
const cacheRule = z
  .object({
    ...base,
    cache: z.string().refine((v) => {
      if (v === "off") return true;
      const ms = parseDuration(v);
      return ms !== undefined && ms >= MINUTE && ms <= 365 * 24 * HOUR;
    }, 'off, or a time to live from 1m to 8760h, such as "1h" or "30d"'),
  })
  .strict();

/** Split matching jobs into parts (#27) for everyone, as `--split` would: `[date:month]`. */
const splitRule = z
  .object({
    ...base,
    split: z
      .array(z.string().min(1).max(32))
      .min(1)
      .max(8)
      .refine((words) => {
        try {
          parseSplit(words);
          return true;
        } catch {
          return false; // not a split: the refinement's message says what is
        }
      }, "a split is date:month, date:N, param, step, levelist, number or time, each once"),
  })
  .strict();

const KINDS = [
  ["limit", limitRule],
  ["priority", priorityRule],
  ["deny", denyRule],
  ["cache", cacheRule],
  ["split", splitRule],
] as const;

/** A rule is checked against the schema of its kind, so that problems name their own key (and line). */
const rule = z.unknown().transform((value, ctx): Rule => {
  const keys = value !== null && typeof value === "object" ? Object.keys(value) : [];
  const kinds = KINDS.filter(([k]) => keys.includes(k));
  if (kinds.length !== 1) {
    ctx.issues.push({
      code: "custom",
      input: value,
      message:
        "a rule has a name and exactly one of limit (with optional per), priority, deny, cache or split",
    });
    return z.NEVER;
  }
  const parsed = kinds[0]![1].safeParse(value);
  if (parsed.success) return parsed.data;
  for (const issue of parsed.error.issues)
    ctx.issues.push({ code: "custom", input: value, path: issue.path, message: issue.message });
  return z.NEVER;
});

export type LimitRule = z.infer<typeof limitRule>;
export type PriorityRule = z.infer<typeof priorityRule>;
export type DenyRule = z.infer<typeof denyRule>;
export type CacheRule = z.infer<typeof cacheRule>;
export type SplitRule = z.infer<typeof splitRule>;
export type Rule = LimitRule | PriorityRule | DenyRule | CacheRule | SplitRule;

export const rulesSchema = z
  .object({
    /** Free slots go round-robin across distinct values of this key (among jobs of equal priority). */
    fairShare: perKey.default("user"),
    /** Priority points a queued job gains per minute of waiting, up to the highest rule priority. */
    agingPerMinute: z.number().min(0).max(1000).default(1),
    /**
     * Fair share by recent use: a value of the fairness key loses `weight` priority points per
     * hour of MARS time its jobs used in the last `window` (src/qos/usage.ts).
     */
    usage: z
      .object({
        window: z.string().refine((w) => {
          const ms = parseDuration(w);
          return ms !== undefined && ms >= MINUTE && ms <= 30 * 24 * HOUR;
        }, "a duration from 1m to 720h, such as 24h"),
        weight: z.number().min(0).max(1_000_000),
      })
      .strict()
      .optional(),
    rules: z.array(rule).max(200).default([]),
  })
  .strict()
  .superRefine((r, ctx) => {
    const seen = new Set<string>();
    r.rules.forEach((x, i) => {
      if (seen.has(x.name))
        ctx.addIssue({
          code: "custom",
          path: ["rules", i, "name"],
          message: `duplicate rule name ${x.name}`,
        });
      seen.add(x.name);
    });
  });
export type QosRules = z.infer<typeof rulesSchema>;

/** The usage window of these rules, in ms (undefined without `usage`). */
export function usageWindowMs(rules: QosRules): number | undefined {
  return rules.usage && parseDuration(rules.usage.window);
}

/** No rules: one lane per user, nothing limited, denied or preferred. */
export const NO_RULES: QosRules = rulesSchema.parse({});

export function isLimit(r: Rule): r is LimitRule {
  return "limit" in r;
}
export function isPriority(r: Rule): r is PriorityRule {
  return "priority" in r;
}
export function isCache(r: Rule): r is CacheRule {
  return "cache" in r;
}
export function isSplit(r: Rule): r is SplitRule {
  return "split" in r;
}

export function isDeny(r: Rule): r is DenyRule {
  return "deny" in r;
}

export interface RuleProblem {
  line: number;
  column: number;
  path: string;
  message: string;
}

/** Parse and validate a rules file. Throws QosRulesError listing every problem with its line. */
export function parseRules(text: string, source = "rules"): QosRules {
  const { LineCounter, parseDocument } = yaml();
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true });
  const problems: RuleProblem[] = doc.errors.map((e) => {
    const pos = lineCounter.linePos(e.pos[0]);
    return { line: pos.line, column: pos.col, path: "", message: e.message.split("\n")[0]! };
  });
  if (problems.length === 0) {
    const parsed = rulesSchema.safeParse(doc.toJS() ?? {});
    if (parsed.success) return parsed.data;
    for (const issue of parsed.error.issues) {
      const path = issue.path.filter((p): p is string | number => typeof p !== "symbol");
      // An unknown key is found at the key itself, not at the object holding it.
      if (issue.code === "unrecognized_keys" && issue.keys[0] !== undefined) path.push(issue.keys[0]);
      const at = nodeOffset(doc, path);
      const pos = lineCounter.linePos(at);
      problems.push({ line: pos.line, column: pos.col, path: path.join("."), message: issue.message });
    }
  }
  const lines = problems.map(
    (p) => `${source}:${p.line}:${p.column}: ${p.path ? `${p.path}: ` : ""}${p.message}`,
  );
  throw new QosRulesError(`the QoS rules are invalid; nothing was changed\n${lines.join("\n")}`, {
    errors: problems,
  });
}

/** Where in the text the deepest existing node on `path` starts (so a missing key points at its parent). */
function nodeOffset(doc: Document, path: Array<string | number>): number {
  for (let n = path.length; n >= 0; n--) {
    const node = n === 0 ? doc.contents : doc.getIn(path.slice(0, n), true);
    if (yaml().isNode(node) && node.range) return node.range[0];
  }
  return 0;
}

/** The fleet-wide cap of a queue's consumer (`MARS_MAX_CONCURRENT_CONNECTIONS`) as a limit rule, `fleet`. */
export function withFleetCap(rules: QosRules, cap: number): QosRules {
  if (cap <= 0) return rules;
  const fleet: LimitRule = { name: "fleet", limit: cap };
  return { ...rules, rules: [...rules.rules.filter((r) => r.name !== "fleet"), fleet] };
}
