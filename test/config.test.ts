import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { loadConfig } from "../src/config/load.js";
import { thrown } from "./helpers/errors.js";

const made: string[] = [];
after(async () => {
  for (const d of made) await rm(d, { recursive: true, force: true });
});

async function yamlFile(text: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "mars-cfg-"));
  made.push(dir);
  const path = join(dir, "config.yaml");
  await writeFile(path, text);
  return path;
}

describe("configuration", () => {
  it("uses defaults when nothing is set", () => {
    const cfg = loadConfig({ env: {} });
    assert.equal(cfg.sharedRoot, "/cache");
    assert.equal(cfg.heartbeatInterval, 20_000);
    assert.equal(cfg.filterLogs, true);
    assert.deepEqual(cfg.servers, []);
  });

  it("applies defaults < YAML < environment < flags", async () => {
    const file = await yamlFile(
      "shared_root: /yaml\nheartbeat_interval: 10s\npipe_port: 9100\nqueue: fromyaml\n",
    );
    const env = { MARS_CONFIG_FILE: file, MARS_HEARTBEAT_INTERVAL: "3", MARS_PIPE_PORT: "9200" };
    const cfg = loadConfig({ env, overrides: { pipePort: 9300 } });
    assert.equal(cfg.sharedRoot, "/yaml"); // YAML over default
    assert.equal(cfg.queue, "fromyaml");
    assert.equal(cfg.heartbeatInterval, 3000); // env over YAML (bare number = seconds)
    assert.equal(cfg.pipePort, 9300); // flag over env
  });

  it("fails when an explicitly named file is missing", () => {
    const err = thrown(() => loadConfig({ env: { MARS_CONFIG_FILE: "/nonexistent/mars.yaml" } }));
    assert.equal(err.code, "CONFIG_INVALID");
    assert.match(err.message, /does not exist/);
    const err2 = thrown(() => loadConfig({ env: {}, configFile: "/nonexistent/other.yaml" }));
    assert.equal(err2.code, "CONFIG_INVALID");
  });

  it("rejects invalid YAML, unknown keys and bad values instead of defaulting", async () => {
    const bad = await yamlFile("shared_root: [unclosed\n");
    assert.equal(thrown(() => loadConfig({ env: {}, configFile: bad })).code, "CONFIG_INVALID");
    const unknown = await yamlFile("sharedroot: /x\n");
    assert.match(
      thrown(() => loadConfig({ env: {}, configFile: unknown })).message,
      /unknown setting "sharedroot"/,
    );
    assert.match(thrown(() => loadConfig({ env: { MARS_PIPE_PORT: "ninety" } })).message, /MARS_PIPE_PORT/);
    assert.match(thrown(() => loadConfig({ env: { MARS_HEARTBEAT_INTERVAL: "soon" } })).message, /duration/);
    assert.match(
      thrown(() => loadConfig({ env: { MARS_SHARED_ROOT: "relative/dir" } })).message,
      /sharedRoot/,
    );
  });

  it("reads lists and booleans from the environment", () => {
    const cfg = loadConfig({
      env: { MARS_NATS_SERVERS: "nats://a:4222, nats://b:4222", MARS_USE_SHARES: "true" },
    });
    assert.deepEqual(cfg.servers, ["nats://a:4222", "nats://b:4222"]);
    assert.equal(cfg.useShares, true);
  });
});

describe("dashboard page", () => {
  it("has inline scripts that parse (a syntax error would leave the page blank in every browser)", async () => {
    const { Script } = await import("node:vm");
    const { dashboardPage } = await import("../src/api/dashboard.js");
    const scripts = [...dashboardPage().matchAll(/<script>([\s\S]*?)<\/script>/g)].map((m) => m[1]!);
    assert.ok(scripts.length > 0, "no inline script found");
    for (const code of scripts)
      assert.doesNotThrow(() => new Script(code), "an inline script does not parse");
  });
});

describe("documentation", () => {
  it("the README's configuration table lists every setting with its environment name and default", async () => {
    const { readFile } = await import("node:fs/promises");
    const { SETTINGS, flagName, yamlName } = await import("../src/config/settings.js");
    const readme = await readFile(new URL("../../README.md", import.meta.url), "utf8");
    for (const s of SETTINGS) {
      const row = readme.split("\n").find((l) => l.startsWith(`| \`--${flagName(s.key)}\` |`));
      assert.ok(row, `README has no row for --${flagName(s.key)}`);
      assert.ok(row.includes(`\`${s.env}\``), `README row for ${s.key} lacks ${s.env}`);
      assert.ok(row.includes(`\`${yamlName(s.key)}\``), `README row for ${s.key} lacks its YAML key`);
    }
  });

  it("docs/SECURITY.md's permission tables are the roles in code", async () => {
    const { readFile } = await import("node:fs/promises");
    const { permissionsMarkdown } = await import("../src/broker/roles.js");
    const doc = await readFile(new URL("../../docs/SECURITY.md", import.meta.url), "utf8");
    const between = doc.split("<!-- roles:begin -->\n")[1]?.split("<!-- roles:end -->")[0];
    assert.equal(between, permissionsMarkdown(), "regenerate them: node dist/scripts/security-table.js");
  });
});
