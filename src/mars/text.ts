import { MarsRequestError } from "../core/index.js";
import {
  KEY_PATTERN,
  SINGLE_VALUE_KEYS,
  canonicalKey,
  canonicalVerb,
  checkToken,
  inheritKeys,
  type MarsRequest,
} from "./request.js";

/** A bare token needs no quotes: identifiers, numbers, dates, times, `167.128`, `-1`. */
const BARE_TOKEN = /^[A-Za-z0-9_.:+-]+$/;

/** `"…"`, or `'…'` when the value holds a double quote (checkToken refuses values holding both). */
function quoted(token: string): string {
  return token.includes('"') ? `'${token}'` : `"${token}"`;
}

/**
 * Serialise requests to MARS request text, one `key=value` per line, values quoted where needed.
 * Every key and value is checked again here, whatever built the request (a client, or a message
 * off the wire): nothing reaches MARS that could smuggle in another key or request.
 */
export function formatRequests(requests: MarsRequest[]): string {
  return requests.map(formatRequest).join("\n");
}

export function formatRequest(req: MarsRequest): string {
  const lines: string[] = [canonicalVerb(req.verb)];
  for (const [key, tokens] of Object.entries(req.params)) {
    if (!KEY_PATTERN.test(key)) {
      throw new MarsRequestError(
        `invalid keyword ${JSON.stringify(key)}: keywords are letters, digits and _`,
        {
          key,
        },
      );
    }
    if (tokens.length === 0) throw new MarsRequestError(`empty value for "${key}"`, { key });
    const value = SINGLE_VALUE_KEYS.has(key)
      ? quoted(checkToken(key, tokens.join("/")))
      : tokens
          .map((t) => checkToken(key, t))
          .map((t) => (BARE_TOKEN.test(t) ? t : quoted(t)))
          .join("/");
    lines.push(`    ${key}=${value}`);
  }
  return lines.join(",\n") + "\n";
}

class Scanner {
  pos = 0;
  constructor(readonly text: string) {}

  get done(): boolean {
    return this.pos >= this.text.length;
  }
  peek(): string {
    return this.text[this.pos] ?? "";
  }
  where(): string {
    const before = this.text.slice(0, this.pos);
    const line = before.split("\n").length;
    const col = this.pos - before.lastIndexOf("\n");
    return `line ${line}, column ${col}`;
  }
  fail(message: string): never {
    throw new MarsRequestError(`syntax error at ${this.where()}: ${message}`, { position: this.pos });
  }
  /** Skip white space (newlines included) and `#` comments. */
  skipSpace(): void {
    while (!this.done) {
      const c = this.peek();
      if (c === "#") {
        while (!this.done && this.peek() !== "\n") this.pos++;
      } else if (/\s/.test(c)) {
        this.pos++;
      } else {
        return;
      }
    }
  }
  word(what: string): string {
    const m = /^[A-Za-z0-9_.-]+/.exec(this.text.slice(this.pos));
    if (!m) this.fail(`expected ${what}, found ${JSON.stringify(this.peek() || "end of text")}`);
    this.pos += m[0].length;
    return m[0];
  }
  quoted(): string {
    const quote = this.peek();
    const end = this.text.indexOf(quote, this.pos + 1);
    if (end < 0) this.fail(`unbalanced ${quote} quote`);
    const value = this.text.slice(this.pos + 1, end);
    this.pos = end + 1;
    return value;
  }
  /** A bare item ends at one of `stops`, a newline or a comment; surrounding blanks are dropped. */
  bare(stops: string): string {
    const start = this.pos;
    while (!this.done && !stops.includes(this.peek()) && this.peek() !== "\n" && this.peek() !== "#")
      this.pos++;
    return this.text.slice(start, this.pos).trim();
  }
}

function readValue(s: Scanner, key: string): string[] {
  s.skipSpace();
  if (SINGLE_VALUE_KEYS.has(key)) {
    const c = s.peek();
    const value = c === '"' || c === "'" ? s.quoted() : s.bare(",");
    if (value === "") s.fail(`missing value for "${key}"`);
    return [checkToken(key, value)];
  }
  const tokens: string[] = [];
  for (;;) {
    s.skipSpace();
    const c = s.peek();
    const item = c === '"' || c === "'" ? s.quoted() : s.bare(",/=\"'");
    if (item === "") s.fail(`missing value for "${key}"`);
    tokens.push(checkToken(key, item));
    s.skipSpace();
    if (s.peek() !== "/") return tokens;
    s.pos++;
  }
}

/**
 * Parse MARS request text (`verb, key=value, ...`, several requests allowed, `#` comments).
 * Keys not repeated in a later request are inherited from the one before.
 */
export function parseRequests(text: string): MarsRequest[] {
  const s = new Scanner(text);
  const requests: MarsRequest[] = [];
  for (;;) {
    s.skipSpace();
    if (s.done) break;
    const verb = canonicalVerb(s.word("a verb such as retrieve"));
    const params: Record<string, string[]> = {};
    for (;;) {
      s.skipSpace();
      if (s.peek() !== ",") break;
      s.pos++;
      s.skipSpace();
      if (s.done) break; // a trailing comma at the end of the text is tolerated
      const key = canonicalKey(s.word("a keyword"));
      s.skipSpace();
      if (s.peek() !== "=") s.fail(`expected "=" after "${key}"`);
      s.pos++;
      if (key in params) s.fail(`keyword "${key}" given twice`);
      params[key] = readValue(s, key);
    }
    requests.push({ verb, params });
  }
  if (requests.length === 0) throw new MarsRequestError("the request text holds no request");
  return inheritKeys(requests);
}
