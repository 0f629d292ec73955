/**
 * Following a family of a bucket's keys: one KV watch (an ordered consumer) whose entries arrive as
 * the keys change, the way a worker keeps every QoS slot or every user's usage record at hand
 * without reading each again.
 */
import type { KV } from "@nats-io/kv";
import type { Logger } from "pino";

/** A key's change as followed: its value, or undefined once deleted, purged or emptied. */
export interface FollowedEntry {
  key: string;
  revision: number;
  value: Uint8Array | undefined;
}

export class KeyFollower {
  private running: Promise<void> | undefined;
  private stopWatch: (() => void) | undefined;
  private live = false;

  /**
   * @param keys the watch's key filter (`slots.>`, `usage.*`)
   * @param what what is followed, for the warning when the watch ends on an error
   */
  constructor(
    private readonly kv: KV,
    private readonly keys: string,
    private readonly what: string,
    private readonly log: Logger,
  ) {}

  /**
   * Start following, unless already: `onEntry` hears every current key, then each change. Once the
   * watch ends on an error (warned), a later call starts it again.
   */
  start(onEntry: (e: FollowedEntry) => void): void {
    this.running ??= (async () => {
      const watch = await this.kv.watch({ key: this.keys });
      this.stopWatch = () => watch.stop();
      this.live = true;
      for await (const e of watch) {
        const gone = e.operation !== "PUT" || e.length === 0;
        // A copy: the entry's bytes may be a view of a larger buffer the client read into, which
        // a value kept for long would keep whole.
        onEntry({ key: e.key, revision: e.revision, value: gone ? undefined : e.value.slice() });
      }
    })()
      .catch((err: unknown) => this.log.warn({ err }, `stopped following ${this.what}`))
      .finally(() => {
        this.live = false;
        this.running = undefined;
      });
  }

  /** Whether the watch runs: every change arrives as it happens. */
  get following(): boolean {
    return this.live;
  }

  stop(): void {
    this.stopWatch?.();
  }
}
