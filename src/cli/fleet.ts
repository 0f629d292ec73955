/** Fleet commands: submit, status, logs, cancel, jobs, workers, broker init|info|auth. Output for people or --json. */
import { basename, dirname, resolve } from "node:path";
import { accounting, Fleet, type JobHandle, LogPresenter, workerEntries } from "../client/index.js";
import {
  connectWithConfig,
  consumerName,
  DEAD_STREAM,
  EVENTS_STREAM,
  inboxPrefixFor,
  type JobRecord,
  JOBS_STREAM,
  type JobState,
  provision,
  topologyOf,
  type WorkerInfo,
} from "../broker/index.js";
import type { FleetConfig } from "../config/index.js";
import { ConfigError, errorFromRecord, formatDuration } from "../core/index.js";
import { queueSummary } from "../qos/index.js";
import { EXIT, ProgressDisplay, exitCodeFor, print, showJobEvent } from "./output.js";
import { parseEnviron, readRequestFile } from "./request-file.js";

async function withFleet<T>(config: FleetConfig, fn: (fleet: Fleet) => Promise<T>): Promise<T> {
  const fleet = await Fleet.connect({ config });
  try {
    return await fn(fleet);
  } finally {
    await fleet.close();
  }
}

/** Exit code for a finished job record. */
function exitFor(record: JobRecord): number {
  if (record.state === "succeeded") return EXIT.ok;
  return record.error ? exitCodeFor(errorFromRecord(record.error)) : EXIT.internal;
}

/** Follow a job: filtered logs (or all), a progress bar, state changes; returns the final record. */
async function follow(
  job: JobHandle,
  opts: { json: boolean; filterLogs: boolean; label: string },
): Promise<JobRecord> {
  const display = new ProgressDisplay(!opts.json && process.stderr.isTTY === true);
  const presenter = new LogPresenter(
    { filterLogs: opts.filterLogs, onLog: (l) => display.log(l) },
    { id: job.id, cancel: () => void job.cancel() },
  );
  const ac = new AbortController();
  const onSignal = (): void => {
    display.log(`cancelling job ${job.id} (Ctrl-C again to leave it running)`);
    process.off("SIGINT", onSignal);
    process.once("SIGINT", () => ac.abort());
    void job.cancel();
  };
  process.once("SIGINT", onSignal);
  try {
    for await (const ev of job.events({ signal: ac.signal })) {
      if (opts.json) {
        process.stdout.write(JSON.stringify({ jobId: job.id, ...ev }) + "\n");
        continue;
      }
      showJobEvent(ev, presenter, display, opts.label);
    }
  } finally {
    process.off("SIGINT", onSignal);
    presenter.end();
    display.stop();
  }
  return job.status();
}

export interface SubmitArgs {
  request: string;
  target: string;
  queue?: string;
  follow: boolean;
  requestId?: string;
  environ?: string[];
  split?: string[];
  callback?: string;
  callbackSecret?: string;
  json: boolean;
}

export async function submitCommand(args: SubmitArgs, config: FleetConfig): Promise<number> {
  const request = await readRequestFile(args.request);
  return withFleet(config, async (fleet) => {
    const target = resolve(config.sharedRoot, args.target);
    const job = await fleet.submit(request, {
      targetDir: dirname(target),
      targetFname: basename(target),
      environ: parseEnviron(args.environ),
      ...(args.queue !== undefined && { queue: args.queue }),
      ...(args.requestId !== undefined && { requestId: args.requestId }),
      ...(args.split !== undefined && args.split.length > 0 && { split: args.split }),
      watchResult: false, // followed by its events, or not at all
      watchEvents: args.follow,
      ...(args.callback !== undefined && {
        callback: {
          url: args.callback,
          ...(args.callbackSecret !== undefined && { secret: args.callbackSecret }),
        },
      }),
    });
    // A secret made for the callback is shown once, on stderr (it signs what the receiver gets).
    if (job.callbackSecret !== undefined && args.callbackSecret === undefined)
      process.stderr.write(`callback secret (X-Mars-Signature key): ${job.callbackSecret}\n`);
    if (!args.follow) {
      print(args.json, { jobId: job.id }, () => job.id);
      return EXIT.ok;
    }
    const record = await follow(job, {
      json: args.json,
      filterLogs: config.filterLogs,
      label: job.id.slice(0, 8),
    });
    print(args.json, record, () => describeRecord(record, config));
    return exitFor(record);
  });
}

/** A split job's parts in a line: how many are done, running, waiting, and any that ended without a result. */
function describeParts(parts: JobRecord[]): string {
  const count = (states: JobState[]) => parts.filter((p) => states.includes(p.state)).length;
  const bad = parts.filter((p) => p.state === "failed" || p.state === "cancelled");
  return [
    `${count(["succeeded"])}/${parts.length} done`,
    `${count(["running"])} running`,
    `${count(["queued", "retrying"])} waiting`,
    ...bad.map((p) => `part ${p.part?.index ?? "?"} ${p.state}${p.error ? ` (${p.error.code})` : ""}`),
  ].join(", ");
}

