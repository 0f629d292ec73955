/**
 * How a process proves who it is to the broker: credentials (an nkey seed file, a `.creds` file, or
 * a user and password) and TLS. Secrets are read here and handed to the NATS client; they never
 * reach a log line or an error message.
 */
import { accessSync, constants, readFileSync } from "node:fs";
import { fromSeed } from "@nats-io/nkeys";
import {
  credsAuthenticator,
  nkeyAuthenticator,
  usernamePasswordAuthenticator,
  type ConnectionOptions,
} from "@nats-io/transport-node";
import type { FleetConfig } from "../config/index.js";
import { ConfigError } from "../core/index.js";
import { isToken } from "./subjects.js";

export type SecuritySettings = Pick<
  FleetConfig,
  "creds" | "natsUser" | "natsPassword" | "tlsCa" | "tlsCert" | "tlsKey" | "trustKey" | "signingKey"
>;

export const NO_SECURITY: SecuritySettings = {
  creds: "",
  natsUser: "",
  natsPassword: "",
  tlsCa: "",
  tlsCert: "",
  tlsKey: "",
  trustKey: "",
  signingKey: "",
};

/** What the NATS client is given, and who the connection says it is. */
export interface ConnectionSecurity {
  servers: string[];
  options: Pick<ConnectionOptions, "authenticator" | "tls" | "inboxPrefix">;
  /** The authenticated identity: a user name or an nkey public key; undefined on an open server. */
  identity: string | undefined;
}

const JWT_BEGIN = "-----BEGIN NATS USER JWT-----";
const SEED_BEGIN = "-----BEGIN USER NKEY SEED-----";
const USER_SEED = /^SU[A-Z2-7]{56}$/;

/**
 * Replies come to `_INBOX.<identity>.…`, so that each user can be allowed to read its own replies
 * and nobody else's (see docs/SECURITY.md). An open server keeps the plain `_INBOX` prefix.
 */
export function inboxPrefixFor(identity: string | undefined): string {
  // A name that cannot be a subject token keeps the shared prefix (and needs `_INBOX.>`).
  return identity !== undefined && isToken(identity) ? `_INBOX.${identity}` : "_INBOX";
}

/** The public key of an nkey user seed (`SU…`). */
export function publicKeyOf(seed: string): string {
  return fromSeed(new TextEncoder().encode(seed)).getPublicKey();
}

/** `op` on a file the configuration names; failing, a ConfigError naming the file (never its contents). */
function withFile<T>(path: string, what: string, op: () => T): T {
  try {
    return op();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? "error";
    throw new ConfigError(`cannot read the ${what} ${path}: ${code}`, { file: path });
  }
}

function readSecretFile(path: string, what: string): string {
  return withFile(path, what, () => readFileSync(path, "utf8"));
}

/** The authenticator and identity a credentials file gives. */
function fromCredsFile(path: string): {
  authenticator: ConnectionOptions["authenticator"];
  identity: string;
} {
  const text = readSecretFile(path, "credentials file");
  if (text.includes(JWT_BEGIN)) {
    const seed = text.split(SEED_BEGIN)[1]?.match(/SU[A-Z2-7]{56}/)?.[0];
    if (!seed) throw new ConfigError(`credentials file ${path} has a JWT but no user seed`, { file: path });
    return { authenticator: credsAuthenticator(new TextEncoder().encode(text)), identity: publicKeyOf(seed) };
  }
  const seed = text.trim();
  if (!USER_SEED.test(seed)) {
    throw new ConfigError(
      `credentials file ${path} holds neither an nkey user seed (SU…) nor a NATS .creds file`,
      { file: path },
    );
  }
  return {
    authenticator: nkeyAuthenticator(new TextEncoder().encode(seed)),
    identity: publicKeyOf(seed),
  };
}

/** `nats://user:pass@host:4222` → the URL without its credentials, and the credentials. */
function splitUrlCredentials(url: string): { url: string; user?: string; pass?: string } {
  const m = /^([a-z]+:\/\/)?([^@/]*)@(.*)$/i.exec(url);
  if (!m) return { url };
  const [user, ...rest] = m[2]!.split(":");
  return {
    url: `${m[1] ?? ""}${m[3]}`,
    user: decodeURIComponent(user ?? ""),
    ...(rest.length > 0 && { pass: decodeURIComponent(rest.join(":")) }),
  };
}

/** Everything the NATS client needs to authenticate and encrypt, from the configuration. */
export function connectionSecurity(servers: string[], s: SecuritySettings): ConnectionSecurity {
  let user = s.natsUser || undefined;
  let pass = s.natsPassword || undefined;
  const bare = servers.map((url) => {
    const split = splitUrlCredentials(url);
    if (split.user !== undefined && user === undefined) {
      user = split.user;
      pass = split.pass;
    }
    return split.url;
  });
  const options: ConnectionSecurity["options"] = {};
  let identity: string | undefined;
  if (s.creds !== "") {
    if (user !== undefined)
      throw new ConfigError("give either a credentials file or a NATS user (here in a server URL), not both");
    const c = fromCredsFile(s.creds);
    options.authenticator = c.authenticator;
    identity = c.identity;
  } else if (user !== undefined) {
    options.authenticator = usernamePasswordAuthenticator(user, pass);
    identity = user;
  }
  for (const [file, what] of [
    [s.tlsCa, "TLS CA file"],
    [s.tlsCert, "TLS certificate"],
    [s.tlsKey, "TLS key"],
  ] as const) {
    // A missing or unreadable file is named now, not as a TLS failure later; the TLS layer reads it.
    if (file !== "") withFile(file, what, () => accessSync(file, constants.R_OK));
  }
  if (s.tlsCa !== "" || s.tlsCert !== "") {
    options.tls = {
      ...(s.tlsCa !== "" && { caFile: s.tlsCa }),
      ...(s.tlsCert !== "" && { certFile: s.tlsCert, keyFile: s.tlsKey }),
    };
  }
  options.inboxPrefix = inboxPrefixFor(identity);
  return { servers: bare, options, identity };
}
