/** src/gateway: cads-mars-server's pipe and shares protocols in front of the fleet. Other folders import it from here. */
export { Gateway } from "./gateway.js";
export type { GatewayOptions } from "./gateway.js";
export { CLOSE_OVER_CAPACITY } from "./shares.js";
export { CONTROL, failureShape, returnCode } from "./wire.js";
