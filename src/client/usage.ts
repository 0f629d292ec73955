/**
 * Per-user accounting from job records: the one place both `GET /v1/usage` and `mars-fleet usage`
 * count from.
 */
import { TERMINAL_STATES, type JobRecord } from "../broker/index.js";

/** One user's finished jobs on one UTC day. */
export interface UsageRow {
  user: string;
  day: string;
  jobs: number;
  succeeded: number;
  /** Time MARS ran, over all attempts that reached the record. */
  marsSeconds: number;
  bytes: number;
  /** Jobs served from the result cache, their bytes, and the MARS time they saved. */
  cacheHits: number;
  cacheBytes: number;
  marsSecondsSaved: number;
}

/**
 * Accounting from the job records: per user and UTC day of finishing, jobs ended, how many
 * succeeded, MARS seconds and result bytes. Jobs not finished yet are not counted.
 */
export function accounting(
  records: JobRecord[],
  q: { user?: string; from?: string; to?: string },
): UsageRow[] {
  const rows = new Map<string, UsageRow>();
  for (const r of records) {
    if (r.finishedAt === undefined || !TERMINAL_STATES.has(r.state)) continue;
    const user = r.environ["user_id"] ?? "(none)";
    const dayOf = new Date(r.finishedAt).toISOString().slice(0, 10);
    if ((q.user !== undefined && user !== q.user) || (q.from && dayOf < q.from) || (q.to && dayOf > q.to))
      continue;
    const key = `${user}\u0000${dayOf}`;
    const row = rows.get(key) ?? {
      user,
      day: dayOf,
      jobs: 0,
      succeeded: 0,
      marsSeconds: 0,
      bytes: 0,
      cacheHits: 0,
      cacheBytes: 0,
      marsSecondsSaved: 0,
    };
    const seconds = (total: number, ms: number): number => Math.round((total + ms / 1000) * 1000) / 1000;
    rows.set(key, row);
    // A split job (#27) is one job and its file; its parts are where MARS ran (or the cache served).
    if (!r.part) {
      row.jobs++;
      if (r.state === "succeeded") row.succeeded++;
      row.bytes += r.result?.bytes ?? 0;
    }
    if (r.split) continue;
    const cached = r.result?.cached;
    if (cached) {
      // No MARS ran: what the cache served, and the MARS time that made it once.
      row.cacheHits++;
      row.cacheBytes += r.result?.bytes ?? 0;
      row.marsSecondsSaved = seconds(row.marsSecondsSaved, cached.savedMs);
    } else {
      const ran = r.result?.elapsedMs ?? (r.startedAt !== undefined ? r.finishedAt - r.startedAt : 0);
      row.marsSeconds = seconds(row.marsSeconds, ran);
    }
  }
  return [...rows.values()].sort((a, b) => a.day.localeCompare(b.day) || a.user.localeCompare(b.user));
}
