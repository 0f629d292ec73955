/**
 * Checks a worker makes before it takes any job: a missing shared root (filesystem not mounted)
 * or a MARS command that cannot run would otherwise fail, or worse misplace, every job it pulls.
 */
import { constants as fs } from "node:fs";
import { access } from "node:fs/promises";
import { delimiter, join } from "node:path";
import { type FleetConfig, marsCommandArgv } from "../config/index.js";
import { ConfigError } from "../core/index.js";
import { isDirectory } from "../runner/index.js";

async function executable(path: string): Promise<boolean> {
  return access(path, fs.X_OK).then(
    () => true,
    () => false,
  );
}

/** Where `name` would be run from: itself when it holds a slash, else the first hit on PATH. */
export async function resolveCommand(name: string): Promise<string | undefined> {
  if (name.includes("/")) return (await executable(name)) ? name : undefined;
  for (const dir of (process.env["PATH"] ?? "").split(delimiter).filter(Boolean)) {
    const candidate = join(dir, name);
    if (await executable(candidate)) return candidate;
  }
  return undefined;
}

export async function preflight(config: FleetConfig): Promise<void> {
  const root = config.sharedRoot;
  if (!(await isDirectory(root))) {
    throw new ConfigError(
      `shared root ${root} does not exist or is not a directory: is the shared filesystem mounted? (MARS_SHARED_ROOT)`,
      { sharedRoot: root },
    );
  }
  await access(root, fs.W_OK).catch((err: unknown) => {
    throw new ConfigError(`shared root ${root} is not writable by this worker`, { sharedRoot: root }, err);
  });
  const command = marsCommandArgv(config);
  if (command && !(await resolveCommand(command[0]!))) {
    throw new ConfigError(
      `MARS command ${JSON.stringify(command[0])} is not found or not executable (MARS_COMMAND)`,
      {
        marsCommand: config.marsCommand,
      },
    );
  }
}
