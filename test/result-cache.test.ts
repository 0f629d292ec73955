/** The result cache on a real filesystem (src/runner/result-cache.ts). */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { chmod, mkdir, mkdtemp, readFile, rm, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { ResultCache, sha256Of, type CacheEvent } from "../src/runner/result-cache.js";

let root = "";
before(async () => {
  root = await mkdtemp(join(tmpdir(), "mars-cache-"));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

const KEY = (n: number): string => n.toString(16).padStart(64, "0");

/** A committed result of `bytes` random bytes at a fresh path. */
async function result(name: string, bytes: number): Promise<string> {
  const path = join(root, name);
  await writeFile(path, randomBytes(bytes));
  return path;
}

function cacheIn(dir: string, maxBytes: number, events: CacheEvent[] = [], ttlMs = 60_000): ResultCache {
  return new ResultCache(dir, { maxBytes, ttlMs, onEvent: (ev) => void events.push(ev) });
}

describe("result cache", { timeout: 30_000 }, () => {
  it("delivers a stored result as a link with the same bytes, and counts the hit", async () => {
    const dir = await mkdtemp(join(root, "a-"));
    const events: CacheEvent[] = [];
    const cache = cacheIn(dir, 1 << 20, events);
    const target = await result("a-1.grib", 5000);
    await cache.store(KEY(1), target, { jobId: "j1", marsMs: 1234 });
    const part = join(dir, "delivered.part");
    const entry = await cache.deliver(KEY(1), part);
    assert.equal(entry?.bytes, 5000);
    assert.equal(entry?.marsMs, 1234);
    assert.deepEqual(await readFile(part), await readFile(target));
    assert.deepEqual(
      events.map((e) => e.type),
      ["stored", "linked", "hit"],
    );
    assert.equal(await cache.deliver(KEY(2), join(dir, "other.part")), undefined, "a key never stored");
    assert.equal(existsSync(join(dir, "other.part")), false);
  });

  it("drops an entry whose bytes changed, or that expired, and leaves nothing at the part path", async () => {
    const dir = await mkdtemp(join(root, "b-"));
    const events: CacheEvent[] = [];
    const cache = cacheIn(dir, 1 << 20, events);
    const target = await result("b-1.grib", 4000);
    await cache.store(KEY(3), target, { jobId: "j3", marsMs: 10 });
    // One byte changed in place, the size the same (as a bad disk, or a write through another link).
    const data = join(cache.dir, KEY(3).slice(0, 2), `${KEY(3)}.grib`);
    await chmod(data, 0o644);
    const bytes = await readFile(data);
    bytes[100] = bytes[100]! ^ 0xff;
    await writeFile(data, bytes);
    const part = join(dir, "corrupt.part");
    assert.equal(await cache.deliver(KEY(3), part), undefined);
    assert.equal(existsSync(part), false, "a corrupted entry was left at the part path");
    assert.equal(existsSync(data), false, "the corrupted entry was kept");
    assert.deepEqual(events.at(-2), {
      type: "dropped",
      key: KEY(3),
      why: "its data's sha256 is not the recorded one",
    });

    const expiring = cacheIn(dir, 1 << 20, events, -1);
    await expiring.store(KEY(4), await result("b-2.grib", 100), { jobId: "j4", marsMs: 10 });
    assert.equal(await expiring.deliver(KEY(4), join(dir, "expired.part")), undefined);
    assert.equal((await expiring.stats()).entries, 0);
  });

  it("evicts expired entries first, then the least recently used, to fit the budget", async () => {
    const dir = await mkdtemp(join(root, "c-"));
    const events: CacheEvent[] = [];
    const cache = cacheIn(dir, 2500, events);
    const use = async (key: string, secondsAgo: number): Promise<void> => {
      const meta = join(cache.dir, key.slice(0, 2), `${key}.json`);
      const at = new Date(Date.now() - secondsAgo * 1000);
      await utimes(meta, at, at);
    };
    await cache.store(KEY(5), await result("c-5.grib", 1000), { jobId: "j5", marsMs: 1 });
    await cache.store(KEY(6), await result("c-6.grib", 1000), { jobId: "j6", marsMs: 1 });
    await use(KEY(5), 10); // used after 6: 6 is the least recently used
    await use(KEY(6), 20);
    await cache.store(KEY(7), await result("c-7.grib", 1000), { jobId: "j7", marsMs: 1 });
    const evicted = events.filter((e) => e.type === "evicted").map((e) => e.key);
    assert.deepEqual(evicted, [KEY(6)]);
    const stats = await cache.stats();
    assert.equal(stats.entries, 2);
    assert.equal(stats.bytes, 2000);
    assert.ok(await cache.deliver(KEY(5), join(dir, "5.part")));
    assert.ok(await cache.deliver(KEY(7), join(dir, "7.part")));
  });

  it("never takes a result being delivered: an eviction in the middle leaves the delivered file whole", async () => {
    const dir = await mkdtemp(join(root, "d-"));
    const target = await result("d-1.grib", 3 << 20);
    const want = await sha256Of(target);
    // Another worker's cache, over budget, evicts everything while this one's hit is linked but
    // not yet checked.
    const other = cacheIn(dir, 1);
    let evictedMeanwhile = 0;
    const cache = new ResultCache(dir, {
      maxBytes: 10 << 20,
      ttlMs: 60_000,
      onEvent: async (ev) => {
        if (ev.type === "linked") evictedMeanwhile = await other.evict();
      },
    });
    await cache.store(KEY(8), target, { jobId: "j8", marsMs: 1 });
    const part = join(dir, "delivering.part");
    const entry = await cache.deliver(KEY(8), part);
    assert.equal(evictedMeanwhile, 1, "the eviction did not run during the delivery");
    assert.ok(entry, "the hit was lost to the eviction");
    assert.equal(await sha256Of(part), want);
    assert.equal((await cache.stats()).entries, 0, "the entry was not evicted");
  });

  it(
    "copies a hit into a target on another filesystem (a mount inside the root)",
    { skip: process.getuid?.() !== 0 && "needs root to mount a tmpfs" },
    async () => {
      const dir = await mkdtemp(join(root, "f-"));
      const cache = cacheIn(dir, 1 << 20);
      const target = await result("f-1.grib", 2000);
      await cache.store(KEY(12), target, { jobId: "j12", marsMs: 1 });
      const mount = join(dir, "other-fs");
      await mkdir(mount);
      execFileSync("mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", mount]);
      try {
        const part = join(mount, "copied.part");
        assert.ok(await cache.deliver(KEY(12), part), "no hit across filesystems");
        assert.deepEqual(await readFile(part), await readFile(target));
      } finally {
        execFileSync("umount", [mount]);
      }
    },
  );

  it("lets one waiter take a stale run over, however many try at once (in several processes' place)", async () => {
    const dir = join(root, "takeover");
    for (let round = 0; round < 20; round++) {
      const key = KEY(9000 + round);
      const caches = Array.from({ length: 8 }, () => cacheIn(dir, 1 << 20));
      // A run whose holder died a while ago: its file is older than the waiters' stale time.
      const first = await caches[0]!.lead(key, "dead", { touchMs: 60_000, staleMs: 500 });
      assert.ok(first);
      const runFile = join(dir, ".cache", key.slice(0, 2), `${key}.run`);
      const past = new Date(Date.now() - 10_000);
      await utimes(runFile, past, past);
      const leases = await Promise.all(
        caches.map((c, i) => c.lead(key, `waiter-${i}`, { touchMs: 60_000, staleMs: 500 })),
      );
      const won = leases.filter((l) => l !== undefined);
      assert.equal(won.length, 1, `round ${round}: ${won.length} waiters took the run over`);
      const holder = await readFile(runFile, "utf8");
      assert.match(holder, /^waiter-\d$/);
      await Promise.all(won.map((l) => l!.release()));
      assert.equal(existsSync(runFile), false, "the run file outlived its lease");
      assert.equal(existsSync(`${runFile.slice(0, -4)}.takeover`), false, "the takeover lock was left");
    }
  });

  it("purges by age and by key", async () => {
    const dir = await mkdtemp(join(root, "e-"));
    const cache = cacheIn(dir, 1 << 20);
    for (const n of [9, 10, 11])
      await cache.store(KEY(n), await result(`e-${n}.grib`, 100), { jobId: `j${n}`, marsMs: 1 });
    const old = new Date(Date.now() - 3_600_000);
    await utimes(join(cache.dir, KEY(9).slice(0, 2), `${KEY(9)}.json`), old, old);
    assert.equal(await cache.purge({ olderThanMs: 60_000 }), 1);
    assert.equal(await cache.purge({ key: KEY(10) }), 1);
    assert.equal((await cache.stats()).entries, 1);
    assert.equal(await cache.purge({}), 1);
  });
});
