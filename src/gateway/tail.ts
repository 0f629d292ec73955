/**
 * Reading a result while MARS writes it: follow the attempt's part file (`.name.<job>-a<n>.mars-part`)
 * as it grows; the same descriptor keeps working after the rename to the final name.
 */
import { open, type FileHandle } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";

const POLL_MS = 25;
const CHUNK = 256 * 1024;

export class FileTail {
  private handle: FileHandle | undefined;
  private offset = 0;
  private stopped = false;

  constructor(
    /** Paths to try, in order, until one opens: the part file, then the final target. */
    private readonly paths: () => string[],
  ) {}

  get bytesRead(): number {
    return this.offset;
  }

  private async tryOpen(): Promise<boolean> {
    if (this.handle) return true;
    for (const path of this.paths()) {
      try {
        this.handle = await open(path, "r");
        return true;
      } catch {
        // Not there (yet, or any more).
      }
    }
    return false;
  }

  /** Read whatever is new; empty when nothing is. */
  async readNew(): Promise<Buffer> {
    if (!(await this.tryOpen())) return Buffer.alloc(0);
    const buf = Buffer.allocUnsafe(CHUNK);
    const { bytesRead } = await this.handle!.read(buf, 0, CHUNK, this.offset);
    this.offset += bytesRead;
    return buf.subarray(0, bytesRead);
  }

  /** Feed new bytes to `sink` until stop() is called; then drain what is left. */
  async follow(sink: (chunk: Buffer) => Promise<void>): Promise<void> {
    while (!this.stopped) {
      const chunk = await this.readNew();
      if (chunk.length > 0) await sink(chunk);
      else await sleep(POLL_MS);
    }
  }

  /** Everything up to the end of the file as it is now. */
  async drain(sink: (chunk: Buffer) => Promise<void>): Promise<void> {
    for (;;) {
      const chunk = await this.readNew();
      if (chunk.length === 0) return;
      await sink(chunk);
    }
  }

  stop(): void {
    this.stopped = true;
  }

  async close(): Promise<void> {
    this.stopped = true;
    await this.handle?.close();
    this.handle = undefined;
  }
}
