import { readFile } from "node:fs/promises";
import { text } from "node:stream/consumers";
import { MarsRequestError } from "../core/index.js";
import type { MarsRequestInput } from "../client/index.js";

/** Read a request file: `.json` (an object or a list), anything else MARS request text; `-` is stdin. */
export async function readRequestFile(path: string): Promise<MarsRequestInput> {
  let content: string;
  try {
    content = path === "-" ? await text(process.stdin) : await readFile(path, "utf8");
  } catch (err) {
    throw new MarsRequestError(`cannot read request file ${path}: ${(err as Error).message}`, { path }, err);
  }
  const looksJson = path.endsWith(".json") || /^\s*[[{]/.test(content);
  if (!looksJson) return content;
  try {
    return JSON.parse(content) as MarsRequestInput;
  } catch (err) {
    throw new MarsRequestError(
      `request file ${path} is not valid JSON: ${(err as Error).message}`,
      { path },
      err,
    );
  }
}

/** `--environ key=value` pairs to an object. */
export function parseEnviron(pairs: readonly string[] | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const pair of pairs ?? []) {
    const eq = pair.indexOf("=");
    if (eq <= 0) throw new MarsRequestError(`--environ takes key=value, got ${JSON.stringify(pair)}`);
    out[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  return out;
}
