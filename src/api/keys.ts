/**
 * API keys of the HTTP face: bearer tokens `mfk_<id>_<secret>`, stored in the `mars-api-keys` KV
 * bucket under their id with the SHA-256 of their secret (never the secret), each bound to a user
 * and a role. A `user` key sees and cancels its own jobs only; an `admin` key sees all.
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { Kvm, type KV } from "@nats-io/kv";
import { jetstream, type JetStreamClient } from "@nats-io/jetstream";
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import { z } from "zod";
import {
  API_KEYS_BUCKET,
  bucketKeys,
  decode,
  encode,
  hasValidSignature,
  kvSubject,
  type RecordAuthority,
  signatureSchema,
} from "../broker/index.js";
import { ConfigError } from "../core/index.js";

export const API_ROLES = ["user", "admin"] as const;
export type ApiRole = (typeof API_ROLES)[number];

export const apiKeySchema = z.object({
  id: z.string().regex(/^[0-9a-f]{12}$/),
  user: z.string().min(1).max(256),
  role: z.enum(API_ROLES),
  /** SHA-256 of the secret, hex: the secret is random and long, so a fast hash is enough. */
  hash: z.string().regex(/^[0-9a-f]{64}$/),
  createdAt: z.number(),
  /** The admin's signature (broker/signing.ts): a key without a valid one opens nothing. */
  signature: signatureSchema.optional(),
});
export type ApiKey = z.infer<typeof apiKeySchema>;

/** Who a request speaks for. */
export interface Principal {
  user: string;
  role: ApiRole;
  keyId: string;
}

/** The kind name signatures over API keys carry (broker/signing.ts). */
const KEY_KIND = "api-key";
const TOKEN = /^mfk_([0-9a-f]{12})_([A-Za-z0-9_-]{32})$/;
const sha256 = (s: string): string => createHash("sha256").update(s).digest("hex");

/**
 * How long a verified key is trusted without asking the broker again. A revocation is heard at once
 * (see `follow`); this bounds how long one missed during a reconnect would go unnoticed.
 */
export const KEY_CACHE_MS = 5000;
const KEY_CACHE_MAX = 10_000;

export class ApiKeys {
  private readonly verified = new Map<string, { principal: Principal; until: number }>();

  private sub: Subscription | undefined;

  constructor(
    private readonly kv: KV,
    private readonly js: JetStreamClient,
    private readonly authority: RecordAuthority,
  ) {}

  /**
   * The keys in the fleet's `mars-api-keys` bucket, over this connection; `authority` says who must
   * have signed them (a BrokerConnection's, or OPEN_FLEET on a fleet without credentials).
   */
  static async open(conn: NatsConnection | JetStreamClient, authority: RecordAuthority): Promise<ApiKeys> {
    const js = "jetstreamManager" in conn ? conn : jetstream(conn);
    return new ApiKeys(await new Kvm(js).open(API_KEYS_BUCKET), js, authority);
  }

  /** Forget a cached key the moment its entry changes (a revocation takes effect at once). */
  follow(nc: NatsConnection): void {
    this.sub = nc.subscribe(kvSubject(API_KEYS_BUCKET, "*"), {
      callback: (_err, msg) => {
        const id = msg.subject.slice(kvSubject(API_KEYS_BUCKET, "").length);
        for (const [token, v] of this.verified) if (v.principal.keyId === id) this.verified.delete(token);
      },
    });
  }

  close(): void {
    this.sub?.unsubscribe();
  }

  /** A new key for `user`; the token is returned once and stored nowhere. */
  async add(user: string, role: ApiRole): Promise<{ token: string; key: ApiKey }> {
    if (!user.trim()) throw new ConfigError("an API key needs a user");
    const id = randomBytes(6).toString("hex");
    const secret = randomBytes(24).toString("base64url");
    const unsigned: ApiKey = { id, user, role, hash: sha256(secret), createdAt: Date.now() };
    let key = unsigned;
    if (this.authority.sign) key = { ...unsigned, signature: this.authority.sign(KEY_KIND, id, unsigned) };
    else if (this.authority.trustKey !== undefined)
      throw new ConfigError(
        "adding an API key needs the admin's signing key (MARS_SIGNING_KEY, signing.nk from `broker auth`)",
      );
    await this.kv.create(id, encode(key));
    return { token: `mfk_${id}_${secret}`, key };
  }

  async list(): Promise<ApiKey[]> {
    const out: ApiKey[] = [];
    for (const id of await bucketKeys(await this.js.jetstreamManager(false), API_KEYS_BUCKET)) {
      const e = await this.kv.get(id);
      if (!e || e.operation !== "PUT" || e.length === 0) continue;
      const key = decode(apiKeySchema, e.value, `API key ${id}`);
      // One not signed by the admin opens nothing, so it is not listed as a key.
      if (hasValidSignature(this.authority, KEY_KIND, id, key)) out.push(key);
    }
    return out.sort((a, b) => a.createdAt - b.createdAt);
  }

  /** Revoke a key by id; false when there is no such key. */
  async revoke(id: string): Promise<boolean> {
    const e = await this.kv.get(id);
    if (!e || e.operation !== "PUT") return false;
    await this.kv.delete(id);
    return true;
  }

  /** The principal a bearer token stands for, or undefined for an unknown, revoked or malformed one. */
  async verify(token: string): Promise<Principal | undefined> {
    const hit = this.verified.get(token);
    if (hit && hit.until > Date.now()) return hit.principal;
    const principal = await this.lookUp(token);
    if (this.verified.size >= KEY_CACHE_MAX) this.verified.clear();
    if (principal) this.verified.set(token, { principal, until: Date.now() + KEY_CACHE_MS });
    else this.verified.delete(token);
    return principal;
  }

  private async lookUp(token: string): Promise<Principal | undefined> {
    const m = TOKEN.exec(token);
    if (!m) return undefined;
    const e = await this.kv.get(m[1]!);
    if (!e || e.operation !== "PUT" || e.length === 0) return undefined;
    const key = decode(apiKeySchema, e.value, `API key ${m[1]}`);
    if (!hasValidSignature(this.authority, KEY_KIND, m[1]!, key)) return undefined; // not the admin's
    const given = Buffer.from(sha256(m[2]!), "hex");
    if (!timingSafeEqual(given, Buffer.from(key.hash, "hex"))) return undefined;
    return { user: key.user, role: key.role, keyId: key.id };
  }
}
