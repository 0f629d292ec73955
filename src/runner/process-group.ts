/**
 * Starting MARS in a process group of its own, guarded against the death of its parent.
 *
 * MARS is spawned directly as the leader of a new process group (Node's `detached` calls setsid).
 * One watchdog per Node process, a small `/bin/sh` loop, keeps the list of live MARS groups, which
 * this process writes to its stdin. It never writes anything else: when this process dies, even by
 * SIGKILL or the OOM killer, the kernel closes that pipe, the watchdog reads EOF and kills every
 * group still listed. So no MARS process outlives the worker that started it, and a job costs no
 * process besides MARS itself.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";

const WATCHDOG_SCRIPT = [
  'groups=" "',
  "while read -r line; do",
  '  case "$line" in',
  '    +*) groups="$groups${line#+} " ;;',
  '    -*) id=${line#-}; case "$groups" in *" $id "*) groups="${groups%% $id *} ${groups#* $id }" ;; esac ;;',
  "  esac",
  "done",
  // EOF: our parent is gone. Take every MARS group it left down.
  'for g in $groups; do kill -KILL -"$g" 2>/dev/null; done',
].join("\n");

/** Environment variable that marks a process as started by us for one run. */
export const RUN_MARKER = "MARS_FLEET_RUN";

class Watchdog {
  private child: ChildProcess | undefined;
  /** Groups alive now: handed again to a new watchdog if the old one was killed. */
  private readonly live = new Set<number>();

  /** Make sure a watchdog runs, before a group exists that would need it. */
  ensure(): ChildProcess {
    if (this.child && this.child.exitCode === null && this.child.signalCode === null) return this.child;
    const child = spawn("/bin/sh", ["-c", WATCHDOG_SCRIPT, "mars-watchdog"], {
      detached: true, // not in our group: a Ctrl-C to the terminal must not kill it first
      stdio: ["pipe", "ignore", "ignore"],
    });
    child.stdin?.on("error", () => undefined);
    // Killed by someone: start another at once and hand it the live groups.
    child.once("exit", () => {
      if (this.live.size > 0) this.ensure();
    });
    // Neither the watchdog nor its pipe may keep this process alive.
    child.unref();
    (child.stdin as unknown as { unref?: () => void } | null)?.unref?.();
    this.child = child;
    for (const pgid of this.live) child.stdin?.write(`+${pgid}\n`);
    return child;
  }

  register(pgid: number): void {
    this.live.add(pgid);
    this.ensure().stdin?.write(`+${pgid}\n`);
  }

  unregister(pgid: number): void {
    this.live.delete(pgid);
    this.child?.stdin?.write(`-${pgid}\n`);
  }
}

const watchdog = new Watchdog();

export interface GroupProcess {
  child: ChildProcess;
  /** Process group id (= pid of MARS, the group leader). */
  pgid: number;
  /** Call once the group is gone. */
  release(): void;
}

/**
 * Spawn `command` as the leader of a new process group, registered with the watchdog. Its output
 * is read from stdout alone: the command puts its stderr there (the runner's `2>&1`), so that
 * lines keep the order they were written in, and no second pipe is made for nothing.
 */
export function spawnInGroup(command: readonly string[], env: NodeJS.ProcessEnv, cwd: string): GroupProcess {
  if (command.length === 0) throw new Error("empty MARS command");
  watchdog.ensure();
  const child = spawn(command[0]!, command.slice(1), {
    detached: true,
    stdio: ["ignore", "pipe", "ignore"],
    env,
    cwd,
  });
  const pgid = child.pid ?? -1;
  if (pgid > 0) watchdog.register(pgid);
  let released = false;
  return {
    child,
    pgid,
    release: () => {
      if (released || pgid <= 0) return;
      released = true;
      watchdog.unregister(pgid);
    },
  };
}

/** Send a signal to every process of a group; false when the group no longer exists. */
export function signalGroup(pgid: number, signal: NodeJS.Signals | 0): boolean {
  if (pgid <= 0) return false;
  try {
    process.kill(-pgid, signal);
    return true;
  } catch {
    // ESRCH: the group is gone, which is what the caller wanted to know.
    return false;
  }
}

/** Whether process `pid` was started by us for run `runId` (so a reused pid is never killed). */
export function startedForRun(pid: number, runId: string): boolean {
  try {
    return readFileSync(`/proc/${pid}/environ`, "latin1").split("\0").includes(`${RUN_MARKER}=${runId}`);
  } catch {
    // No such process (or not ours to read): not a run of ours.
    return false;
  }
}
