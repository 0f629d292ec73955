/** A minimal WebSocket client written from RFC 6455 (handshake, masked text frames, close codes). */
import { createHash, randomBytes } from "node:crypto";
import { connect, type Socket } from "node:net";

const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

export class RawWebSocket {
  readonly frames: Array<Record<string, unknown>> = [];
  closeCode: number | undefined;
  readonly closed: Promise<number | undefined>;
  private buf = Buffer.alloc(0);
  private waiters: Array<() => void> = [];

  private constructor(private readonly sock: Socket) {
    this.closed = new Promise((resolve) => sock.on("close", () => resolve(this.closeCode)));
    sock.on("data", (d: Buffer) => this.onData(d));
    sock.on("close", () => this.notify());
  }

  static async open(port: number): Promise<RawWebSocket> {
    const sock = connect({ port, host: "127.0.0.1" });
    const key = randomBytes(16).toString("base64");
    const expected = createHash("sha1")
      .update(key + GUID)
      .digest("base64");
    await new Promise<void>((resolve, reject) => {
      sock.once("error", reject);
      sock.once("connect", () => resolve());
    });
    sock.write(
      `GET / HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
        `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
    );
    const rest = await new Promise<Buffer>((resolve, reject) => {
      let head = Buffer.alloc(0);
      const onData = (d: Buffer): void => {
        head = Buffer.concat([head, d]);
        const end = head.indexOf("\r\n\r\n");
        if (end < 0) return;
        sock.off("data", onData);
        const text = head.subarray(0, end).toString();
        if (!text.startsWith("HTTP/1.1 101") || !text.includes(expected))
          reject(new Error(`bad handshake: ${text}`));
        else resolve(head.subarray(end + 4));
      };
      sock.on("data", onData);
    });
    const ws = new RawWebSocket(sock);
    if (rest.length > 0) ws.onData(rest);
    return ws;
  }

  /** Send a text frame, masked as clients must. */
  send(text: string): void {
    const payload = Buffer.from(text);
    const mask = randomBytes(4);
    const len = payload.length;
    const header =
      len < 126 ? Buffer.from([0x81, 0x80 | len]) : Buffer.from([0x81, 0x80 | 126, len >> 8, len & 0xff]);
    const masked = Buffer.from(payload.map((b, i) => b ^ mask[i % 4]!));
    this.sock.write(Buffer.concat([header, mask, masked]));
  }

  private onData(d: Buffer): void {
    this.buf = Buffer.concat([this.buf, d]);
    for (;;) {
      if (this.buf.length < 2) return;
      const opcode = this.buf[0]! & 0x0f;
      let len = this.buf[1]! & 0x7f;
      let offset = 2;
      if (len === 126) {
        if (this.buf.length < 4) return;
        len = this.buf.readUInt16BE(2);
        offset = 4;
      } else if (len === 127) {
        if (this.buf.length < 10) return;
        len = Number(this.buf.readBigUInt64BE(2));
        offset = 10;
      }
      if (this.buf.length < offset + len) return;
      const payload = this.buf.subarray(offset, offset + len);
      this.buf = this.buf.subarray(offset + len);
      if (opcode === 0x1) this.frames.push(JSON.parse(payload.toString()) as Record<string, unknown>);
      else if (opcode === 0x8) {
        this.closeCode = payload.length >= 2 ? payload.readUInt16BE(0) : 1005;
        this.sock.end();
      }
      this.notify();
    }
  }

  private notify(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }

  /** The first frame that matches; fails saying what it waited for if none comes in time or the connection closes. */
  async waitFor(
    pred: (f: Record<string, unknown>) => boolean,
    what = "a matching frame",
    timeoutMs = 20_000,
  ): Promise<Record<string, unknown>> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const hit = this.frames.find(pred);
      if (hit) return hit;
      if (this.sock.destroyed || Date.now() > deadline) {
        const why = this.sock.destroyed ? "the connection closed" : `${timeoutMs} ms passed`;
        throw new Error(`${why} before ${what}; frames: ${JSON.stringify(this.frames).slice(0, 2000)}`);
      }
      await new Promise<void>((resolve) => {
        this.waiters.push(resolve);
        setTimeout(resolve, 100);
      });
    }
  }

  destroy(): void {
    this.sock.destroy();
  }
}
