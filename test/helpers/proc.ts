import { execFile } from "node:child_process";
import { readFileSync, readdirSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";

export const execFileP = promisify(execFile);

interface ProcEntry {
  pid: number;
  state: string;
  ppid: number;
  pgid: number;
}

/** Fields of /proc/<pid>/stat after the command name, or undefined when the process is gone. */
function procEntry(pid: number): ProcEntry | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return { pid, state: fields[0]!, ppid: Number(fields[1]), pgid: Number(fields[2]) };
  } catch {
    return undefined;
  }
}

function cmdline(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8");
  } catch {
    return ""; // exited while we looked
  }
}

/** Every process that is alive and not a zombie. */
function liveProcesses(): ProcEntry[] {
  return readdirSync("/proc")
    .filter((e) => /^\d+$/.test(e))
    .flatMap((e) => {
      const entry = procEntry(Number(e));
      return entry && entry.state !== "Z" && entry.state !== "X" ? [entry] : [];
    });
}

/** Alive and not a zombie (a zombie has exited; only its parent has not reaped it yet). */
export function processAlive(pid: number): boolean {
  const entry = procEntry(pid);
  return entry !== undefined && entry.state !== "Z" && entry.state !== "X";
}

/** Live (non-zombie) members of a process group. */
export function groupMembers(pgid: number): number[] {
  return liveProcesses()
    .filter((p) => p.pgid === pgid)
    .map((p) => p.pid);
}

/** Poll until `check` is true or the time is up; returns the last result. */
export async function eventually(
  check: () => boolean | Promise<boolean>,
  timeoutMs = 5000,
  stepMs = 50,
): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return true;
    if (Date.now() > deadline) return false;
    await sleep(stepMs);
  }
}

/** Pids printed by the simulator's helper-process knob. */
export function helperPids(lines: string[]): number[] {
  return lines.flatMap((l) => {
    const m = /Started helper process pid (\d+)/.exec(l);
    return m ? [Number(m[1])] : [];
  });
}

/** Live children of `ppid` whose command line contains `text` (read from /proc, no pgrep needed). */
export function childrenMatching(ppid: number, text: string): number[] {
  return liveProcesses()
    .filter((p) => p.ppid === ppid && cmdline(p.pid).includes(text))
    .map((p) => p.pid);
}
