/**
 * An unbounded single-consumer queue exposed as an AsyncIterable: producers `push`, then `close`
 * (or `fail`); the consumer iterates. Pushes after close are ignored.
 */
export class Channel<T> implements AsyncIterable<T> {
  private buffer: T[] = [];
  private head = 0;
  private waiter: ((v: IteratorResult<T>) => void) | undefined;
  private waiterReject: ((err: unknown) => void) | undefined;
  private closed = false;
  private error: unknown;
  private iterating = false;

  push(value: T): void {
    if (this.closed) return;
    if (this.waiter) {
      const resolve = this.waiter;
      this.waiter = this.waiterReject = undefined;
      resolve({ value, done: false });
      return;
    }
    this.buffer.push(value);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.waiter) {
      const resolve = this.waiter;
      this.waiter = this.waiterReject = undefined;
      resolve({ value: undefined, done: true });
    }
  }

  fail(err: unknown): void {
    if (this.closed) return;
    this.closed = true;
    const reject = this.waiterReject;
    this.waiter = this.waiterReject = undefined;
    if (reject) reject(err);
    else this.error = err;
  }

  private next(): Promise<IteratorResult<T>> {
    if (this.head < this.buffer.length) {
      const value = this.buffer[this.head++] as T;
      if (this.head > 1024 && this.head * 2 > this.buffer.length) {
        this.buffer = this.buffer.slice(this.head);
        this.head = 0;
      }
      return Promise.resolve({ value, done: false });
    }
    if (this.closed) {
      if (this.error !== undefined) {
        const err = this.error;
        this.error = undefined;
        return Promise.reject(err);
      }
      return Promise.resolve({ value: undefined, done: true });
    }
    return new Promise((resolve, reject) => {
      this.waiter = resolve;
      this.waiterReject = reject;
    });
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    if (this.iterating) throw new Error("a Channel can be iterated only once");
    this.iterating = true;
    return {
      next: () => this.next(),
      return: () => {
        this.close();
        this.buffer = [];
        this.head = 0;
        return Promise.resolve({ value: undefined, done: true });
      },
    };
  }
}
