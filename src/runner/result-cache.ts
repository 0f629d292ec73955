/**
 * The result cache (#28): finished results kept under the shared root, content-addressed by the
 * canonical key of their requests (src/mars/request-key.ts), with a size budget and a time to live.
 *
 * On disk, in `<root>/.cache/<first two hex digits>/`: `<key>.grib`, a hard link to the committed
 * result, and `<key>.json`, what was recorded at commit (size, sha256, when, how long MARS took,
 * when it expires). The JSON file's mtime is the entry's last use: eviction removes the least
 * recently used entries, expired ones first, until the data fits the budget.
 *
 * A hit links the entry's data into the job's part file first (copies it, when the target is on
 * another filesystem) and checks that file's size and
 * sha256 against the record after: an eviction that removes the entry meanwhile cannot take the
 * file being delivered (the link holds it), and an entry whose bytes changed (a corrupted disk, a
 * result modified in place through another link) is dropped and MARS runs as usual. The part file
 * then goes through the job's fenced commit like any MARS output.
 *
 * No job target may lie in `.cache` (CACHE_DIR, refused by the target checks in target.ts), so no
 * user-supplied path reaches it.
 */
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import {
  chmod,
  copyFile,
  link,
  mkdir,
  open,
  readdir,
  readFile,
  rename,
  rm,
  stat,
  utimes,
  writeFile,
} from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import { join } from "node:path";
import { z } from "zod";
import { CACHE_DIR, fsyncPath } from "./target.js";

const entrySchema = z
  .object({
    v: z.literal(1),
    key: z.string().regex(/^[0-9a-f]{64}$/),
    bytes: z.number().int().min(1),
    sha256: z.string().regex(/^[0-9a-f]{64}$/),
    storedAt: z.number(),
    expiresAt: z.number(),
    /** MARS's run time for this result: what each hit saves. */
    marsMs: z.number().min(0),
    /** The job whose result it is. */
    jobId: z.string(),
  })
  .strict();
export type CacheEntry = z.infer<typeof entrySchema>;

export interface CacheStats {
  entries: number;
  bytes: number;
  maxBytes: number;
  oldestUse: number | null;
}

/** What the cache did, for metrics and logs. */
export type CacheEvent =
  | { type: "hit"; key: string; bytes: number; marsMs: number }
  | { type: "miss"; key: string }
  /** A hit's data is linked into the part file, not yet checked (what an eviction can no longer take). */
  | { type: "linked"; key: string; partPath: string }
  | { type: "dropped"; key: string; why: string }
  | { type: "stored"; key: string; bytes: number }
  | { type: "evicted"; key: string; bytes: number };

export interface ResultCacheOptions {
  /** The budget of the data, in bytes; 0: no cache. */
  maxBytes: number;
  /** How long an entry is served after it was stored. */
  ttlMs: number;
  /** Told each event; a "linked" event's delivery waits for what it returns. */
  onEvent?: (ev: CacheEvent) => void | Promise<void>;
}

