/**
 * How a completion callback is delivered, safely: an API that POSTs to URLs its users name must not
 * become their way into the servers' own network (server-side request forgery). So by default no
 * callback reaches a loopback, link-local (cloud metadata included), private, shared, unique-local
 * or otherwise special address; an operator may allow ranges (`callback_allow`). The check is made
 * on the address the connection is made to, in the DNS lookup that the connection itself uses, so
 * a name that resolves to a public address when checked and to a private one when used (DNS
 * rebinding) cannot pass. Redirects are not followed.
 *
 * The signature covers a timestamp: `X-Mars-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
 * "<t>.<body>">`; a receiver checks it and refuses old ones (see verifyCallbackSignature).
 */
import { createHmac, timingSafeEqual } from "node:crypto";
import { lookup as dnsLookup, type LookupAddress } from "node:dns";
import { request as httpRequest } from "node:http";
import { request as httpsRequest } from "node:https";
import { BlockList, isIP, type LookupFunction } from "node:net";
import { ConfigError, MarsFleetError } from "../core/index.js";

const SPECIAL_V4: Array<[string, number]> = [
  ["0.0.0.0", 8], // "this network"
  ["10.0.0.0", 8], // private
  ["100.64.0.0", 10], // shared (carrier-grade NAT)
  ["127.0.0.0", 8], // loopback
  ["169.254.0.0", 16], // link-local: cloud metadata (169.254.169.254) lives here
  ["172.16.0.0", 12], // private
  ["192.0.0.0", 24], // protocol assignments
  ["192.0.2.0", 24], // documentation
  ["192.168.0.0", 16], // private
  ["198.18.0.0", 15], // benchmarking
  ["198.51.100.0", 24], // documentation
  ["203.0.113.0", 24], // documentation
  ["224.0.0.0", 4], // multicast
  ["240.0.0.0", 4], // reserved, broadcast
];
const SPECIAL_V6: Array<[string, number]> = [
  ["::", 128], // unspecified
  ["::1", 128], // loopback
  ["64:ff9b::", 96], // NAT64: an IPv4 address inside
  ["100::", 64], // discard
  ["2001:db8::", 32], // documentation
  ["fc00::", 7], // unique-local (AWS metadata's fd00:ec2::254 among them)
  ["fe80::", 10], // link-local
  ["fec0::", 10], // site-local (deprecated)
  ["ff00::", 8], // multicast
];

const special = new BlockList();
for (const [net, bits] of SPECIAL_V4) special.addSubnet(net, bits, "ipv4");
for (const [net, bits] of SPECIAL_V6) special.addSubnet(net, bits, "ipv6");

/** An operator's allowed ranges (`10.1.0.0/16`, `127.0.0.1/32`, `fd00::/8`), parsed. */
export function allowList(cidrs: string[]): BlockList {
  const list = new BlockList();
  for (const cidr of cidrs) {
    const [net, bits] = cidr.split("/");
    const family = isIP(net ?? "");
    const prefix = bits === undefined ? (family === 6 ? 128 : 32) : Number(bits);
    if (family === 0 || !Number.isInteger(prefix) || prefix < 0 || prefix > (family === 6 ? 128 : 32))
      throw new ConfigError(`callback_allow: ${cidr} is not an address range (a.b.c.d/n or an IPv6 one)`);
    list.addSubnet(net!, prefix, family === 6 ? "ipv6" : "ipv4");
  }
  return list;
}

/** Whether a callback may connect to `address`: allowed by the operator, or not a special one. */
export function mayConnect(address: string, allow: BlockList): boolean {
  // An IPv4 address written as IPv6 (::ffff:127.0.0.1) is judged as the IPv4 address it is.
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address)?.[1];
  const [addr, type] = mapped
    ? [mapped, "ipv4" as const]
    : [address, isIP(address) === 6 ? ("ipv6" as const) : ("ipv4" as const)];
  return allow.check(addr, type) || !special.check(addr, type);
}

/** The error a refused address gives (recorded as the attempt's error; retried like any failure). */
export class CallbackAddressError extends MarsFleetError {
  constructor(host: string, addresses: string[]) {
    super(
      "API_FORBIDDEN",
      `callback to ${host} refused: ${addresses.join(", ")} is not an address callbacks may reach (callback_allow)`,
    );
  }
}

/** A DNS lookup that hands the connection only addresses a callback may reach. */
function guardedLookup(allow: BlockList): LookupFunction {
  return (hostname, options, callback) => {
    dnsLookup(hostname, { ...options, all: true }, (err, found: LookupAddress[]) => {
      if (err) return callback(err, "", 0);
      const ok = found.filter((a) => mayConnect(a.address, allow));
      if (ok.length === 0)
        return callback(
          new CallbackAddressError(
            hostname,
            found.map((a) => a.address),
          ) as unknown as NodeJS.ErrnoException,
          "",
          0,
        );
      if (options.all) (callback as unknown as (e: null, a: LookupAddress[]) => void)(null, ok);
      else callback(null, ok[0]!.address, ok[0]!.family);
    });
  };
}

/** POST `body` to `url` from a safe address, without following redirects; the answer's status. */
export function postCallback(
  url: string,
  body: string,
  headers: Record<string, string>,
  opts: { allow: BlockList; timeoutMs: number },
): Promise<number> {
  const target = new URL(url);
  const host = target.hostname.replace(/^\[(.*)\]$/, "$1");
  if (isIP(host) !== 0 && !mayConnect(host, opts.allow))
    return Promise.reject(new CallbackAddressError(host, [host]));
  const request = target.protocol === "https:" ? httpsRequest : httpRequest;
  return new Promise((resolve, reject) => {
    const req = request(
      target,
      {
        method: "POST",
        headers: { ...headers, "content-length": String(Buffer.byteLength(body)) },
        lookup: guardedLookup(opts.allow),
        signal: AbortSignal.timeout(opts.timeoutMs),
      },
      (res) => {
        res.resume(); // the answer's body is not ours to read
        res.on("end", () => resolve(res.statusCode ?? 0));
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end(body);
  });
}

/** The signature header for `body` sent at `at` (ms) with `secret`. */
export function signCallback(body: string, secret: string, at = Date.now()): string {
  const t = Math.floor(at / 1000);
  return `t=${t},v1=${createHmac("sha256", secret).update(`${t}.${body}`).digest("hex")}`;
}

/**
 * For receivers: whether `header` is a valid signature of `body` with `secret`, made within
 * `toleranceS` of now. A receiver also remembers the (X-Mars-Job, X-Mars-Delivery) pairs it took
 * within that window, so that a delivery captured and sent again is refused.
 */
export function verifyCallbackSignature(
  header: string,
  body: string,
  secret: string,
  toleranceS = 300,
  now = Date.now(),
): boolean {
  const m = /^t=(\d+),v1=([0-9a-f]{64})$/.exec(header.trim());
  if (!m) return false;
  const t = Number(m[1]);
  if (Math.abs(now / 1000 - t) > toleranceS) return false;
  const want = createHmac("sha256", secret).update(`${t}.${body}`).digest();
  return timingSafeEqual(want, Buffer.from(m[2]!, "hex"));
}
