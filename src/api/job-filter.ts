/**
 * Which jobs a list shows (GET /v1/jobs, the live view, the failures by error code): a filter from
 * the query, already scoped to what the key may see (scope.ts), and the order of the list.
 */
import type { JobRecord } from "../broker/index.js";
import { byNewest } from "./scope.js";

export interface JobFilter {
  state?: JobRecord["state"];
  user?: string;
  queue?: string;
  /** A MARS `dataset` value any of the job's requests names (without case). */
  dataset?: string;
  /** The error code a failed job ended with. */
  code?: string;
  /** Part of the job's id or of its environ's request_id (without case). */
  q?: string;
  /** The id of the job `q` names as the caller's own API requestId (an exact match). */
  qJob?: string;
  /** Submitted on or after this UTC day (YYYY-MM-DD). */
  from?: string;
  /** Submitted on or before this UTC day. */
  to?: string;
  /** Show the parts of split jobs too (#27); by default a split job is one job, its parts hidden. */
  parts?: boolean;
}

const DAY_MS = 86_400_000;

/** Whether a record passes the filter. */
export function jobMatcher(f: JobFilter): (r: JobRecord) => boolean {
  const from = f.from === undefined ? -Infinity : Date.parse(`${f.from}T00:00:00Z`);
  const to = f.to === undefined ? Infinity : Date.parse(`${f.to}T00:00:00Z`) + DAY_MS;
  const dataset = f.dataset?.toLowerCase();
  const q = f.q?.toLowerCase();
  return (r) =>
    (f.parts === true || r.part === undefined) &&
    (f.state === undefined || r.state === f.state) &&
    (f.user === undefined || r.environ["user_id"] === f.user) &&
    (f.queue === undefined || r.queue === f.queue) &&
    (f.code === undefined || r.error?.code === f.code) &&
    (dataset === undefined ||
      r.requests.some((req) => (req.params["dataset"] ?? []).some((v) => v.toLowerCase() === dataset))) &&
    (q === undefined ||
      r.id === f.qJob ||
      r.id.toLowerCase().includes(q) ||
      (r.environ["request_id"] ?? "").toLowerCase().includes(q)) &&
    r.submittedAt >= from &&
    r.submittedAt < to;
}

/** A list's order: newest first (the default) or oldest first; ties by id, so a cursor keeps its place. */
export function byOrder(order: "newest" | "oldest"): (a: JobRecord, b: JobRecord) => number {
  return order === "newest" ? byNewest : (a, b) => -byNewest(a, b);
}

/** Failed jobs by error code: how many, and the newest few of each, most frequent code first. */
export function failuresByCode(
  records: JobRecord[],
  newest = 5,
): Array<{ code: string; count: number; jobs: string[] }> {
  const groups = new Map<string, JobRecord[]>();
  for (const r of records)
    if (r.state === "failed") {
      const code = r.error?.code ?? "UNKNOWN";
      groups.set(code, [...(groups.get(code) ?? []), r]);
    }
  return [...groups]
    .map(([code, list]) => ({
      code,
      count: list.length,
      jobs: list
        .sort(byNewest)
        .slice(0, newest)
        .map((r) => r.id),
    }))
    .sort((a, b) => b.count - a.count || a.code.localeCompare(b.code));
}
