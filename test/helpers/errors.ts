/** Typed errors in tests: what a call rejected or threw with, checked by its stable code. */
import assert from "node:assert/strict";
import { MarsFleetError } from "../../src/core/errors.js";

/** The typed error `p` rejects with; fails the test if it resolves or rejects with anything else. */
export async function rejection(p: Promise<unknown>): Promise<MarsFleetError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof MarsFleetError, `not a typed error: ${String(err)}`);
    return err;
  }
  assert.fail("expected a rejection");
}

/** The code of the typed error `p` rejects with. */
export async function errorCode(p: Promise<unknown>): Promise<string> {
  return (await rejection(p)).code;
}

/** The typed error `fn` throws; fails the test if it returns or throws anything else. */
export function thrown(fn: () => unknown): MarsFleetError {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof MarsFleetError, `not a typed error: ${String(err)}`);
    return err;
  }
  assert.fail("expected an error");
}
