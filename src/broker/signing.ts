/**
 * Records that grant power (the QoS rules, API keys) carry the admin's signature: an nkey signature
 * over the record's canonical form, its kind and its key. Every reader checks it against the trust
 * key of its configuration and ignores a record without a valid one, so whatever reaches those
 * buckets by another path has no effect (docs/SECURITY.md, "Authority is signed").
 *
 * An open fleet (no credentials: the demo, tests on loopback) has no admin and no trust key: there
 * records are read unsigned. A fleet with credentials must name its trust key.
 */
import { readFileSync } from "node:fs";
import { fromPublic, fromSeed } from "@nats-io/nkeys";
import { z } from "zod";
import { ConfigError } from "../core/index.js";

export const signatureSchema = z.object({
  /** The signing key's public half (nkey, `U…`). */
  key: z.string(),
  /** base64url of the nkey signature. */
  sig: z.string(),
});
export type RecordSignature = z.infer<typeof signatureSchema>;

/** What may sign and what must have signed the records this process reads and writes. */
export interface RecordAuthority {
  /** The admin's signing key every record must carry; undefined on an open fleet. */
  trustKey: string | undefined;
  /** Signs a record (an admin's process with MARS_SIGNING_KEY); undefined when this one cannot. */
  sign: ((kind: string, key: string, record: object) => RecordSignature) | undefined;
}

/** No admin, no signatures: an open fleet. */
export const OPEN_FLEET: RecordAuthority = { trustKey: undefined, sign: undefined };

const USER_SEED = /SU[A-Z2-7]{56}/;
const USER_KEY = /^U[A-Z2-7]{55}$/;

/** The trust key as given: the key itself, or the path of a file holding it (trust.pub). */
function trustKeyOf(value: string): string {
  if (USER_KEY.test(value)) return value;
  try {
    return readFileSync(value, "utf8").trim();
  } catch {
    throw new ConfigError("trust_key is neither an nkey public key (U…) nor a readable file holding one");
  }
}

/** JSON with every object's keys in order: the same record always gives the same bytes. */
function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  if (value !== null && typeof value === "object") {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([k, v]) => v !== undefined && k !== "signature")
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(",")}}`;
  }
  return JSON.stringify(value);
}

/** What is signed: the kind and key name where the record lives, so it cannot be moved elsewhere. */
function signedBytes(kind: string, key: string, record: object): Uint8Array {
  return new TextEncoder().encode(`mars-fleet/${kind}/${key}\n${canonicalJson(record)}`);
}

/** Whether `record` carries a valid signature by `authority`'s trust key (always, on an open fleet). */
export function hasValidSignature(
  authority: RecordAuthority,
  kind: string,
  key: string,
  record: { signature?: RecordSignature | undefined },
): boolean {
  if (authority.trustKey === undefined) return true;
  const s = record.signature;
  if (!s || s.key !== authority.trustKey) return false;
  try {
    return fromPublic(s.key).verify(signedBytes(kind, key, record), Buffer.from(s.sig, "base64url"));
  } catch {
    return false; // a malformed key or signature is no signature
  }
}

/** The authority a configuration gives: its trust key, and a signer when it names a signing seed. */
export function recordAuthority(
  settings: { trustKey: string; signingKey: string },
  authenticated: boolean,
): RecordAuthority {
  let sign: RecordAuthority["sign"];
  let signerKey: string | undefined;
  if (settings.signingKey !== "") {
    let text: string;
    try {
      text = readFileSync(settings.signingKey, "utf8");
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? "error";
      throw new ConfigError(`cannot read the signing key ${settings.signingKey}: ${code}`, {
        file: settings.signingKey,
      });
    }
    const seed = USER_SEED.exec(text)?.[0];
    if (!seed)
      throw new ConfigError(`signing key ${settings.signingKey} holds no nkey user seed (SU…)`, {
        file: settings.signingKey,
      });
    const pair = fromSeed(new TextEncoder().encode(seed));
    signerKey = pair.getPublicKey();
    sign = (kind, key, record) => ({
      key: signerKey!,
      sig: Buffer.from(pair.sign(signedBytes(kind, key, record))).toString("base64url"),
    });
  }
  const trustKey = settings.trustKey !== "" ? trustKeyOf(settings.trustKey) : signerKey;
  if (trustKey !== undefined) {
    try {
      fromPublic(trustKey);
    } catch {
      throw new ConfigError("trust_key is not an nkey public key (U…): give the key `broker auth` printed");
    }
    if (signerKey !== undefined && signerKey !== trustKey)
      throw new ConfigError("signing_key is not the key trust_key names: records it signs would be refused");
  } else if (authenticated) {
    throw new ConfigError(
      "trust_key (MARS_TRUST_KEY) is not set: a fleet with credentials reads QoS rules and API keys only when signed by its admin; `broker auth` wrote the key to trust.pub",
    );
  }
  return { trustKey, sign };
}
