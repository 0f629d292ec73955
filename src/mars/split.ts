/**
 * Splitting one MARS retrieve into parts that together ask for exactly its fields (#27): by date
 * (every N days, or by calendar month) and by the values of list keywords. Pure: the client plans
 * the parts, the worker checks a part's place in its parent by these same functions.
 *
 * A part's request is the parent's with the split keywords narrowed to the part's values, written
 * as plain lists (`date=20240101/20240102/...`), so that MARS and the simulator expand nothing.
 */
import { z } from "zod";
import { MarsFleetError } from "../core/index.js";
import { dateToDays, expandDates, expandIntegers, expandTimes } from "./expand.js";
import type { MarsRequest } from "./request.js";

/** List keywords a job may be split on, besides `date`. */
export const SPLIT_KEYWORDS = ["param", "step", "levelist", "number", "time"] as const;
export type SplitKeyword = (typeof SPLIT_KEYWORDS)[number];

/** The most parts one job may be split into, unless the split says fewer. */
export const MAX_SPLIT_PARTS = 64;
/** The longest `date:N` (days): ten years. */
const MAX_SPLIT_DAYS = 3660;

/** How to split: `date` by `days` or by calendar `month`, and keywords one value per part. */
export const splitSpecSchema = z.object({
  date: z
    .union([z.object({ days: z.number().int().min(1).max(MAX_SPLIT_DAYS) }), z.literal("month")])
    .optional(),
  keywords: z.array(z.enum(SPLIT_KEYWORDS)).default([]),
  maxParts: z.number().int().min(2).max(MAX_SPLIT_PARTS).default(MAX_SPLIT_PARTS),
});
export type SplitSpec = z.infer<typeof splitSpecSchema>;

/** A split that makes no sense for the request, or a spec that cannot be read. Never retried. */
export class SplitInvalidError extends MarsFleetError {
  constructor(message: string, details: Record<string, unknown> = {}) {
    super("SPLIT_INVALID", message, { details });
  }
}

/**
 * Read split words as the CLI and the API take them: `date:month`, `date:7` (days), `param`,
 * `step`, `levelist`, `number`, `time`, each at most once.
 */
export function parseSplit(words: readonly string[], maxParts?: number): SplitSpec {
  const spec: SplitSpec = { keywords: [], maxParts: maxParts ?? MAX_SPLIT_PARTS };
  for (const raw of words) {
    for (const word of raw.split(",").map((w) => w.trim().toLowerCase())) {
      if (word === "") continue;
      const [key, arg, extra] = word.split(":");
      if (key === "date") {
        if (spec.date !== undefined) throw new SplitInvalidError(`"date" is given twice`, { split: word });
        const days = Number(arg);
        if (arg === "month") spec.date = "month";
        else if (
          arg !== undefined &&
          extra === undefined &&
          Number.isInteger(days) &&
          days >= 1 &&
          days <= MAX_SPLIT_DAYS
        )
          spec.date = { days };
        else throw new SplitInvalidError(`split "${word}": use date:month or date:N (days)`, { split: word });
      } else if ((SPLIT_KEYWORDS as readonly string[]).includes(key!) && arg === undefined) {
        if (spec.keywords.includes(key as SplitKeyword))
          throw new SplitInvalidError(`"${key}" is given twice`, { split: word });
        spec.keywords.push(key as SplitKeyword);
      } else {
        throw new SplitInvalidError(
          `split "${word}": not one of date:month, date:N, ${SPLIT_KEYWORDS.join(", ")}`,
          { split: word },
        );
      }
    }
  }
  if (spec.date === undefined && spec.keywords.length === 0)
    throw new SplitInvalidError("a split names at least one of date or a keyword", {});
  if (spec.maxParts < 2 || spec.maxParts > MAX_SPLIT_PARTS || !Number.isInteger(spec.maxParts))
    throw new SplitInvalidError(`the part cap is 2 to ${MAX_SPLIT_PARTS}`, { maxParts: spec.maxParts });
  return spec;
}

/** The split as words again (`date:month`, `param`): what records and logs show. */
export function splitWords(spec: SplitSpec): string[] {
  const date =
    spec.date === undefined ? [] : [spec.date === "month" ? "date:month" : `date:${spec.date.days}`];
  return [...date, ...spec.keywords];
}

