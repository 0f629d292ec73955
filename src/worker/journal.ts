/**
 * A local journal of the MARS runs a worker has in flight (part file, process group), so that a
 * worker starting after a crash on this host can remove what the crashed one left behind.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { z } from "zod";
import {
  discardPart,
  removeLocalFile,
  REQUEST_FILE_PATTERN,
  signalGroup,
  startedForRun,
} from "../runner/index.js";

const entrySchema = z.object({
  workerPid: z.number().int(),
  pgid: z.number().int(),
  partPath: z.string(),
  jobId: z.string(),
});
export type JournalEntry = z.infer<typeof entrySchema>;

export const DEFAULT_JOURNAL_DIR = join(tmpdir(), "mars-fleet-journal");

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    // ESRCH: gone. (EPERM would mean alive but not ours: a reused pid, not our worker either.)
    return false;
  }
}

export class Journal {
  constructor(readonly dir: string = DEFAULT_JOURNAL_DIR) {}

  private path(runId: string): string {
    return join(this.dir, `${runId}.json`);
  }

  private made = false;

  /*
   * An entry is a few hundred bytes in a local directory: written and removed with synchronous
   * calls, which cost a fraction of the CPU of a trip through libuv's thread pool (twice per job;
   * docs/PERFORMANCE.md), and block for microseconds.
   */
  async add(runId: string, entry: JournalEntry): Promise<void> {
    if (!this.made) {
      mkdirSync(this.dir, { recursive: true });
      this.made = true;
    }
    writeFileSync(this.path(runId), JSON.stringify(entry));
  }

  async remove(runId: string): Promise<void> {
    removeLocalFile(this.path(runId));
  }

  /** Request files written by processes that are gone (they crashed before removing them). */
  private async removeOrphanRequestFiles(): Promise<void> {
    const names = await readdir(tmpdir()).catch(() => [] as string[]); // no temp dir, nothing to sweep
    for (const name of names) {
      const pid = REQUEST_FILE_PATTERN.exec(name)?.[1];
      if (pid !== undefined && !processAlive(Number(pid))) await rm(join(tmpdir(), name), { force: true });
    }
  }

  /** Clean up after workers that are gone: kill stray groups, delete part files and request files. */
  async recover(): Promise<JournalEntry[]> {
    await this.removeOrphanRequestFiles();
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch {
      // No journal yet: nothing crashed here before.
      return [];
    }
    const recovered: JournalEntry[] = [];
    for (const name of names.filter((n) => n.endsWith(".json"))) {
      const file = join(this.dir, name);
      try {
        const entry = entrySchema.parse(JSON.parse(await readFile(file, "utf8")));
        if (processAlive(entry.workerPid)) continue;
        const runId = name.slice(0, -".json".length);
        if (entry.pgid > 0 && startedForRun(entry.pgid, runId)) signalGroup(entry.pgid, "SIGKILL");
        await discardPart(entry.partPath);
        recovered.push(entry);
      } catch {
        // An unreadable entry (a crash while it was written) names nothing to clean: it is removed below.
      }
      await rm(file, { force: true });
    }
    return recovered;
  }
}
