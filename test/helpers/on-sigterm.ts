/**
 * Preloaded into every test file (`npm test` passes `--import`): a test file that `node --test`
 * stops at its time-out (SIGTERM) takes its nats-servers and worker processes down with it.
 */
import { killOwnedOnSigterm } from "../../src/core/owned.js";

killOwnedOnSigterm();
