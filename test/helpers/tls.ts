/** A throwaway certificate authority and a server certificate for 127.0.0.1, made with openssl. */
import { execFile } from "node:child_process";
import { join } from "node:path";
import { promisify } from "node:util";
import { writeFile } from "node:fs/promises";

const run = promisify(execFile);

export interface TlsFiles {
  ca: string;
  cert: string;
  key: string;
}

const EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

async function openssl(args: string[]): Promise<void> {
  await run("openssl", args, { timeout: 30_000 });
}

/** A CA (`<name>-ca.pem`) and, signed by it, a certificate for 127.0.0.1 and localhost. */
export async function makeTls(dir: string, name = "test"): Promise<TlsFiles> {
  const f = (suffix: string): string => join(dir, `${name}-${suffix}`);
  await openssl([
    "req",
    "-x509",
    ...EC,
    "-keyout",
    f("ca.key"),
    "-out",
    f("ca.pem"),
    "-days",
    "2",
    "-subj",
    `/CN=${name} CA`,
  ]);
  await openssl([
    "req",
    ...EC,
    "-keyout",
    f("server.key"),
    "-out",
    f("server.csr"),
    "-subj",
    "/CN=127.0.0.1",
  ]);
  await writeFile(f("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n");
  await openssl([
    "x509",
    "-req",
    "-in",
    f("server.csr"),
    "-CA",
    f("ca.pem"),
    "-CAkey",
    f("ca.key"),
    "-CAcreateserial",
    "-out",
    f("server.pem"),
    "-days",
    "2",
    "-extfile",
    f("san.ext"),
  ]);
  return { ca: f("ca.pem"), cert: f("server.pem"), key: f("server.key") };
}
