/**
 * `mars-fleet broker auth` and the credentials settings: generated files, password users against a
 * real nats-server, credentials in server URLs, and clear errors for bad settings.
 */
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { connectBroker } from "../src/broker/connection.js";
import { connectionSecurity, NO_SECURITY } from "../src/broker/auth.js";
import { LocalNatsServer } from "../src/local/server.js";
import { ROLES } from "../src/broker/roles.js";
import { loadConfig } from "../src/config/load.js";
import { cli } from "./helpers/cli.js";
import { errorCode, thrown } from "./helpers/errors.js";

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), "mars-auth-"));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

function envFile(text: string): Record<string, string> {
  return Object.fromEntries(
    text
      .split("\n")
      .filter(Boolean)
      .map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]),
  );
}

describe("broker auth", { timeout: 120_000 }, () => {
  it("writes nkey credentials readable by their owner only, and an authorization block of public keys", async () => {
    const out = join(dir, "nkeys");
    const r = await cli(["broker", "auth", "--out", out, "--json"]);
    assert.equal(r.code, 0, r.stderr);
    const generated = JSON.parse(r.stdout) as {
      roles: Array<{ role: string; file: string; identity: string }>;
    };
    assert.deepEqual(generated.roles.map((x) => x.role).sort(), [...ROLES].sort());
    const conf = await readFile(join(out, "auth.conf"), "utf8");
    for (const role of generated.roles) {
      assert.equal((await stat(role.file)).mode & 0o777, 0o600, `${role.file} is readable by others`);
      const seed = (await readFile(role.file, "utf8")).trim();
      assert.match(seed, /^SU[A-Z2-7]{56}$/);
      assert.ok(!conf.includes(seed), "a seed is in the server's configuration");
      assert.ok(conf.includes(role.identity), `${role.role}'s public key is not in the block`);
    }
    // Again without --force: refused, nothing replaced.
    const again = await cli(["broker", "auth", "--out", out, "--json"]);
    assert.equal(again.code, 2);
    assert.equal((JSON.parse(again.stderr) as { error: { code: string } }).error.code, "CONFIG_INVALID");
    assert.equal(await readFile(join(out, "auth.conf"), "utf8"), conf);
  });

  it("makes bcrypt password users that nats-server accepts, also from a server URL", async () => {
    const out = join(dir, "passwords");
    const r = await cli(["broker", "auth", "--out", out, "--passwords"]);
    assert.equal(r.code, 0, r.stderr);
    const conf = await readFile(join(out, "auth.conf"), "utf8");
    const observer = envFile(await readFile(join(out, "observer.env"), "utf8"));
    assert.equal(observer["MARS_NATS_USER"], "mars-observer");
    const password = observer["MARS_NATS_PASSWORD"]!;
    assert.ok(!conf.includes(password), "a clear-text password is in the server's configuration");
    assert.match(conf, /"\$2[aby]\$11\$/);
    const server = await LocalNatsServer.start({ extraConfig: [conf] });
    try {
      // Each env file carries the admin's trust key too; the admin's also its signing key.
      const trustKey = observer["MARS_TRUST_KEY"]!;
      assert.equal(trustKey, (await readFile(join(out, "trust.pub"), "utf8")).trim());
      assert.equal(
        envFile(await readFile(join(out, "admin.env"), "utf8"))["MARS_SIGNING_KEY"],
        join(out, "signing.nk"),
      );
      assert.equal(observer["MARS_SIGNING_KEY"], undefined, "a role other than admin got the signing key");
      const settings = { ...NO_SECURITY, natsUser: "mars-observer", natsPassword: password, trustKey };
      const conn = await connectBroker({
        servers: [server.url],
        name: "t",
        timeoutMs: 5000,
        security: settings,
      });
      assert.equal(conn.identity, "mars-observer");
      assert.ok((await conn.jsm.getAccountInfo()).limits, "the observer may read account information");
      await conn.nc.close();
      const inUrl = `nats://mars-observer:${encodeURIComponent(password)}@127.0.0.1:${server.port}`;
      const viaUrl = await connectBroker({
        servers: [inUrl],
        name: "t",
        timeoutMs: 5000,
        security: { ...NO_SECURITY, trustKey },
      });
      assert.equal(viaUrl.identity, "mars-observer");
      await viaUrl.nc.close();
      const wrong = { ...settings, natsPassword: "not-it" };
      const refused = connectBroker({ servers: [server.url], name: "t", timeoutMs: 5000, security: wrong });
      assert.equal(await errorCode(refused), "BROKER_AUTH");
    } finally {
      await server.dispose();
    }
  });
});

describe("credentials settings", () => {
  it("refuses bad credentials settings with CONFIG_INVALID, naming the file and never its contents", async () => {
    const junk = join(dir, "junk.creds");
    await writeFile(junk, "not-a-seed-SECRETVALUE\n");
    const err = thrown(() => connectionSecurity(["nats://127.0.0.1:4222"], { ...NO_SECURITY, creds: junk }));
    assert.equal(err.code, "CONFIG_INVALID");
    assert.match(err.message, /junk\.creds/);
    assert.doesNotMatch(err.message, /SECRETVALUE/);
    assert.equal(
      thrown(() => connectionSecurity([], { ...NO_SECURITY, creds: join(dir, "absent.nk") })).code,
      "CONFIG_INVALID",
    );
    assert.equal(
      thrown(() => connectionSecurity([], { ...NO_SECURITY, tlsCa: join(dir, "absent-ca.pem") })).code,
      "CONFIG_INVALID",
    );
    const env = { MARS_CONFIG_FILE: "" };
    assert.equal(
      thrown(() => loadConfig({ env: { ...env, MARS_NATS_TLS_CERT: "/c.pem" } })).code,
      "CONFIG_INVALID",
    );
    assert.equal(
      thrown(() => loadConfig({ env: { ...env, MARS_NATS_PASSWORD: "x" } })).code,
      "CONFIG_INVALID",
    );
    assert.equal(
      thrown(() => loadConfig({ env: { ...env, MARS_NATS_CREDS: junk, MARS_NATS_USER: "u" } })).code,
      "CONFIG_INVALID",
    );
  });

  it("takes credentials out of server URLs and gives each identity its own reply subjects", () => {
    const s = connectionSecurity(["nats://alice:p%40ss@h1:4222", "h2:4222"], NO_SECURITY);
    assert.deepEqual(s.servers, ["nats://h1:4222", "h2:4222"]);
    assert.equal(s.identity, "alice");
    assert.equal(s.options.inboxPrefix, "_INBOX.alice");
    assert.equal(connectionSecurity(["h:4222"], NO_SECURITY).options.inboxPrefix, "_INBOX");
  });
});