function describeRecord(r: JobRecord, config: FleetConfig): string {
  const lines = [
    `${r.id}: ${r.state} (attempt ${r.attempt}/${r.maxAttempts}${r.worker ? `, worker ${r.worker}` : ""})`,
  ];
  lines.push(`  target: ${resolve(config.sharedRoot, r.target)}`);
  if (r.split) lines.push(`  split: ${r.split.by.join(", ")} into ${r.split.parts} parts`);
  if (r.part) lines.push(`  part ${r.part.index} of ${r.part.total} of ${r.part.parent}`);
  if (r.result) lines.push(`  result: ${r.result.bytes} bytes in ${formatDuration(r.result.elapsedMs)}`);
  if (r.error) lines.push(`  error: ${r.error.code}: ${r.error.message}`);
  return lines.join("\n");
}

export async function statusCommand(id: string, json: boolean, config: FleetConfig): Promise<number> {
  return withFleet(config, async (fleet) => {
    const job = await fleet.job(id);
    const record = await job.status();
    const waiting = await fleet.explain(id);
    const parts = record.split ? await job.parts() : undefined;
    const shown = {
      ...record,
      ...(waiting.length > 0 && { waiting }),
      ...(parts && { parts: parts.map((p) => ({ id: p.id, state: p.state, bytes: p.result?.bytes })) }),
    };
    print(json, shown, () =>
      [
        describeRecord(record, config),
        ...(parts ? [`  parts: ${describeParts(parts)}`] : []),
        ...waiting.map((w) => `  waits: ${w}`),
      ].join("\n"),
    );
    return EXIT.ok;
  });
}

export async function logsCommand(
  id: string,
  followLive: boolean,
  json: boolean,
  config: FleetConfig,
): Promise<number> {
  return withFleet(config, async (fleet) => {
    const job = await fleet.job(id);
    const ac = new AbortController();
    if (!followLive) {
      // Replay what is stored, then stop: the job may still be running.
      const status = await job.status();
      if (status.state === "running" || status.state === "queued" || status.state === "retrying")
        setTimeout(() => ac.abort(), 1000).unref();
    }
    for await (const ev of job.events({ signal: ac.signal })) {
      if (ev.type !== "log") continue;
      process.stdout.write(json ? JSON.stringify(ev) + "\n" : ev.line + "\n");
    }
    return EXIT.ok;
  });
}

export async function cancelCommand(id: string, json: boolean, config: FleetConfig): Promise<number> {
  return withFleet(config, async (fleet) => {
    const job = await fleet.job(id);
    const cancelled = await job.cancel();
    const record = await job.status();
    print(json, { jobId: id, cancelled, state: record.state }, () =>
      cancelled
        ? `${id}: cancel requested (${record.state})`
        : `${id}: already ${record.state}, nothing to cancel`,
    );
    return EXIT.ok;
  });
}

export async function jobsCommand(
  state: JobState | undefined,
  json: boolean,
  config: FleetConfig,
  parts = false,
): Promise<number> {
  return withFleet(config, async (fleet) => {
    const jobs = (await fleet.jobs(state ? { state } : {})).filter((j) => parts || j.part === undefined);
    print(json, jobs, () =>
      jobs.length === 0
        ? "no jobs"
        : jobs
            .map(
              (j) =>
                `${j.id}  ${j.state.padEnd(9)}  attempt ${j.attempt}  ${new Date(j.submittedAt).toISOString()}  ${j.target}`,
            )
            .join("\n"),
    );
    return EXIT.ok;
  });
}

/** Finished jobs per user and UTC day: MARS time, bytes, and what the result cache served. */
export async function usageCommand(
  q: { user?: string; from?: string; to?: string },
  json: boolean,
  config: FleetConfig,
): Promise<number> {
  for (const [flag, day] of [
    ["from", q.from],
    ["to", q.to],
  ] as const)
    if (day !== undefined && !/^\d{4}-\d{2}-\d{2}$/.test(day))
      throw new ConfigError(`--${flag} must be a day as YYYY-MM-DD, got ${JSON.stringify(day)}`, {
        setting: flag,
      });
  const rows = await withFleet(config, async (fleet) => accounting(await fleet.jobs(), q));
  print(json, { usage: rows }, () =>
    rows.length === 0
      ? "no finished jobs"
      : [
          "user  day  jobs  succeeded  MARS s  bytes  cache hits  MARS s saved",
          ...rows.map((r) =>
            [
              r.user,
              r.day,
              r.jobs,
              r.succeeded,
              r.marsSeconds,
              r.bytes,
              r.cacheHits,
              r.marsSecondsSaved,
            ].join("  "),
          ),
        ].join("\n"),
  );
  return EXIT.ok;
}

