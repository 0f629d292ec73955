import { StringDecoder } from "node:string_decoder";

/**
 * Splits a byte stream into lines the way a terminal shows them: `\n`, `\r\n` and a lone `\r` each
 * end a line (MARS redraws progress counters with `\r`; cads-mars-server ran it on a pty, so its
 * clients saw each redraw as a line). A partial last line is kept until more arrives.
 */
export class LineSplitter {
  private readonly decoder = new StringDecoder("utf8");
  private partial = "";
  /** The last chunk ended with `\r`: a `\n` starting the next one ends no further line. */
  private afterCr = false;

  /** Feed a chunk; returns the complete lines it finished. */
  push(chunk: Buffer): string[] {
    const raw = this.decoder.write(chunk);
    if (raw === "") return []; // only part of a multi-byte character so far
    const text = this.afterCr && raw.startsWith("\n") ? raw.slice(1) : raw;
    this.afterCr = raw.endsWith("\r");
    const parts = (this.partial + text).split(/\r\n|\r|\n/);
    this.partial = parts.pop() ?? "";
    return parts;
  }

  /** The last line when the stream ended without a line end. */
  end(): string[] {
    const rest = this.partial + this.decoder.end();
    this.partial = "";
    this.afterCr = false;
    return rest === "" ? [] : [rest];
  }
}
