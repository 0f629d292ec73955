import { execFileP } from "./proc.js";

export interface GribRow {
  [key: string]: string;
}

/** Decode a GRIB file with ecCodes' grib_ls (the oracle) and return one row per message. */
export async function gribLs(path: string, keys: string[]): Promise<GribRow[]> {
  const { stdout } = await execFileP("grib_ls", ["-j", "-p", keys.join(","), path]);
  const doc = JSON.parse(stdout) as { messages: Array<Record<string, unknown>> };
  return doc.messages.map((m) => Object.fromEntries(Object.entries(m).map(([k, v]) => [k, String(v)])));
}

export async function gribCount(path: string): Promise<number> {
  const { stdout } = await execFileP("grib_count", [path]);
  return Number(stdout.trim());
}
