/** cads-mars-server's pipe (HTTP) and shares (WebSocket) protocols in front of the fleet. */
export { Gateway } from "./gateway.js";
export type { GatewayOptions } from "./gateway.js";
export { CLOSE_OVER_CAPACITY } from "./shares.js";
export { CONTROL, failureShape, returnCode } from "./wire.js";