export async function sha256Of(path: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

/**
 * The right to run MARS for a key while other jobs with the same key wait for its result
 * (coalescing, #28): a file `<key>.run` made with O_EXCL, naming its owner, touched every
 * `touchMs` while the run lasts. One left untouched for longer than the waiters' stale time (its
 * worker died) is taken over by one of them.
 */
export interface RunLease {
  /** Give the right up (after the result is kept, or the run failed): a waiter may take it. */
  release(): Promise<void>;
}

/** How often a waiter looks for the entry or a free run. */
const WAIT_POLL_MS = 100;

export class ResultCache {
  readonly dir: string;

  constructor(
    root: string,
    private readonly opts: ResultCacheOptions,
  ) {
    this.dir = join(root, CACHE_DIR);
  }

  get enabled(): boolean {
    return this.opts.maxBytes > 0;
  }

  /** Every file of `key`'s entry and run, in its folder. */
  private paths(key: string) {
    const folder = join(this.dir, key.slice(0, 2));
    const file = (suffix: string): string => join(folder, `${key}.${suffix}`);
    return {
      folder,
      data: file("grib"),
      meta: file("json"),
      log: file("log"),
      run: file("run"),
      takeover: file("takeover"),
      live: file("live"),
      failed: file("failed"),
    };
  }

  private event(ev: CacheEvent): void {
    void this.opts.onEvent?.(ev);
  }

  /**
   * Take the right to run MARS for `key`, or undefined when another owner holds it and touched it
   * within `staleMs`. A stale holder's file is replaced under a takeover lock (`<key>.takeover`,
   * made with O_EXCL): one waiter checks it is still stale, removes it and makes its own, while the
   * others wait. Without the lock, a waiter that judged the old file stale could remove the file
   * another waiter had just made in its place, and both would run MARS.
   */
  async lead(
    key: string,
    owner: string,
    opts: { touchMs: number; staleMs: number },
  ): Promise<RunLease | undefined> {
    const { folder, run: path, takeover } = this.paths(key);
    await mkdir(folder, { recursive: true });
    const fresh = (mtimeMs: number): boolean => Date.now() - mtimeMs < opts.staleMs;
    const made = await this.makeRun(path, owner, opts.touchMs);
    if (made) return made;
    const held = await stat(path).catch(() => undefined); // released meanwhile: take it below
    if (held && fresh(held.mtimeMs)) return undefined;
    let lock;
    try {
      lock = await open(takeover, "wx");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      // Another waiter is taking over; a lock its maker died holding is cleared for the next look.
      const taking = await stat(takeover).catch(() => undefined); // gone: done meanwhile
      if (taking && !fresh(taking.mtimeMs)) await rm(takeover, { force: true });
      return undefined;
    }
    try {
      await lock.close();
      const again = await stat(path).catch(() => undefined); // gone: released, or taken over and done
      if (again && fresh(again.mtimeMs)) return undefined;
      await rm(path, { force: true });
      return await this.makeRun(path, owner, opts.touchMs);
    } finally {
      await rm(takeover, { force: true });
    }
  }

  /** Make the run file (O_EXCL) and keep it touched: the lease, or undefined when it exists. */
  private async makeRun(path: string, owner: string, touchMs: number): Promise<RunLease | undefined> {
    let handle;
    try {
      handle = await open(path, "wx");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "EEXIST") return undefined;
      throw err;
    }
    await handle.writeFile(owner);
    await handle.close();
    const timer = setInterval(() => {
      const now = new Date();
      // A touch that fails (the file taken over after a long stall) leaves the run to its fence.
      utimes(path, now, now).catch(() => undefined);
    }, touchMs);
    timer.unref();
    return {
      release: async () => {
        clearInterval(timer);
        const holder = await readFile(path, "utf8").catch(() => undefined); // gone: taken over
        if (holder === owner) await rm(path, { force: true });
      },
    };
  }

  /**
   * Wait while another job's run holds `key`: resolves when the entry is there or the run is no
   * longer held (released, or stale past `staleMs`): the caller then looks again. The waiter is
   * known meanwhile by a file `<key>.wait.<waiter>`, touched as it waits (see waiting()). Throws the
   * abort reason when `signal` aborts.
   */
  async awaitRun(
    key: string,
    opts: { staleMs: number; signal: AbortSignal; waiter: string; onPoll?: () => Promise<void> },
  ): Promise<void> {
    const { folder, meta, run: path } = this.paths(key);
    const mark = join(folder, `${key}.wait.${opts.waiter}`);
    let touchedAt = 0;
    try {
      for (;;) {
        opts.signal.throwIfAborted();
        if (Date.now() - touchedAt >= opts.staleMs / 3) {
          await writeFile(mark, "");
          touchedAt = Date.now();
        }
        const [entry, held] = await Promise.all([
          stat(meta).catch(() => undefined), // not kept yet
          stat(path).catch(() => undefined), // released
        ]);
        await opts.onPoll?.();
        if (entry || !held || Date.now() - held.mtimeMs >= opts.staleMs) return;
        await sleep(WAIT_POLL_MS, undefined, { signal: opts.signal });
      }
    } finally {
      await rm(mark, { force: true });
    }
  }

  /** How many jobs wait on `key`'s run now (their marks touched within `staleMs`). */
  async waiting(key: string, staleMs: number): Promise<number> {
    const { folder } = this.paths(key);
    const prefix = `${key}.wait.`;
    const names = (await readdir(folder).catch(() => [] as string[])).filter((n) => n.startsWith(prefix)); // no folder: none
    const fresh = await Promise.all(
      names.map(async (n) => {
        const info = await stat(join(folder, n)).catch(() => undefined); // left meanwhile
        return info !== undefined && Date.now() - info.mtimeMs < staleMs;
      }),
    );
    return fresh.filter(Boolean).length;
  }

  /** Where the run holding `key` writes its log as it goes, for the jobs waiting on it to follow. */
  liveLogPath(key: string): string {
    return this.paths(key).live;
  }

  /**
   * The complete lines the run holding `key` wrote to its live log from byte `from` on, and where
   * the next read starts (a line still being written waits for the next read).
   */
  async readLive(key: string, from: number): Promise<{ lines: string[]; next: number }> {
    const handle = await open(this.liveLogPath(key), "r").catch(() => undefined); // none (yet, or any more)
    if (!handle) return { lines: [], next: from };
    try {
      const { size } = await handle.stat();
      if (size < from) return { lines: [], next: 0 }; // a new run started the log again
      if (size === from) return { lines: [], next: from };
      const buf = Buffer.alloc(size - from);
      await handle.read(buf, 0, buf.length, from);
      const end = buf.lastIndexOf(0x0a);
      if (end < 0) return { lines: [], next: from };
      return { lines: buf.subarray(0, end).toString("utf8").split("\n"), next: from + end + 1 };
    } finally {
      await handle.close();
    }
  }

  /** The log of the run that made `key`'s entry (empty when none was kept). */
  async log(key: string): Promise<string[]> {
    const text = await readFile(this.paths(key).log, "utf8").catch(() => ""); // none kept
    return text === "" ? [] : text.split("\n");
  }

  /**
   * Tell the jobs waiting on `key`'s run that it failed for good (`<key>.failed`, with `error`): they
   * fail with it instead of each running MARS in turn into the same error.
   */
  async failed(key: string, error: unknown): Promise<void> {
    await replaceFile(this.paths(key).failed, JSON.stringify({ at: Date.now(), error }) + "\n");
  }

  /** The error a run of `key` failed with at or after `since` (ms), if one was told; the caller checks its shape. */
  async failureSince(key: string, since: number): Promise<unknown> {
    const text = await readFile(this.paths(key).failed, "utf8").catch(() => undefined); // none told
    if (text === undefined) return undefined;
    try {
      const told = JSON.parse(text) as { at?: unknown; error?: unknown };
      return typeof told.at === "number" && told.at >= since ? told.error : undefined;
    } catch {
      return undefined; // unreadable: as if none was told (the waiter runs MARS itself)
    }
  }

  /** The entry under `key`, if it is recorded and not expired (an expired one is removed). */
  async entry(key: string): Promise<CacheEntry | undefined> {
    const { meta } = this.paths(key);
    const text = await readFile(meta, "utf8").catch(() => undefined); // no entry
    if (text === undefined) return undefined;
    const parsed = entrySchema.safeParse(JSON.parse(text.trim() || "null"));
    if (!parsed.success || parsed.data.key !== key) {
      await this.drop(key, "its record is unreadable");
      return undefined;
    }
    if (parsed.data.expiresAt <= Date.now()) {
      await this.drop(key, "expired");
      return undefined;
    }
    return parsed.data;
  }

  /**
   * Deliver the entry under `key` into `partPath` (a hard link), checked against its record.
   * Returns the entry, or undefined (a miss: nothing is left at `partPath`).
   */
  async deliver(key: string, partPath: string, maxAgeMs?: number): Promise<CacheEntry | undefined> {
    const found = await this.entry(key).catch(() => undefined); // an unreadable record: a miss
    // Older than the job's rules allow (a rule shortened the time to live): a miss; the new run's
    // result replaces the entry.
    if (!found || (maxAgeMs !== undefined && Date.now() - found.storedAt > maxAgeMs)) {
      this.event({ type: "miss", key });
      return undefined;
    }
    const { data, meta } = this.paths(key);
    try {
      await link(data, partPath);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "EXDEV") {
        // The target's directory is on another filesystem (a mount inside the root): a copy.
        // A copy, made durable here: the commit that follows does not sync a hit's data again.
        try {
          await copyFile(data, partPath);
          await fsyncPath(partPath, "r+");
        } catch (copyErr) {
          await rm(partPath, { force: true });
          throw copyErr;
        }
      } else if (code === "ENOENT") {
        await this.drop(key, "its data is missing");
        this.event({ type: "miss", key });
        return undefined;
      } else throw err;
    }
    await this.opts.onEvent?.({ type: "linked", key, partPath });
    const size = (await stat(partPath)).size;
    const why =
      size !== found.bytes
        ? `its data is ${size} bytes, not ${found.bytes}`
        : (await sha256Of(partPath)) !== found.sha256
          ? "its data's sha256 is not the recorded one"
          : undefined;
    if (why) {
      await rm(partPath, { force: true });
      await this.drop(key, why);
      this.event({ type: "miss", key });
      return undefined;
    }
    const now = new Date();
    await utimes(meta, now, now).catch(() => undefined); // evicted meanwhile: the delivery stands
    this.event({ type: "hit", key, bytes: found.bytes, marsMs: found.marsMs });
    return found;
  }

  /** Keep the committed result at `targetPath` under `key`; then keep the cache inside its budget. */
  async store(
    key: string,
    targetPath: string,
    facts: { jobId: string; marsMs: number; ttlMs?: number; sync?: boolean; log?: readonly string[] },
  ): Promise<void> {
    const { folder, data, meta, log } = this.paths(key);
    await mkdir(folder, { recursive: true });
    // Not a committed result (a cancelled run's part file, kept for the jobs waiting on it): its
    // data is made durable here, as a commit would have.
    if (facts.sync) await fsyncPath(targetPath, "r+");
    const tmp = `${data}.${process.pid}.${Date.now()}.tmp`;
    await link(targetPath, tmp);
    try {
      const { size } = await stat(tmp);
      if (size === 0) return;
      const entry: CacheEntry = {
        v: 1,
        key,
        bytes: size,
        sha256: await sha256Of(tmp),
        storedAt: Date.now(),
        expiresAt: Date.now() + (facts.ttlMs ?? this.opts.ttlMs),
        marsMs: facts.marsMs,
        jobId: facts.jobId,
      };
      // Results are read, never written again: read-only (a change through any link is also caught
      // by the hash at the next hit).
      await chmod(tmp, 0o444);
      await rename(tmp, data);
      // The run's log, replayed to the jobs it serves, then the record (a reader finding the
      // record finds the log).
      await replaceFile(log, (facts.log ?? []).join("\n"));
      await replaceFile(meta, JSON.stringify(entry) + "\n");
      this.event({ type: "stored", key, bytes: size });
    } finally {
      await rm(tmp, { force: true });
    }
    await this.evict();
  }

  /** Remove an entry that cannot be served, saying why. */
  async drop(key: string, why: string): Promise<void> {
    await this.unlink(key);
    this.event({ type: "dropped", key, why });
  }

  /** An entry's files, its record first: a reader finding no record finds no entry. */
  private async unlink(key: string): Promise<void> {
    const { data, meta, log } = this.paths(key);
    for (const path of [meta, data, log]) await rm(path, { force: true });
  }

  /** Every entry with its last use, oldest use first. */
  private async listing(): Promise<Array<{ key: string; bytes: number; usedAt: number; expiresAt: number }>> {
    const out: Array<{ key: string; bytes: number; usedAt: number; expiresAt: number }> = [];
    const folders = await readdir(this.dir).catch(() => [] as string[]); // no cache yet
    for (const folder of folders) {
      const names = await readdir(join(this.dir, folder)).catch(() => [] as string[]); // removed meanwhile
      for (const name of names.filter((n) => n.endsWith(".json"))) {
        const key = name.slice(0, -".json".length);
        const path = join(this.dir, folder, name);
        try {
          const [text, info] = await Promise.all([readFile(path, "utf8"), stat(path)]);
          const entry = entrySchema.parse(JSON.parse(text));
          out.push({ key, bytes: entry.bytes, usedAt: info.mtimeMs, expiresAt: entry.expiresAt });
        } catch {
          // Removed meanwhile, or unreadable: an unreadable record is dropped at its next lookup.
        }
      }
    }
    return out.sort((a, b) => a.usedAt - b.usedAt);
  }

  /** Remove expired entries, then the least recently used until the data fits the budget. */
  async evict(): Promise<number> {
    const entries = await this.listing();
    let total = entries.reduce((sum, e) => sum + e.bytes, 0);
    let removed = 0;
    const now = Date.now();
    for (const e of entries.filter((x) => x.expiresAt <= now)) {
      await this.remove(e.key, e.bytes);
      total -= e.bytes;
      removed++;
    }
    for (const e of entries.filter((x) => x.expiresAt > now)) {
      if (total <= this.opts.maxBytes) break;
      await this.remove(e.key, e.bytes);
      total -= e.bytes;
      removed++;
    }
    return removed;
  }

  private async remove(key: string, bytes: number): Promise<void> {
    await this.unlink(key);
    this.event({ type: "evicted", key, bytes });
  }

  async stats(): Promise<CacheStats> {
    const entries = await this.listing();
    return {
      entries: entries.length,
      bytes: entries.reduce((sum, e) => sum + e.bytes, 0),
      maxBytes: this.opts.maxBytes,
      oldestUse: entries[0]?.usedAt ?? null,
    };
  }

  /** Remove entries last used before `olderThanMs` ago, or the one under `key`, or all. */
  async purge(opts: { olderThanMs?: number; key?: string }): Promise<number> {
    const entries = await this.listing();
    const cutoff = opts.olderThanMs === undefined ? Infinity : Date.now() - opts.olderThanMs;
    let removed = 0;
    for (const e of entries)
      if ((opts.key === undefined || e.key === opts.key) && e.usedAt < cutoff) {
        await this.remove(e.key, e.bytes);
        removed++;
      }
    return removed;
  }
}

/** Write `path` whole, or leave it as it was: a temporary file of this process, renamed over it. */
async function replaceFile(path: string, text: string): Promise<void> {
  const tmp = `${path}.${process.pid}.tmp`;
  await writeFile(tmp, text);
  await rename(tmp, path);
}
