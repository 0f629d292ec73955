/**
 * Starting MARS in a process group of its own, guarded against the death of its parent.
 *
 * The command runs under `/bin/sh` as the group leader (Node's `detached` calls setsid). The shell's
 * stdin is a pipe that this process holds and never writes: when this process dies, even by SIGKILL
 * or the OOM killer, the kernel closes it, the watchdog reads EOF and kills the whole group. So no
 * MARS process outlives the worker that started it.
 */
import { spawn, type ChildProcess } from "node:child_process";

const GUARD_SCRIPT = [
  "exec 3<&0",
  // EOF on fd 3 means our parent is gone: take the whole group down.
  "( while read -r _ <&3; do :; done; kill -KILL 0 ) &",
  "watchdog=$!",
  '"$@" </dev/null 3<&- &',
  "wait $!",
  "rc=$?",
  "kill $watchdog 2>/dev/null",
  // Reap it: an orphan would wait for init, and not every init reaps.
  "wait $watchdog 2>/dev/null",
  "exit $rc",
].join("\n");

export interface GroupProcess {
  child: ChildProcess;
  /** Process group id (= pid of the guard shell). */
  pgid: number;
}

/** Spawn `command` in a new process group under the parent-death watchdog. */
export function spawnInGroup(command: readonly string[], env: NodeJS.ProcessEnv, cwd: string): GroupProcess {
  if (command.length === 0) throw new Error("empty MARS command");
  const child = spawn("/bin/sh", ["-c", GUARD_SCRIPT, "mars-guard", ...command], {
    detached: true,
    stdio: ["pipe", "pipe", "pipe"],
    env,
    cwd,
  });
  // The pipe must stay open for the life of the run; errors on it (child gone) are expected.
  child.stdin?.on("error", () => undefined);
  return { child, pgid: child.pid ?? -1 };
}

/** Send a signal to every process of a group; false when the group no longer exists. */
export function signalGroup(pgid: number, signal: NodeJS.Signals | 0): boolean {
  if (pgid <= 0) return false;
  try {
    process.kill(-pgid, signal);
    return true;
  } catch {
    return false;
  }
}

/** Whether any process of the group is still alive. */
export function groupAlive(pgid: number): boolean {
  return signalGroup(pgid, 0);
}
