/** Prints docs/SECURITY.md's permission tables from the roles in code, so the two cannot drift. */
import { permissionsMarkdown } from "../src/broker/roles.js";

process.stdout.write(permissionsMarkdown());