/** The values of one split keyword, each once, in the request's own order, ranges written out. */
function keywordValues(req: MarsRequest, key: SplitKeyword): string[] {
  const tokens = req.params[key];
  if (!tokens) throw new SplitInvalidError(`the request has no "${key}" to split on`, { keyword: key });
  const expanded =
    key === "param"
      ? tokens.map((t) => t.toLowerCase())
      : key === "time"
        ? expandTimes(tokens).map((t) => String(t).padStart(4, "0"))
        : expandIntegers(key, tokens).map(String);
  return [...new Set(expanded)];
}

/** The request's dates (YYYYMMDD), each once, grouped as the spec says, in date order. */
function dateGroups(req: MarsRequest, how: NonNullable<SplitSpec["date"]>, today: Date): string[][] {
  const tokens = req.params["date"];
  if (!tokens) throw new SplitInvalidError(`the request has no "date" to split on`, { keyword: "date" });
  const dates = [...new Set(expandDates(tokens, today))].sort((a, b) => a - b);
  const groups = new Map<number, string[]>();
  const first = dateToDays(String(dates[0]), today);
  for (const ymd of dates) {
    const group =
      how === "month"
        ? Math.floor(ymd / 100)
        : Math.floor((dateToDays(String(ymd), today) - first) / how.days);
    const list = groups.get(group) ?? [];
    list.push(String(ymd));
    groups.set(group, list);
  }
  return [...groups.values()];
}

/**
 * The parts of a job: each a copy of its one retrieve with the split keywords narrowed. Refused:
 * a job of several requests or of another verb, a keyword the request lacks, a split into one
 * part, or more parts than the cap.
 */
export function planSplit(
  requests: readonly MarsRequest[],
  spec: SplitSpec,
  today = new Date(),
): MarsRequest[][] {
  if (requests.length !== 1 || requests[0]!.verb !== "retrieve")
    throw new SplitInvalidError("only a job of one retrieve can be split", { requests: requests.length });
  const req = requests[0]!;
  if (req.params["target"] !== undefined)
    throw new SplitInvalidError("a split job's request names no target of its own", {});
  const axes: Array<{ key: string; groups: string[][] }> = [];
  if (spec.date !== undefined) axes.push({ key: "date", groups: dateGroups(req, spec.date, today) });
  for (const key of spec.keywords) {
    axes.push({ key, groups: keywordValues(req, key).map((v) => [v]) });
  }
  for (const axis of axes) {
    if (axis.groups.length < 2)
      throw new SplitInvalidError(`"${axis.key}" has one value here: nothing to split`, {
        keyword: axis.key,
      });
  }
  const total = axes.reduce((n, a) => n * a.groups.length, 1);
  if (total > spec.maxParts)
    throw new SplitInvalidError(`the split makes ${total} parts; at most ${spec.maxParts}`, {
      parts: total,
      maxParts: spec.maxParts,
    });
  // The cartesian product, the first axis outermost (date before keywords, as given).
  let parts: Array<Record<string, string[]>> = [{}];
  for (const axis of axes) parts = parts.flatMap((p) => axis.groups.map((g) => ({ ...p, [axis.key]: g })));
  return parts.map((narrow) => [{ verb: req.verb, params: { ...req.params, ...narrow } }]);
}

/** A part's job id: the parent's with `-p<N>` (1-based); the parent's id leaves room for it. */
export function partId(parentId: string, index: number): string {
  return `${parentId}-p${index}`;
}

/** The ids of a split job's parts, in part order. */
export function partIds(parentId: string, total: number): string[] {
  return Array.from({ length: total }, (_, i) => partId(parentId, i + 1));
}

/** Where a part writes: a hidden file beside the parent's target, named by the parent and the part. */
export function partTarget(parentTarget: string, parentId: string, index: number): string {
  const slash = parentTarget.lastIndexOf("/");
  const dir = slash < 0 ? "" : parentTarget.slice(0, slash + 1);
  const name = parentTarget.slice(slash + 1);
  return `${dir}.${name}.${parentId}.p${index}`;
}
