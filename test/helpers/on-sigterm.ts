/**
 * Preloaded into every test file (`npm test` passes `--import`): a test file that `node --test`
 * stops at its time-out (SIGTERM) takes its nats-servers down with it.
 */
import { stopLocalServersOnSigterm } from "../../src/broker/local-server.js";

stopLocalServersOnSigterm();
