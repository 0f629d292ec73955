/**
 * A raw HTTP/1.1 client written from the protocol, not from our server: it keeps the chunk
 * boundaries of a chunked body, which is where cads-mars-server's control chunks live.
 */
import { connect, type Socket } from "node:net";

export interface ChunkedResponse {
  status: number;
  headers: Record<string, string>;
  /** Body chunks as framed on the wire (chunked), or one chunk with the whole body. */
  chunks: Buffer[];
}

export interface RawRequest {
  method: string;
  path: string;
  body?: string;
  /** Called for each chunk as it arrives; return "abort" to drop the connection. */
  onChunk?: (chunk: Buffer, index: number) => "abort" | void;
  /** Content-Type of the body (default application/json). */
  contentType?: string;
  /** The whole exchange must end by then, or the request fails saying so. Default 60 s. */
  timeoutMs?: number;
}

export function rawHttp(port: number, req: RawRequest): Promise<ChunkedResponse & { aborted: boolean }> {
  return new Promise((resolve, reject) => {
    const sock: Socket = connect({ port, host: "127.0.0.1" });
    let buf = Buffer.alloc(0);
    let head: { status: number; headers: Record<string, string> } | undefined;
    const chunks: Buffer[] = [];
    let done = false;
    const timeoutMs = req.timeoutMs ?? 60_000;
    const timer = setTimeout(() => {
      if (done) return;
      done = true;
      sock.destroy();
      reject(new Error(`${req.method} ${req.path}: no complete response within ${timeoutMs} ms`));
    }, timeoutMs);
    const finish = (aborted: boolean): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.destroy();
      if (!head) return reject(new Error("connection closed before a response"));
      resolve({ ...head, chunks, aborted });
    };
    sock.on("error", (err) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      reject(err);
    });
    sock.on("close", () => finish(false));
    sock.on("data", (data: Buffer) => {
      buf = Buffer.concat([buf, data]);
      if (!head) {
        const end = buf.indexOf("\r\n\r\n");
        if (end < 0) return;
        const lines = buf.subarray(0, end).toString("latin1").split("\r\n");
        const status = Number(lines[0]!.split(" ")[1]);
        const headers: Record<string, string> = {};
        for (const line of lines.slice(1)) {
          const i = line.indexOf(":");
          headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
        }
        head = { status, headers };
        buf = buf.subarray(end + 4);
      }
      if (head.headers["transfer-encoding"] !== "chunked") {
        const length = Number(head.headers["content-length"] ?? -1);
        if (req.method === "HEAD" || length === 0 || (length > 0 && buf.length >= length)) {
          if (length > 0) chunks.push(buf.subarray(0, length));
          finish(false);
        }
        return;
      }
      for (;;) {
        const lineEnd = buf.indexOf("\r\n");
        if (lineEnd < 0) return;
        const size = parseInt(buf.subarray(0, lineEnd).toString("latin1").split(";")[0]!, 16);
        if (buf.length < lineEnd + 2 + size + 2) return;
        const chunk = Buffer.from(buf.subarray(lineEnd + 2, lineEnd + 2 + size));
        buf = buf.subarray(lineEnd + 2 + size + 2);
        if (size === 0) return finish(false);
        chunks.push(chunk);
        if (req.onChunk?.(chunk, chunks.length - 1) === "abort") return finish(true);
      }
    });
    const body = req.body === undefined ? Buffer.alloc(0) : Buffer.from(req.body);
    sock.write(
      `${req.method} ${req.path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: close\r\n` +
        (req.body === undefined
          ? ""
          : `Content-Type: ${req.contentType ?? "application/json"}\r\nContent-Length: ${body.length}\r\n`) +
        "\r\n",
    );
    sock.write(body);
  });
}

/** What a cads-mars-server client makes of the chunks: data with RWND honoured, and whether ENDR came. */
export function assemble(chunks: Buffer[]): {
  data: Buffer;
  rewinds: number;
  ended: boolean;
  error?: unknown;
} {
  let parts: Buffer[] = [];
  let rewinds = 0;
  for (let i = 0; i < chunks.length; i++) {
    const c = chunks[i]!;
    const control = c.length === 4 ? c.toString("latin1") : "";
    if (control === "RWND") {
      parts = [];
      rewinds++;
    } else if (control === "ENDR") {
      return { data: Buffer.concat(parts), rewinds, ended: true };
    } else if (control === "EROR") {
      return {
        data: Buffer.concat(parts),
        rewinds,
        ended: false,
        error: JSON.parse(chunks[i + 1]?.toString() ?? "null"),
      };
    } else {
      parts.push(c);
    }
  }
  return { data: Buffer.concat(parts), rewinds, ended: false };
}
