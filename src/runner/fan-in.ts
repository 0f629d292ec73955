/**
 * Fan-in of a split job (#27): the parts' GRIB files assembled into one file holding the fields one
 * MARS run over the whole request writes, in its order.
 *
 * GRIB messages are self-delimiting: each starts with `GRIB` and carries its length. A GRIB2
 * message's keys are read from its sections (parameter, reference date and time, step, level,
 * ensemble member) and the messages of all parts are ordered by FIELD_ORDER, stably, so fields with
 * equal keys keep their part order. That is the simulator's order (src/sim/fields.ts: parameter,
 * then date, time, step, level, member, each ascending) and the order in which MARS lists the
 * fields of one hypercube. A part whose bytes are not GRIB2 (GRIB1, or no GRIB at all) is not
 * reordered: its bytes follow the keyed messages' run in part order.
 *
 * Parts are only read; the output is written whole to `out` and synced by the caller's commit.
 */
import { open, type FileHandle } from "node:fs/promises";
import { PARAMS } from "../mars/index.js";

/** What orders the fields: compared in this order, each ascending. */
export const FIELD_ORDER = ["param", "date", "time", "step", "level", "member"] as const;

export interface FieldKey {
  param: number;
  date: number;
  time: number;
  step: number;
  level: number;
  member: number;
}

interface Located {
  part: number;
  offset: number;
  length: number;
  key: FieldKey | undefined;
}

const COPY_CHUNK = 1 << 20;
/** Parameter ids by GRIB2 discipline, category, number and first surface (2t and t share the rest). */
const PARAM_ORDER = new Map(
  PARAMS.map((p) => [`${p.discipline}.${p.category}.${p.number}.${p.surfaceType}`, p.paramId]),
);

/** The keys of one GRIB2 message from its sections 0, 1 and 4 (undefined when it has none of them). */
export function gribKey(
  discipline: number,
  s1: Buffer | undefined,
  s4: Buffer | undefined,
): FieldKey | undefined {
  if (!s1 || !s4 || s1.length < 19 || s4.length < 34) return undefined;
  const template = s4.readUInt16BE(7);
  const category = s4[9]!;
  const number = s4[10]!;
  const surface = s4[22]!;
  const param =
    PARAM_ORDER.get(`${discipline}.${category}.${number}.${surface}`) ??
    1_000_000 + discipline * 65_536 + category * 256 + number;
  let step = s4.readUInt32BE(18);
  if (template === 8 && s4.length >= 53) step += s4.readUInt32BE(49); // accumulated: the range's end
  const member = (template === 1 || template === 11) && s4.length >= 36 ? s4[35]! : 0;
  return {
    param,
    date: s1.readUInt16BE(12) * 10_000 + s1[14]! * 100 + s1[15]!,
    time: s1[16]! * 100 + s1[17]!,
    step,
    level: s4.readUInt32BE(24),
    member,
  };
}

function compare(a: FieldKey, b: FieldKey): number {
  for (const k of FIELD_ORDER) if (a[k] !== b[k]) return a[k] - b[k];
  return 0;
}

async function readAt(fh: FileHandle, offset: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  const { bytesRead } = await fh.read(buf, 0, length, offset);
  return buf.subarray(0, bytesRead);
}

/**
 * The messages of one part file, with their keys; undefined when the file is not a run of whole
 * GRIB2 messages (it is then taken whole, unordered).
 */
async function scan(fh: FileHandle, part: number, size: number): Promise<Located[] | undefined> {
  const found: Located[] = [];
  let offset = 0;
  while (offset < size) {
    const head = await readAt(fh, offset, 16);
    if (head.length < 16 || head.toString("latin1", 0, 4) !== "GRIB" || head[7] !== 2) return undefined;
    const length = Number(head.readBigUInt64BE(8));
    if (length < 16 + 4 || offset + length > size) return undefined;
    let s1: Buffer | undefined;
    let s4: Buffer | undefined;
    let at = offset + 16;
    while (at < offset + length - 4 && !(s1 && s4)) {
      const sec = await readAt(fh, at, 5);
      if (sec.length < 5) return undefined;
      const secLength = sec.readUInt32BE(0);
      if (secLength < 5 || at + secLength > offset + length) return undefined;
      if (sec[4] === 1) s1 = await readAt(fh, at, Math.min(secLength, 64));
      if (sec[4] === 4) s4 = await readAt(fh, at, Math.min(secLength, 64));
      at += secLength;
    }
    found.push({ part, offset, length, key: gribKey(head[6]!, s1, s4) });
    offset += length;
  }
  return found;
}

/** Copy `length` bytes of `from` at `offset` to the end of `to` (at `position`). */
async function copyRange(
  from: FileHandle,
  to: FileHandle,
  offset: number,
  length: number,
  position: number,
  buf: Buffer,
): Promise<void> {
  let done = 0;
  while (done < length) {
    const n = Math.min(buf.length, length - done);
    const { bytesRead } = await from.read(buf, 0, n, offset + done);
    if (bytesRead !== n) throw new Error(`a part file ended early (${offset + done + bytesRead} bytes)`);
    await to.write(buf, 0, n, position + done);
    done += n;
  }
}

export interface Assembled {
  bytes: number;
  messages: number;
  /** Whether any message moved out of part order. */
  reordered: boolean;
}

/** Assemble `parts` (in part order) into `out` (created, or truncated), ordered as above. */
export async function assembleParts(parts: readonly string[], out: string): Promise<Assembled> {
  const handles: FileHandle[] = [];
  const output = await open(out, "w", 0o644);
  try {
    const ranges: Located[] = [];
    for (const [i, path] of parts.entries()) {
      const fh = await open(path, "r");
      handles.push(fh);
      const size = (await fh.stat()).size;
      const messages = await scan(fh, i, size);
      ranges.push(...(messages ?? [{ part: i, offset: 0, length: size, key: undefined }]));
    }
    // Stable: equal keys (and unkeyed runs, kept after the keyed ones) stay in part order.
    const keyed = ranges.filter((r) => r.key !== undefined);
    const sorted = [...keyed].sort((a, b) => compare(a.key!, b.key!));
    const ordered = [...sorted, ...ranges.filter((r) => r.key === undefined)];
    const reordered = sorted.some((r, i) => r !== keyed[i]);
    // Neighbouring messages of one part are copied as one range.
    const runs: Array<{ part: number; offset: number; length: number }> = [];
    for (const r of ordered) {
      const last = runs.at(-1);
      if (last && last.part === r.part && last.offset + last.length === r.offset) last.length += r.length;
      else runs.push({ part: r.part, offset: r.offset, length: r.length });
    }
    const buf = Buffer.allocUnsafe(COPY_CHUNK);
    let position = 0;
    for (const run of runs) {
      await copyRange(handles[run.part]!, output, run.offset, run.length, position, buf);
      position += run.length;
    }
    return { bytes: position, messages: ranges.length, reordered };
  } finally {
    await output.close();
    await Promise.all(handles.map((h) => h.close()));
  }
}
