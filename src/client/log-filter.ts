/**
 * Client-side log filtering, with the rules cads-mars-server users know: show only lines that
 * matter, and collapse runs of identical lines after the second.
 */
export const IMPORTANT_LINE =
  /error|warning|failed|exception|timeout|fatal|critical|retrieving.*bytes|file.*complete|transferred.*bytes|\d+%/i;

export class LogFilter {
  private last: string | undefined;
  private repeats = 0;

  constructor(private readonly enabled = true) {}

  /** Lines to show now for this input line (possibly none, possibly a repeat notice first). */
  push(line: string): string[] {
    if (!this.enabled) return [line];
    if (!IMPORTANT_LINE.test(line)) return [];
    if (line === this.last) {
      this.repeats++;
      return this.repeats <= 1 ? [line] : [];
    }
    const out = this.flushRepeats();
    this.last = line;
    this.repeats = 0;
    out.push(line);
    return out;
  }

  /** Call at the end of the log: the pending repeat notice, if any. */
  end(): string[] {
    const out = this.flushRepeats();
    this.last = undefined;
    return out;
  }

  private flushRepeats(): string[] {
    const hidden = this.repeats - 1;
    this.repeats = 0;
    return hidden > 0 ? [`... (message repeated ${hidden} more time${hidden === 1 ? "" : "s"})`] : [];
  }
}

/** What a custom log handler can do with the job: cancel it. */
export interface JobControl {
  readonly id: string;
  cancel(): void;
}

/**
 * A custom log handler receives every MARS line: it returns the line to show (possibly rewritten),
 * or nothing to drop it, and may cancel the job.
 */
export type LogHandler = (line: string, job: JobControl) => string | undefined | void;

export interface PresenterOptions {
  logHandler?: LogHandler;
  filterLogs?: boolean;
  /** Receives each line to show. */
  onLog?: (line: string) => void;
  /** Told when a custom handler throws; the line is then dropped. */
  onHandlerError?: (err: unknown) => void;
}

/** Routes MARS lines through the custom handler or the standard filter to `onLog`. */
export class LogPresenter {
  private readonly filter: LogFilter;
  constructor(
    private readonly opts: PresenterOptions,
    private readonly job: JobControl,
  ) {
    this.filter = new LogFilter(opts.filterLogs ?? true);
  }

  line(line: string): void {
    const { logHandler, onLog } = this.opts;
    if (logHandler) {
      let shown: string | undefined | void;
      try {
        shown = logHandler(line, this.job);
      } catch (err) {
        this.opts.onHandlerError?.(err);
        return;
      }
      if (typeof shown === "string") onLog?.(shown);
      return;
    }
    if (onLog) for (const out of this.filter.push(line)) onLog(out);
  }

  end(): void {
    if (!this.opts.logHandler && this.opts.onLog) for (const out of this.filter.end()) this.opts.onLog(out);
  }
}
