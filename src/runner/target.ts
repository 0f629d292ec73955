/** Atomic targets: MARS writes to a temporary name beside the target, renamed only on success. */
import { unlinkSync } from "node:fs";
import { lstat, mkdir, open, readdir, realpath, rename, rm, stat } from "node:fs/promises";
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { TargetError } from "../core/index.js";

const PART_SUFFIX = ".mars-part";

/** `/dir/.data.grib.<runId>.mars-part` beside `/dir/data.grib`. */
export function partPathFor(target: string, runId: string): string {
  return join(dirname(target), `.${basename(target)}.${runId}${PART_SUFFIX}`);
}

export function isPartFile(name: string): boolean {
  return name.startsWith(".") && name.endsWith(PART_SUFFIX);
}

/** Between a job's id and an attempt's number in the attempt's run id. */
const ATTEMPT_MARK = "-a";

/** The run id of a fleet job's attempt: its part file is `.<name>.<job>-a<attempt>.mars-part`. */
export function attemptRunId(jobId: string, attempt: number): string {
  return `${jobId}${ATTEMPT_MARK}${attempt}`;
}

/**
 * Of the file names in a target's directory, the part files of this job's attempts numbered
 * below `attempt`: a dead or stale attempt's leftovers. Not a later attempt's: an attempt that
 * lost the job while it got ready must not delete the part file of the one that has it now.
 */
export function earlierAttemptParts(
  names: string[],
  target: string,
  jobId: string,
  attempt: number,
): string[] {
  const prefix = `.${basename(target)}.${jobId}${ATTEMPT_MARK}`;
  return names.filter((n) => {
    if (!n.startsWith(prefix) || !n.endsWith(PART_SUFFIX)) return false;
    const number = n.slice(prefix.length, -PART_SUFFIX.length);
    return /^[1-9][0-9]*$/.test(number) && Number(number) < attempt;
  });
}

/** Whether `path` exists and is a directory. */
export async function isDirectory(path: string): Promise<boolean> {
  return stat(path).then(
    (s) => s.isDirectory(),
    () => false,
  );
}

/** Size of a file, or 0 if it does not exist. */
export async function sizeOf(path: string): Promise<number> {
  return (await fileIdentity(path)).size;
}

/** Size and inode number of a file; size 0 and no inode if it does not exist. */
export async function fileIdentity(path: string): Promise<{ size: number; ino?: number }> {
  try {
    const { size, ino } = await stat(path);
    return { size, ino };
  } catch {
    // Not written yet, or removed: nothing written.
    return { size: 0 };
  }
}

/**
 * Remove a small local file if it is there, with one synchronous call: `rmSync` with `force`
 * looks at the path twice before it unlinks it.
 */
export function removeLocalFile(path: string): void {
  try {
    unlinkSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    // ENOENT: already gone, which is what the caller wanted.
  }
}

/** The result cache's folder under the shared root (src/runner/result-cache.ts): no job target may be inside it. */
export const CACHE_DIR = ".cache";

/** Whether a path relative to the root lies in the result cache's folder. */
function inCacheDir(rel: string): boolean {
  return rel.split(sep)[0] === CACHE_DIR;
}

/** Make a file's data (flags "r+") or a directory's entries (flags "r") durable. */
export async function fsyncPath(path: string, flags: string): Promise<void> {
  const handle = await open(path, flags);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Make the data durable, then move it into place and make the rename durable too. */
export async function commitPart(part: string, target: string): Promise<void> {
  await fsyncPath(part, "r+");
  await rename(part, target);
  await fsyncPath(dirname(target), "r");
}

/**
 * Move a part file whose data is durable already into place (a result cache entry linked there:
 * its inode was made durable when MARS's output was committed), and make the rename durable.
 */
export async function commitDurablePart(part: string, target: string): Promise<void> {
  await rename(part, target);
  await fsyncPath(dirname(target), "r");
}

/**
 * Wait until the file another writer moved into place is at `target` (the same inode and size),
 * looking every 100 ms: whether it landed by `until`.
 */
export async function landsBy(
  target: string,
  file: { ino: number; bytes: number },
  until: number,
): Promise<boolean> {
  for (;;) {
    const found = await stat(target).catch(() => undefined); // not there: no rename yet
    if (found?.ino === file.ino && found.size === file.bytes) return true;
    if (Date.now() >= until) return false;
    await sleep(100);
  }
}

export async function discardPart(part: string): Promise<void> {
  await rm(part, { force: true });
}

/** Remove temporary files left in `dir` by an earlier crash; returns their names. */
export async function removeStaleParts(dir: string, olderThanMs = 0): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    // No directory: no part files in it.
    return [];
  }
  const removed: string[] = [];
  const cutoff = Date.now() - olderThanMs;
  for (const name of names.filter(isPartFile)) {
    const path = join(dir, name);
    try {
      if ((await stat(path)).mtimeMs <= cutoff) {
        await rm(path, { force: true });
        removed.push(name);
      }
    } catch {
      // Gone already: another cleaner got there first.
    }
  }
  return removed;
}

