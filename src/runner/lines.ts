import { StringDecoder } from "node:string_decoder";

/** Splits a byte stream into lines (`\n` or `\r\n`), keeping a partial last line until more arrives. */
export class LineSplitter {
  private readonly decoder = new StringDecoder("utf8");
  private partial = "";

  /** Feed a chunk; returns the complete lines it finished. */
  push(chunk: Buffer): string[] {
    const text = this.partial + this.decoder.write(chunk);
    const parts = text.split("\n");
    this.partial = parts.pop() ?? "";
    return parts.map(stripCr);
  }

  /** The last line when the stream ended without a newline. */
  end(): string[] {
    const rest = this.partial + this.decoder.end();
    this.partial = "";
    return rest === "" ? [] : [stripCr(rest)];
  }
}

function stripCr(line: string): string {
  return line.endsWith("\r") ? line.slice(0, -1) : line;
}
