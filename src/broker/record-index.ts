/**
 * Every job record, kept by a long-lived reader (the API and its console list all of them every
 * second) at the cost of what changed, not of every record the bucket holds. The first listing
 * reads every record; later ones read again only the jobs whose keys were written since (heard on
 * a core subscription, which creates nothing on the server), and list the bucket's keys now and
 * then to forget records the bucket expired (an expiry sends no message). A reconnect, or a
 * subscription that failed, may have lost messages: the next listing reads everything again.
 */
export interface RecordSource<R> {
  /** The bucket's keys (`<id>.<part>`). */
  keys(): Promise<string[]>;
  /** A job's record now, undefined when it has none (deleted, expired, unreadable). */
  read(id: string): Promise<R | undefined>;
}

/** How often the keys are listed to forget expired records. */
export const KEYS_EVERY_MS = 30_000;

/** The job id of a record key, `<id>.<part>`. */
function idOf(key: string): string | undefined {
  const dot = key.lastIndexOf(".");
  return dot > 0 ? key.slice(0, dot) : undefined;
}

export class RecordIndex<R> {
  private readonly records = new Map<string, R>();
  private dirty = new Set<string>();
  /** Read everything on the next listing (first, after a reconnect, with no live subscription). */
  private whole = true;
  /** False once the subscription failed: every listing then reads everything. */
  private live = true;
  private keysAt = -Infinity;
  /** One listing at a time; callers that come meanwhile share the one after it. */
  private chain: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly source: RecordSource<R>,
    private readonly now: () => number = Date.now,
    private readonly keysEveryMs = KEYS_EVERY_MS,
  ) {}

  /** A record key was written (or deleted). */
  changed(key: string): void {
    const id = idOf(key);
    if (id) this.dirty.add(id);
  }

  /** Messages may have been lost (a reconnect): read everything next time. */
  lost(): void {
    this.whole = true;
  }

  /** The subscription is gone for good (not allowed, closed): every listing reads everything. */
  dead(): void {
    this.live = false;
  }

  /** Every record, as of a moment during this call. */
  list(): Promise<R[]> {
    const next = this.chain.then(() => this.refresh());
    this.chain = next.catch(() => undefined); // the caller gets the error; the next listing starts afresh
    return next;
  }

  private async refresh(): Promise<R[]> {
    const whole = this.whole || !this.live;
    const listKeys = whole || this.now() - this.keysAt >= this.keysEveryMs;
    // Taken before reading, so that a write heard during the reads is read again next time.
    const dirty = this.dirty;
    this.dirty = new Set();
    this.whole = false;
    try {
      const toRead = new Set(whole ? [] : dirty);
      if (listKeys) {
        const ids = new Set<string>();
        for (const key of await this.source.keys()) {
          const id = idOf(key);
          if (id) ids.add(id);
        }
        this.keysAt = this.now();
        for (const id of this.records.keys()) if (!ids.has(id)) this.records.delete(id);
        for (const id of ids) if (whole || !this.records.has(id)) toRead.add(id);
      }
      const read = await Promise.all(
        [...toRead].map(async (id) => [id, await this.source.read(id)] as const),
      );
      for (const [id, record] of read)
        if (record === undefined) this.records.delete(id);
        else this.records.set(id, record);
    } catch (err) {
      // Not read this time: read again next time.
      for (const id of dirty) this.dirty.add(id);
      if (whole) this.whole = true;
      throw err;
    }
    return [...this.records.values()];
  }
}
