/**
 * The YAML library, loaded on first use: a worker reads YAML only when it has a configuration file,
 * and every process that imports the rules' schemas would otherwise load it (about 1 MB resident).
 */
import { createRequire } from "node:module";

type Yaml = typeof import("yaml");
let loaded: Yaml | undefined;

export function yaml(): Yaml {
  loaded ??= createRequire(import.meta.url)("yaml") as Yaml;
  return loaded;
}