export async function workersCommand(json: boolean, config: FleetConfig): Promise<number> {
  return withFleet(config, async (fleet) => {
    const workers = await fleet.workers();
    print(json, workers, () =>
      workers.length === 0
        ? "no live workers"
        : workers
            .map(
              (w: WorkerInfo) =>
                `${w.id}  ${w.state.padEnd(8)}  queue ${w.queue}  ${w.running.length}/${w.slots} slots busy` +
                (w.usage ? `  cpu ${w.usage.cpuPercent}%  rss ${w.usage.rssMb} MB` : "") +
                `  seen ${formatDuration(Date.now() - w.lastSeen)} ago`,
            )
            .join("\n"),
    );
    return EXIT.ok;
  });
}

export async function authCommand(
  opts: { dir: string; passwords: boolean; force: boolean },
  json: boolean,
): Promise<number> {
  if (opts.dir === "")
    throw new ConfigError("broker auth needs --out DIR: where to write auth.conf and the credentials");
  // Loaded on demand: only `broker auth` writes credentials (src/broker/index.ts leaves it out).
  const { AUTH_CONF, TRUST_KEY_FILE, generateAuth } = await import("../broker/credentials.js");
  const generated = await generateAuth(opts);
  print(json, generated, () =>
    [
      `wrote ${generated.authConf}: include it in nats-server.conf (include "${AUTH_CONF}"), then reload the server`,
      ...generated.roles.map(
        (r) =>
          `${r.role.padEnd(9)} ${r.file}  (${opts.passwords ? "an env file: MARS_NATS_USER, MARS_NATS_PASSWORD" : "MARS_NATS_CREDS"})`,
      ),
      `signing   ${generated.signingKey}  (admins only: MARS_SIGNING_KEY; signs QoS rules and API keys)`,
      `every role: MARS_TRUST_KEY=${generated.trustKey}  (also in ${TRUST_KEY_FILE}${opts.passwords ? " and each env file" : ""})`,
      "Give each process its role's file only; the files are readable by their owner alone.",
      ...generated.roles
        .filter((r) => r.role === "observer")
        .map((r) =>
          opts.passwords
            ? `nats CLI as observer: nats --user ${r.identity} --password <from ${r.file}> --inbox-prefix ${inboxPrefixFor(r.identity)} stream ls`
            : `nats CLI as observer: nats --nkey ${r.file} --inbox-prefix ${inboxPrefixFor(r.identity)} stream ls`,
        ),
    ].join("\n"),
  );
  return EXIT.ok;
}

export async function brokerCommand(
  action: "init" | "info",
  json: boolean,
  config: FleetConfig,
): Promise<number> {
  const conn = await connectWithConfig(config, "mars-fleet-admin");
  try {
    if (action === "init") {
      const report = await provision(conn.nc, conn.jsm, topologyOf(config));
      print(json, report, () =>
        [
          ...report.created.map((c) => `created  ${c}`),
          ...report.existing.map((c) => `exists   ${c}`),
          ...report.drift.map((d) => `DRIFT    ${d}`),
        ].join("\n"),
      );
      return EXIT.ok;
    }
    const streams = await Promise.all(
      // A stream that cannot be read is shown as missing: this is a report, not a check.
      [JOBS_STREAM, EVENTS_STREAM, DEAD_STREAM].map((s) => conn.jsm.streams.info(s).catch(() => undefined)),
    );
    const consumer = await conn.jsm.consumers
      .info(JOBS_STREAM, consumerName(config.queue))
      .catch(() => undefined); // a missing consumer is shown as missing
    const summary = consumer
      ? await queueSummary(conn.jsm, config.queue, await workerEntries(conn))
      : undefined;
    const info = {
      streams: streams
        .filter(Boolean)
        .map((s) => ({ name: s!.config.name, messages: s!.state.messages, bytes: s!.state.bytes })),
      consumer: consumer && {
        name: consumer.name,
        // Summed over the queue's lanes (the lane-less consumer included).
        pending: summary?.queued ?? 0,
        running: summary?.running ?? 0,
        heldAside: summary?.heldAside ?? 0,
        lanes: summary?.laneCount ?? 0,
        redelivered: consumer.num_redelivered,
        maxAckPending: consumer.config.max_ack_pending,
      },
    };
    print(json, info, () =>
      [
        ...info.streams.map((s) => `stream ${s.name}: ${s.messages} messages, ${s.bytes} bytes`),
        info.consumer
          ? `consumer ${info.consumer.name}: ${info.consumer.pending} queued, ${info.consumer.running} running${info.consumer.heldAside ? ` (${info.consumer.heldAside} more held aside for a limit)` : ""} in ${info.consumer.lanes} lane(s), ${info.consumer.redelivered} redelivered, cap ${info.consumer.maxAckPending}`
          : `consumer ${consumerName(config.queue)}: missing (run: mars-fleet broker init)`,
      ].join("\n"),
    );
    return EXIT.ok;
  } finally {
    await conn.nc.close();
  }
}
