/**
 * The result cache in a fleet (#28): a job whose request MARS would answer the same way as an
 * earlier one's completes without MARS, through the same fenced commit, also after every process
 * restarted; a corrupted entry is dropped and MARS runs; no target reaches the cache's folder.
 */
import assert from "node:assert/strict";
import { chmod, readFile, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type { Fleet } from "../src/client/fleet.js";
import { accounting } from "../src/client/usage.js";
import { existsSync } from "node:fs";
import { normaliseRequests } from "../src/mars/request.js";
import { requestKey } from "../src/mars/request-key.js";
import { parseRules } from "../src/qos/rules.js";
import { cli } from "./helpers/cli.js";
import { freePort } from "../src/local/server.js";
import { TestFleet } from "./helpers/fleet.js";

let tf: TestFleet;
const queue = TestFleet.queue("cache");
let settings: Record<string, string | number>;

before(async () => {
  tf = await TestFleet.start();
  settings = { queue, concurrency: 2, marsCommand: tf.countingMars, cacheMaxBytes: 50_000_000 };
});
after(async () => {
  await tf?.dispose();
});

const REQUEST = { param: "2t/msl", date: "20240101/to/20240103", grid: "10/10" };
/** The same data, written another way. */
const REWRITTEN = { PARAM: "151/2T", DATE: "2024-01-03/20240102/2024-01-01", grid: "10.0/10", levt: "sfc" };

async function run(fleet: Fleet, request: Record<string, string>, id: string) {
  const job = await fleet.submit(request, {
    targetDir: "cache",
    targetFname: `${id}.grib`,
    environ: { request_id: id, user_id: "ann" },
  });
  const result = await job.result();
  return {
    result,
    record: await job.status(),
    bytes: await readFile(result.target),
    log: await job.storedLog(),
  };
}

describe("result cache", { timeout: 120_000 }, () => {
  it("runs MARS once for the same data asked twice, also after every process restarted", async () => {
    let worker = await tf.worker(settings);
    let fleet = await tf.client({ queue });
    const first = await run(fleet, { ...REQUEST, levtype: "sfc" }, "cache-1");
    assert.equal(first.record.result?.cached, undefined, "the first job was served from the cache");
    const second = await run(fleet, REWRITTEN, "cache-2");
    const runs = await tf.invocations();
    assert.equal(runs.get("cache-1"), 1);
    assert.equal(runs.get("cache-2"), undefined, "MARS ran for the same data again");
    assert.deepEqual(second.bytes, first.bytes);
    assert.notEqual(second.result.target, first.result.target);
    assert.equal(second.record.state, "succeeded");
    assert.match(second.record.result?.cached?.key ?? "", /^[0-9a-f]{64}$/);
    assert.equal(second.record.result?.cached?.savedMs, first.record.result?.elapsedMs);
    // Its log: the run's that made the result, replayed, then where it came from.
    assert.ok(first.log.length > 3, `the first job logged ${first.log.length} lines`);
    assert.deepEqual(second.log.slice(0, -1), first.log);
    assert.match(second.log.at(-1) ?? "", /served from the result cache/);
    // Its own file: the target is a link to the entry, not the first job's file itself moved.
    assert.equal((await stat(first.result.target)).size, first.bytes.length);

    // Every process restarts: the worker, the broker, the client.
    worker.kill("SIGTERM");
    await worker.exited;
    await tf.server.restart();
    worker = await tf.worker(settings);
    fleet = await tf.client({ queue });
    const third = await run(fleet, REQUEST_WITH_SFC, "cache-3");
    assert.equal((await tf.invocations()).get("cache-3"), undefined, "MARS ran after the restart");
    assert.deepEqual(third.bytes, first.bytes);

    // Accounting: the hits, the bytes served from the cache and the MARS time saved, per user.
    const rows = accounting(await fleet.jobs(), { user: "ann" });
    const hits = rows.reduce((n, r) => n + r.cacheHits, 0);
    assert.equal(hits, 2);
    assert.equal(
      rows.reduce((n, r) => n + r.cacheBytes, 0),
      2 * first.bytes.length,
    );
    assert.ok(rows.reduce((n, r) => n + r.marsSecondsSaved, 0) > 0);
    // The same through the CLI.
    const shown = await cli(["usage", "--user", "ann", "--json"], tf.env({ queue }));
    assert.equal(shown.code, 0, shown.stderr);
    const cliRows = (JSON.parse(shown.stdout) as { usage: Array<{ cacheHits: number }> }).usage;
    assert.equal(
      cliRows.reduce((n, r) => n + r.cacheHits, 0),
      2,
    );
    const bad = await cli(["usage", "--from", "yesterday"], tf.env({ queue }));
    assert.equal(bad.code, 2, bad.stderr);
    assert.match(bad.stderr, /CONFIG_INVALID/);
  });

  it("drops a corrupted entry and runs MARS, then keeps the new result", async () => {
    await tf.worker(settings);
    const fleet = await tf.client({ queue });
    const request = { param: "10u", date: "20240105", grid: "10/10" };
    const first = await run(fleet, request, "corrupt-1");
    const key = (await run(fleet, request, "corrupt-2")).record.result?.cached?.key;
    assert.ok(key, "the second job was not a hit");
    const data = join(tf.sharedRoot, ".cache", key.slice(0, 2), `${key}.grib`);
    await chmod(data, 0o644);
    const bytes = await readFile(data);
    bytes[bytes.length - 10] = bytes[bytes.length - 10]! ^ 0xff;
    await writeFile(data, bytes); // in place: the first job's target shares these bytes
    const third = await run(fleet, request, "corrupt-3");
    assert.equal((await tf.invocations()).get("corrupt-3"), 1, "MARS did not run for a corrupted entry");
    assert.equal(third.record.result?.cached, undefined);
    assert.notDeepEqual(third.bytes, bytes, "the corrupted bytes were delivered");
    const fourth = await run(fleet, request, "corrupt-4");
    assert.equal(fourth.record.result?.cached?.key, key, "the new result was not kept");
    assert.deepEqual(fourth.bytes, third.bytes);
    assert.equal(first.record.state, "succeeded");
  });

  it("coalesces 20 identical submissions at once into one MARS run, 20 targets with the same bytes", async () => {
    const q = TestFleet.queue("coalesce");
    const slow = { MARS_SIM_FIELD_DELAY_MS: "300" };
    const ports = [await freePort(), await freePort()];
    for (const metricsPort of ports)
      await tf.worker({ ...settings, queue: q, concurrency: 4, metricsPort }, slow);
    const fleet = await tf.client({ queue: q });
    const request = { param: "2t", date: "20240110/to/20240114", grid: "10/10" }; // 5 fields, 1.5 s
    const jobs = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        fleet.submit(request, {
          targetDir: "coalesce",
          targetFname: `c${i}.grib`,
          environ: { request_id: `coalesce-${i}`, user_id: `u${i % 3}` },
        }),
      ),
    );
    const results = await Promise.all(jobs.map((j) => j.result()));
    const runs = [...(await tf.invocations())].filter(([id]) => id.startsWith("coalesce-"));
    assert.equal(runs.length, 1, `MARS ran for ${runs.map(([id]) => id).join(", ")}`);
    const first = await readFile(results[0]!.target);
    for (const r of results) assert.deepEqual(await readFile(r.target), first, `${r.target} differs`);
    const records = await Promise.all(jobs.map((j) => j.status()));
    assert.equal(records.filter((r) => r.result?.cached).length, 19, "joined jobs not marked as served");
    // Each joined job's log is the run's, once (followed live while it waited, the rest replayed),
    // then where its result came from; some of it reached them before the run ended.
    const leaderAt = records.findIndex((r) => !r.result?.cached);
    const runLog = await jobs[leaderAt]!.storedLog();
    assert.ok(runLog.length > 3, `the run logged ${runLog.length} lines`);
    let firstLineAt = Infinity;
    for (const [i, job] of jobs.entries()) {
      if (i === leaderAt) continue;
      const log = await job.storedLog();
      assert.deepEqual(log.slice(0, -1), runLog, `job ${i}'s log is not the run's`);
      assert.match(log.at(-1) ?? "", /served from the result cache/);
      for await (const ev of job.events())
        if (ev.type === "log") {
          firstLineAt = Math.min(firstLineAt, ev.at);
          break;
        }
    }
    assert.ok(
      firstLineAt < records[leaderAt]!.finishedAt!,
      "no joined job saw the run's log before it ended",
    );
    // The workers' metrics count what the cache did: 19 hits of the result's bytes, one kept.
    const sum = async (metric: string, event: string): Promise<number> => {
      let n = 0;
      for (const port of ports) {
        const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
        const line = text
          .split("\n")
          .find((l) => l.startsWith(`${metric}{`) && l.includes(`event="${event}"`));
        n += line ? Number(line.split(" ").at(-1)) : 0;
      }
      return n;
    };
    assert.equal(await sum("mars_fleet_cache_events_total", "hit"), 19);
    assert.equal(await sum("mars_fleet_cache_events_total", "stored"), 1);
    assert.equal(await sum("mars_fleet_cache_bytes_total", "hit"), 19 * first.length);
  });

  it("a coalesced run that fails for good fails every joined job with its error, MARS running once", async () => {
    const q = TestFleet.queue("coalesce-fail");
    await tf.worker(
      { ...settings, queue: q, concurrency: 5 },
      { MARS_SIM_FIELD_DELAY_MS: "500", MARS_SIM_FAIL_AFTER_BYTES: "1" },
    );
    const fleet = await tf.client({ queue: q });
    const request = { param: "2t", date: "20240301/to/20240304", grid: "10/10" };
    const jobs = await Promise.all(
      Array.from({ length: 5 }, (_, i) =>
        fleet.submit(request, {
          targetDir: "coalesce-fail",
          targetFname: `f${i}.grib`,
          environ: { request_id: `fail-${i}`, user_id: "ann" },
        }),
      ),
    );
    const codes = await Promise.all(
      jobs.map((j) =>
        j.result().then(
          () => "succeeded",
          (e: { code?: string }) => e.code,
        ),
      ),
    );
    assert.deepEqual(codes, Array(5).fill("MARS_RUNTIME_ERROR"));
    const runs = [...(await tf.invocations())].filter(([id]) => id.startsWith("fail-"));
    assert.equal(
      runs.reduce((n, [, c]) => n + c, 0),
      1,
      `MARS ran for ${JSON.stringify(runs)}`,
    );
  });

  it("cancelling the job whose run others wait on: the run goes on for them; cancelling all of them stops it", async () => {
    const scene = async (name: string, request: Record<string, string>) => {
      const q = TestFleet.queue(name);
      await tf.worker({ ...settings, queue: q, concurrency: 4 }, { MARS_SIM_FIELD_DELAY_MS: "700" });
      const fleet = await tf.client({ queue: q });
      const submit = (i: number) =>
        fleet.submit(request, {
          targetDir: name,
          targetFname: `${i}.grib`,
          environ: { request_id: `${name}-${i}`, user_id: "ann" },
        });
      const leader = await submit(0);
      for await (const ev of leader.events()) if (ev.type === "state" && ev.state === "running") break;
      const waiting = [await submit(1), await submit(2)];
      await new Promise((r) => setTimeout(r, 800)); // both wait on the leader's run
      return { leader, waiting };
    };
    const ended = (j: { result: () => Promise<unknown> }) =>
      j.result().then(
        () => "succeeded",
        (e: { code?: string }) => e.code,
      );

    // The leader cancelled: its waiters still get the run's result, from one MARS run.
    const a = await scene("cancel-one", { param: "2t", date: "20240401/to/20240406", grid: "10/10" });
    await a.leader.cancel();
    assert.deepEqual(await Promise.all([a.leader, ...a.waiting].map(ended)), [
      "JOB_CANCELLED",
      "succeeded",
      "succeeded",
    ]);
    const runsA = [...(await tf.invocations())].filter(([id]) => id.startsWith("cancel-one-"));
    assert.deepEqual(runsA, [["cancel-one-0", 1]], "MARS ran again after the leader's cancel");

    // Every job cancelled, the leader first: the run is stopped, and nothing is kept from it.
    const request = { param: "msl", date: "20240410/to/20240420", grid: "10/10" }; // 11 fields, 7.7 s
    const b = await scene("cancel-all", request);
    await b.leader.cancel();
    await new Promise((r) => setTimeout(r, 500));
    for (const w of b.waiting) await w.cancel();
    assert.deepEqual(await Promise.all([b.leader, ...b.waiting].map(ended)), Array(3).fill("JOB_CANCELLED"));
    const key = requestKey(normaliseRequests(request))!;
    const kept = existsSync(join(tf.sharedRoot, ".cache", key.slice(0, 2), `${key}.json`));
    assert.equal(kept, false, "the run went on to its end with no job waiting on it");
  });

  it("a coalesced run whose worker dies runs once more, not once per waiting job", async () => {
    const q = TestFleet.queue("coalesce-die");
    const doomed = await tf.worker(
      { ...settings, queue: q, concurrency: 1 },
      { MARS_SIM_FIELD_DELAY_MS: "1000" },
    );
    const fleet = await tf.client({ queue: q });
    // 10 fields of 1 s on the doomed worker: still running when it is killed, however slow the start.
    const request = { param: "msl", date: "20240120/to/20240129", grid: "10/10" };
    const submit = (i: number) =>
      fleet.submit(request, {
        targetDir: "coalesce-die",
        targetFname: `d${i}.grib`,
        environ: { request_id: `die-${i}`, user_id: "ann" },
      });
    const leader = await submit(0);
    // The leader's MARS runs on the doomed worker; then five more wait on a second worker.
    for await (const ev of leader.events()) if (ev.type === "state" && ev.state === "running") break;
    await tf.worker({ ...settings, queue: q, concurrency: 5 }, { MARS_SIM_FIELD_DELAY_MS: "100" });
    const waiting = await Promise.all([1, 2, 3, 4, 5].map(submit));
    await new Promise((r) => setTimeout(r, 500));
    doomed.kill("SIGKILL");
    const results = await Promise.all([leader, ...waiting].map((j) => j.result()));
    const runs = [...(await tf.invocations())].filter(([id]) => id.startsWith("die-"));
    const total = runs.reduce((n, [, c]) => n + c, 0);
    assert.equal(total, 2, `MARS ran ${total} times: ${JSON.stringify(runs)}`);
    const first = await readFile(results[0]!.target);
    for (const r of results) assert.deepEqual(await readFile(r.target), first);
  });

  it("a QoS rule that forbids caching: matching jobs run MARS every time, others are still served", async () => {
    const q = TestFleet.queue("cache-policy");
    const fleet = await tf.client({ queue: q });
    await fleet.applyQosRules(
      "rules:\n  - name: no-cache-tp\n    match: { param: tp }\n    cache: off\n  - name: short\n    match: { param: 10v }\n    cache: 1h\n",
    );
    await tf.worker({ ...settings, queue: q });
    const tp = { param: "tp", date: "20240201", grid: "10/10" };
    const v = { param: "10v", date: "20240201", grid: "10/10" };
    const done = [];
    for (const [i, request] of [tp, tp, v, v].entries()) {
      const job = await fleet.submit(request, {
        targetDir: "policy",
        targetFname: `p${i}.grib`,
        environ: { request_id: `policy-${i}` },
      });
      await job.result();
      done.push(job);
    }
    const runs = await tf.invocations();
    assert.equal(runs.get("policy-0"), 1);
    assert.equal(runs.get("policy-1"), 1, "a job the rules keep out of the cache was served from it");
    assert.equal(runs.get("policy-2"), 1);
    assert.equal(runs.get("policy-3"), undefined, "a job the rules let the cache keep for 1h ran MARS");
    // The entry kept under the 1h rule expires within the hour.
    const key = (await done[3]!.status()).result?.cached?.key;
    assert.ok(key);
    const entry = JSON.parse(
      await readFile(join(tf.sharedRoot, ".cache", key.slice(0, 2), `${key}.json`), "utf8"),
    ) as {
      storedAt: number;
      expiresAt: number;
    };
    assert.equal(entry.expiresAt - entry.storedAt, 3_600_000);
    assert.throws(
      () => parseRules("rules:\n  - name: x\n    cache: sometimes\n"),
      (e: { code?: string }) => e.code === "QOS_RULES_INVALID",
    );
  });

  it("mars-fleet cache stats counts the entries; purge refuses a bad key and empties the cache", async () => {
    const env = tf.env({ queue }, "admin");
    const stats = await cli(["cache", "stats", "--json"], env);
    assert.equal(stats.code, 0, stats.stderr);
    const before = JSON.parse(stats.stdout) as { entries: number; bytes: number };
    assert.ok(before.entries >= 2 && before.bytes > 0, stats.stdout);
    const bad = await cli(["cache", "purge", "--key", "not-a-key"], env);
    assert.equal(bad.code, 2, bad.stderr);
    assert.match(bad.stderr, /CONFIG_INVALID/);
    const purged = await cli(["cache", "purge", "--json"], env);
    assert.equal(purged.code, 0, purged.stderr);
    assert.equal((JSON.parse(purged.stdout) as { removed: number }).removed, before.entries);
    const after = JSON.parse((await cli(["cache", "stats", "--json"], env)).stdout) as { entries: number };
    assert.equal(after.entries, 0);
  });

  it("refuses a target in the cache's folder", async () => {
    const fleet = await tf.client({ queue });
    await assert.rejects(
      fleet.submit(REQUEST, { targetDir: ".cache/00", environ: { request_id: "into-cache" } }),
      (e: { code?: string }) => e.code === "TARGET_INVALID",
    );
  });
});

const REQUEST_WITH_SFC = { ...REQUEST, levtype: "sfc" };