/** A plain file name: no directory part, not `.`/`..`, no control characters. */
export function checkFileName(name: string): string {
  const bothQuotes = name.includes('"') && name.includes("'"); // no MARS quoting can hold it
  if (name === "" || name === "." || name === ".." || bothQuotes || /[/\\\u0000-\u001f]/.test(name)) {
    throw new TargetError(`invalid target file name ${JSON.stringify(name)}: give a plain file name`, {
      targetFname: name,
    });
  }
  return name;
}

/**
 * Resolve `path` (absolute, or relative to `root`) and require it to lie inside `root`.
 * Anything escaping the root (`..`, another absolute path) is rejected, and so is anything in the
 * result cache's folder (`.cache`), which only workers write.
 */
export function resolveInside(root: string, path: string): string {
  if (/[\u0000-\u001f]/.test(path))
    throw new TargetError(`target path contains control characters`, { path });
  const rootAbs = resolve(root);
  const full = resolve(rootAbs, path);
  const rel = relative(rootAbs, full);
  if (rel === "" || rel.startsWith("..") || isAbsolute(rel)) {
    // The root is not named: this message reaches gateway and API clients.
    throw new TargetError(`target ${JSON.stringify(path)} is outside the shared root`, { path });
  }
  if (inCacheDir(rel))
    throw new TargetError(`target ${JSON.stringify(path)} is in the result cache's folder`, { path });
  return full;
}

/** Where a job's result goes, as an entry point asks for it. */
export interface TargetSpec {
  /** Its directory: relative to `within` (or the root), or absolute and inside the root. Default: that. */
  dir?: string | undefined;
  /** Its file name, a plain one. Default `data.grib`. */
  file?: string | undefined;
  /** A directory under the root (relative to it) that the target must stay inside: a user's own. */
  within?: string | undefined;
}

/** The file name a target gets when none is given (the adaptors' own default). */
export const DEFAULT_TARGET_NAME = "data.grib";

/**
 * The target a job carries, from any entry point (library, CLI, API, gateways): a path relative to
 * the shared root, inside it (and inside `within`), ending in a plain file name. Refuses anything
 * else with TARGET_INVALID, naming neither the root nor any other server path.
 */
export function jobTarget(root: string, spec: TargetSpec): string {
  const rootAbs = resolve(root);
  const base = spec.within === undefined ? rootAbs : resolveInside(rootAbs, spec.within);
  const dir = spec.dir === undefined ? base : isAbsolute(spec.dir) ? spec.dir : join(base, spec.dir);
  const full = resolveInside(rootAbs, join(dir, checkFileName(spec.file ?? DEFAULT_TARGET_NAME)));
  if (!within(base, full))
    throw new TargetError(`target ${JSON.stringify(spec.dir ?? "")} leaves its directory`, { dir: spec.dir });
  return relative(rootAbs, full);
}

function within(root: string, path: string): boolean {
  const rel = relative(root, path);
  return rel === "" || (!rel.startsWith("..") && !isAbsolute(rel));
}

/**
 * Make the directory of `targetPath` (already checked to lie inside `root` as text) and prove it is
 * inside the root on disk too: no component may be a symbolic link that leads out of the root, and
 * the target itself may be neither a symbolic link nor a directory. Refuses with TARGET_INVALID.
 */
export async function prepareTargetDir(root: string, targetPath: string): Promise<void> {
  const rootReal = await realRoot(root);
  const escape = (how: string): TargetError =>
    new TargetError(`target ${JSON.stringify(targetPath)} ${how}`, { path: targetPath, root: rootReal });
  const outside = "leads out of the shared root through a symbolic link";
  const dir = dirname(targetPath);
  // Usually the directory exists: resolving it, links followed, is the whole check.
  let dirReal = await realpath(dir).catch(() => undefined);
  if (dirReal === undefined) {
    const resolved = (path: string): Promise<string> =>
      realpath(path).catch(() => {
        throw escape("passes through a broken symbolic link");
      });
    const exists = (path: string): Promise<boolean> =>
      lstat(path).then(
        () => true,
        () => false,
      );
    // The deepest part of the path that exists must resolve inside the root, links followed.
    let existing = dir;
    while (!(await exists(existing))) existing = dirname(existing);
    if (!within(rootReal, await resolved(existing))) throw escape(outside);
    await mkdir(dir, { recursive: true });
    dirReal = await resolved(dir);
  }
  if (!within(rootReal, dirReal)) throw escape(outside);
  if (inCacheDir(relative(rootReal, dirReal)))
    throw escape("leads into the result cache's folder through a symbolic link");
  const target = await lstat(targetPath).catch(() => undefined); // absent: MARS creates it
  if (target?.isSymbolicLink()) throw escape("is a symbolic link");
  if (target?.isDirectory())
    throw new TargetError(`target ${targetPath} is a directory`, { target: targetPath });
}

/** The root's real path, resolved once per process: the configured root does not move under us. */
const realRoots = new Map<string, Promise<string>>();
function realRoot(root: string): Promise<string> {
  let p = realRoots.get(root);
  if (!p) {
    p = realpath(root);
    // A root that could not be resolved (not mounted yet) is tried again next time.
    p.catch(() => realRoots.delete(root));
    realRoots.set(root, p);
  }
  return p;
}
