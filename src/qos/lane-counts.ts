/**
 * What the server holds per lane of a queue: jobs queued (not yet delivered) and in flight
 * (delivered, not yet acknowledged). Lanes with a consumer are counted by it; lanes whose consumer
 * no worker has created yet, by the stream's per-subject message counts.
 */
import type { JetStreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { z } from "zod";
import { JOBS_STREAM, jsApi, laneOfConsumer, subjects, type WorkerInfo } from "../broker/index.js";

export interface LaneCount {
  queued: number;
  inFlight: number;
  /** The lane's consumer exists (its name), or not yet. */
  consumer?: string;
}

/**
 * Messages held per lane (queued, or delivered and not yet acknowledged): one request, whatever the
 * number of lanes and consumers. What a worker counts every second. With `laneless`, a second
 * request counts the lane-less subject of earlier clients too (lane ""); without, lane "" is
 * left out of the answer, not counted as empty.
 */
export async function laneMessages(
  jsm: JetStreamManager,
  queue: string,
  opts: { laneless: boolean },
): Promise<Map<string, number>> {
  const info = await jsm.streams.info(JOBS_STREAM, { subjects_filter: `${subjects.jobs(queue)}.>` });
  const out = new Map<string, number>();
  const prefix = subjects.lanes(queue).length - 1;
  for (const [subject, n] of Object.entries(info.state.subjects ?? {})) out.set(subject.slice(prefix), n);
  if (opts.laneless) {
    const laneless = await jsm.streams.info(JOBS_STREAM, { subjects_filter: subjects.jobs(queue) });
    out.set("", laneless.state.subjects?.[subjects.jobs(queue)] ?? 0);
  }
  return out;
}

/** Queued and in-flight jobs per lane, from the lanes' consumers (for people: `qos show`, explanations). */
export async function laneCounts(jsm: JetStreamManager, queue: string): Promise<Map<string, LaneCount>> {
  const counts = new Map<string, LaneCount>();
  const info = await jsm.streams.info(JOBS_STREAM, { subjects_filter: subjects.lanes(queue) });
  const prefix = subjects.lanes(queue).length - 1;
  for (const [subject, n] of Object.entries(info.state.subjects ?? {}))
    counts.set(subject.slice(prefix), { queued: n, inFlight: 0 });
  for await (const c of await jsm.consumers.list(JOBS_STREAM)) {
    const lane = laneOfConsumer(queue, c.name);
    if (lane === undefined) continue;
    counts.set(lane, { queued: c.num_pending, inFlight: c.num_ack_pending, consumer: c.name });
  }
  return counts;
}

const msgGetSchema = z.object({ message: z.object({ data: z.string().optional() }) });

/** The next queued job message of a lane (its body), or undefined when there is none. */
export async function laneHead(nc: NatsConnection, queue: string, lane: string): Promise<unknown> {
  const body = JSON.stringify({ next_by_subj: subjects.lane(queue, lane), seq: 0 });
  const reply = await nc.request(jsApi.msgGet(JOBS_STREAM), new TextEncoder().encode(body));
  const parsed = msgGetSchema.safeParse(JSON.parse(new TextDecoder().decode(reply.data)));
  if (!parsed.success || parsed.data.message.data === undefined) return undefined; // none (an error reply)
  return JSON.parse(Buffer.from(parsed.data.message.data, "base64").toString("utf8"));
}

/** The lanes holding jobs, as people read them: the lane-less one named "(none)". */
export function activeLanes(
  counts: Map<string, LaneCount>,
  heldAside: ReadonlyMap<string, number> = new Map(),
): LaneRow[] {
  return [...counts]
    .filter(([, c]) => c.queued + c.inFlight > 0)
    .map(([lane, c]) => {
      // In flight on the server: running, or held aside by a worker for a limit.
      const held = Math.min(c.inFlight, heldAside.get(lane) ?? 0);
      const row = { lane: lane === "" ? "(none)" : lane, queued: c.queued, running: c.inFlight - held };
      return held > 0 ? { ...row, heldAside: held } : row;
    });
}

/** One lane as people read it. */
export interface LaneRow {
  lane: string;
  queued: number;
  running: number;
  /** Pulled by a worker and held aside for a limit (in flight on the server, not running). */
  heldAside?: number;
}

/** Jobs the queue's workers hold aside for a limit, per lane, as their registry entries say. */
export function heldAsideByLane(workers: readonly WorkerInfo[], queue: string): Map<string, number> {
  const held = new Map<string, number>();
  for (const w of workers)
    if (w.queue === queue)
      for (const x of w.waiting ?? [])
        if (x.lane !== undefined) held.set(x.lane, (held.get(x.lane) ?? 0) + 1);
  return held;
}

/** A queue as people read it: its jobs queued and running, in all and per lane holding any. */
export interface QueueSummary {
  queue: string;
  queued: number;
  running: number;
  /** Pulled and held aside for a limit by a worker: neither queued nor running. */
  heldAside: number;
  lanes: LaneRow[];
  /** How many lanes the server knows now (with jobs, or with a consumer; the lane-less one included). */
  laneCount: number;
}

/** One queue's summary, from what the server holds (what `broker info`, the API and the dashboard show). */
export async function queueSummary(
  jsm: JetStreamManager,
  queue: string,
  workers: readonly WorkerInfo[] = [],
): Promise<QueueSummary> {
  const counts = await laneCounts(jsm, queue);
  const lanes = activeLanes(counts, heldAsideByLane(workers, queue));
  return {
    queue,
    queued: lanes.reduce((n, l) => n + l.queued, 0),
    running: lanes.reduce((n, l) => n + l.running, 0),
    heldAside: lanes.reduce((n, l) => n + (l.heldAside ?? 0), 0),
    lanes,
    laneCount: counts.size,
  };
}
