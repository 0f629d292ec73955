/** Callback delivery's address rules and signatures (pure logic; one local receiver). */
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { describe, it } from "node:test";
import {
  allowList,
  mayConnect,
  postCallback,
  signCallback,
  verifyCallbackSignature,
} from "../src/api/callback-post.js";
import { errorCode } from "./helpers/errors.js";

describe("callback addresses", { timeout: 30_000 }, () => {
  const none = allowList([]);

  it("refuses loopback, link-local, private, shared, unique-local and special addresses", () => {
    for (const a of [
      "127.0.0.1",
      "127.8.9.10",
      "0.0.0.0",
      "10.1.2.3",
      "100.64.0.1",
      "169.254.169.254",
      "172.16.0.1",
      "172.31.255.255",
      "192.168.1.1",
      "198.18.0.1",
      "224.0.0.1",
      "255.255.255.255",
      "::1",
      "::",
      "::ffff:127.0.0.1",
      "::ffff:10.0.0.1",
      "fd00:ec2::254",
      "fc00::1",
      "fe80::1",
      "ff02::1",
    ])
      assert.equal(mayConnect(a, none), false, a);
  });

  it("allows public addresses, and what the operator allows", () => {
    for (const a of ["93.184.216.34", "8.8.8.8", "172.32.0.1", "2606:4700::1111"])
      assert.equal(mayConnect(a, none), true, a);
    const allow = allowList(["127.0.0.1/32", "10.20.0.0/16", "fd12::/16"]);
    assert.equal(mayConnect("127.0.0.1", allow), true);
    assert.equal(mayConnect("127.0.0.2", allow), false);
    assert.equal(mayConnect("10.20.9.9", allow), true);
    assert.equal(mayConnect("fd12::7", allow), true);
    assert.equal(mayConnect("169.254.169.254", allow), false);
  });

  it("refuses allowlists that are not address ranges with CONFIG_INVALID", () => {
    for (const bad of ["localhost", "10.0.0.0/33", "fd00::/129", "1.2.3/8", ""])
      assert.throws(
        () => allowList([bad]),
        (err: { code?: string }) => err.code === "CONFIG_INVALID",
        bad,
      );
  });

  it("checks the address it connects to: a name that resolves to loopback is refused, allowed once listed", async () => {
    let hits = 0;
    const server = createServer((_req, res) => {
      hits++;
      res.writeHead(204).end();
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const port = (server.address() as { port: number }).port;
    try {
      const opts = { allow: none, timeoutMs: 5000 };
      for (const url of [
        `http://localhost:${port}/`,
        `http://127.0.0.1:${port}/`,
        `http://[::ffff:127.0.0.1]:${port}/`,
      ])
        assert.equal(await errorCode(postCallback(url, "{}", {}, opts)), "API_FORBIDDEN", url);
      assert.equal(hits, 0);
      const allowed = { allow: allowList(["127.0.0.1/32"]), timeoutMs: 5000 };
      assert.equal(await postCallback(`http://localhost:${port}/`, "{}", {}, allowed), 204);
      assert.equal(hits, 1);
    } finally {
      server.close();
    }
  });
});

describe("callback signatures", () => {
  const body = '{"id":"j1","state":"succeeded"}';
  const secret = "0123456789abcdef-secret";

  it("signs a timestamp with the body, and a receiver checks both", () => {
    const now = Date.UTC(2026, 11, 6, 12, 0, 0);
    const header = signCallback(body, secret, now);
    assert.match(header, /^t=\d+,v1=[0-9a-f]{64}$/);
    assert.equal(verifyCallbackSignature(header, body, secret, 300, now), true);
    assert.equal(verifyCallbackSignature(header, body + " ", secret, 300, now), false, "another body");
    assert.equal(
      verifyCallbackSignature(header, body, "another-secret-xx", 300, now),
      false,
      "another secret",
    );
    const t = header.slice(2, header.indexOf(","));
    const moved = header.replace(`t=${t}`, `t=${Number(t) + 1}`);
    assert.equal(verifyCallbackSignature(moved, body, secret, 300, now), false, "another time, same MAC");
    // A capture sent again later is too old.
    assert.equal(verifyCallbackSignature(header, body, secret, 300, now + 301_000), false);
    assert.equal(verifyCallbackSignature("sha256=abc", body, secret, 300, now), false);
  });
});
