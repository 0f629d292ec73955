/** src/api: the REST API, its tenancy rules, callbacks, the dashboard (api/server.ts, fastify, is loaded on demand). Other folders import it from here. */
export { verifyCallbackSignature } from "./callback-post.js";
export { API_ROLES, ApiKeys } from "./keys.js";
export type { ApiRole } from "./keys.js";
