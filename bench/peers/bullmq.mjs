// The benchmark's BullMQ peer: the same workload as the fleet's heavy-MARS scenario on BullMQ and
// Redis, so every run compares the two on the same machine.
//
//   node bullmq.mjs worker <redis port> <queue> <concurrency> <MARS command> <scratch dir>
//     runs jobs until SIGTERM: writes the request file, spawns the command (words split on
//     spaces, the request file last), reads its output
//   node bullmq.mjs client <redis port> <queue> <jobs> <target dir> [<warm-up jobs>]
//     runs the warm-up jobs and prints "warm", waits for a line on stdin; then adds the jobs, waits
//     until every one completed, prints {"ms": ..., "cpuMs": ...}
import { spawn } from "node:child_process";
import { writeFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { Queue, QueueEvents, Worker } from "bullmq";

const [mode, port, queueName, ...rest] = process.argv.slice(2);
const connection = { host: "127.0.0.1", port: Number(port), maxRetriesPerRequest: null };

function runMars(command, requestFile, target, param) {
  writeFileSync(requestFile, `retrieve,\n  param=${param},\n  date=20240101,\n  target="${target}"\n`);
  return new Promise((resolve, reject) => {
    const [file, ...args] = command.split(" ");
    const child = spawn(file, [...args, requestFile], { stdio: ["ignore", "pipe", "pipe"] });
    let lines = 0;
    const count = (chunk) => {
      for (const b of chunk) if (b === 10) lines++;
    };
    child.stdout.on("data", count);
    child.stderr.on("data", count);
    child.once("error", reject);
    child.once("close", (code) => {
      rmSync(requestFile, { force: true });
      if (code === 0) resolve(lines);
      else reject(new Error(`MARS exited ${code}`));
    });
  });
}

if (mode === "worker") {
  const [concurrency, command, scratch] = rest;
  const worker = new Worker(
    queueName,
    async (job) =>
      runMars(
        command,
        join(scratch, `${job.id}.${process.pid}.mars`),
        job.data.target,
        job.data.param ?? "2t",
      ),
    { connection, concurrency: Number(concurrency) },
  );
  await worker.waitUntilReady();
  process.stdout.write("ready\n");
  process.once("SIGTERM", () => void worker.close().then(() => process.exit(0)));
} else if (mode === "client") {
  const [jobs, targetDir, warm] = rest;
  const queue = new Queue(queueName, { connection });
  // every add in flight listens for the queue closing
  queue.setMaxListeners(Math.max(Number(jobs), Number(warm ?? 0)) + 10);
  // The queue is new: its event stream is read from the start. From "$", QueueEvents' default, the
  // events published before its first blocking read (fast warm-up jobs' completions) were missed.
  const events = new QueueEvents(queueName, { connection, lastEventId: "0" });
  await events.waitUntilReady();
  // Jobs are counted by their completion events (listened to before the first add): a job that
  // completes and is removed before its add returns has no key left for waitUntilFinished to find.
  const run = (n, data, batch) =>
    new Promise((resolve, reject) => {
      let done = 0;
      const ours = (jobId) => String(jobId).startsWith(`${batch}-`);
      const onCompleted = ({ jobId }) => {
        if (ours(jobId) && ++done === n) finish();
      };
      const onFailed = ({ jobId, failedReason }) => {
        if (ours(jobId)) finish(new Error(`job ${jobId} failed: ${failedReason}`));
      };
      const finish = (err) => {
        events.off("completed", onCompleted);
        events.off("failed", onFailed);
        if (err) reject(err);
        else resolve();
      };
      events.on("completed", onCompleted);
      events.on("failed", onFailed);
      Promise.all(
        Array.from({ length: n }, (_, i) =>
          queue.add("mars", data(i), { jobId: `${batch}-${i}`, removeOnComplete: true }),
        ),
      ).catch(finish);
    });
  // Warm-up jobs, as the fleet's (the heavy stand-in skips its spawning for param=msl); then wait
  // for "go" on stdin, so that the measurement of the workers and Redis starts with ours.
  if (Number(warm ?? 0) > 0) {
    // in rounds of 500: the queue's event stream keeps about 10 000 events (four a job), and a
    // reader behind thousands of adds at once could find completions trimmed away
    for (let first = 0; first < Number(warm); first += 500) {
      const n = Math.min(500, Number(warm) - first);
      const data = (i) => ({ target: join(targetDir, `warm-${first + i}.grib`), param: "msl" });
      await run(n, data, `warm${first}`);
    }
    process.stdout.write("warm\n");
    await new Promise((resolve) => process.stdin.once("data", resolve));
  }
  const cpu0 = process.cpuUsage();
  const t0 = Date.now();
  await run(Number(jobs), (i) => ({ target: join(targetDir, `${i}.grib`) }), "job");
  const ms = Date.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  process.stdout.write(JSON.stringify({ ms, cpuMs: (cpu.user + cpu.system) / 1000 }) + "\n");
  await events.close();
  await queue.close();
} else {
  process.stderr.write("usage: bullmq.mjs worker|client ...\n");
  process.exit(2);
}
