/**
 * The layers of src/ (docs/ARCHITECTURE.md): each folder may import only the folders below it.
 * `npm run deps` checks this, no cycles between modules, and no non-public package entry points.
 */
const LAYERS = {
  core: [],
  mars: ["core"],
  sim: ["core", "mars"],
  config: ["core", "mars"],
  broker: ["core", "mars", "config"],
  qos: ["core", "mars", "config", "broker"],
  runner: ["core", "mars", "sim"],
  client: ["core", "mars", "config", "broker", "qos", "runner"],
  worker: ["core", "mars", "sim", "config", "broker", "qos", "runner", "client"],
  gateway: ["core", "mars", "config", "broker", "qos", "runner", "client"],
  api: ["core", "mars", "config", "broker", "qos", "runner", "client"],
  local: ["core", "mars", "config", "broker", "client", "worker"],
  cli: ["core", "mars", "sim", "config", "broker", "qos", "runner", "client", "worker", "gateway", "api", "local"],
};

const folders = Object.keys(LAYERS);
const layerRules = folders.map((folder) => {
  const allowed = [folder, ...LAYERS[folder]];
  const forbidden = folders.filter((f) => !allowed.includes(f));
  return {
    name: `layer-${folder}`,
    comment: `src/${folder} may import only ${LAYERS[folder].join(", ") || "nothing else in src"}`,
    severity: "error",
    from: { path: `^src/${folder}/` },
    to: { path: `^src/((${forbidden.join("|")})/|index\\.ts$)` },
  };
});

module.exports = {
  forbidden: [
    {
      name: "no-circular",
      comment: "a cycle between modules: one of them belongs lower, or the shared part in a module of its own",
      severity: "error",
      from: {},
      to: { circular: true },
    },
    {
      name: "no-internal-entry",
      comment: "a package's non-public entry point (its internals change without notice)",
      severity: "error",
      from: { path: "^src/" },
      to: { path: "node_modules/@nats-io/[^/]+/lib/internal" },
    },
    ...layerRules,
    {
      name: "through-index",
      comment:
        "a folder's index.ts is its boundary: import another folder from there. Only a dynamic import() may reach a module behind it (loaded on demand, to keep what a process carries small)",
      severity: "error",
      from: { path: "^src/([^/]+)/" },
      to: { path: "^src/[^/]+/", pathNot: ["^src/$1/", "^src/[^/]+/index\\.ts$"], dynamic: false },
    },
    {
      name: "root-through-index",
      comment: "the package's entry (src/index.ts) exports from each folder's index.ts",
      severity: "error",
      from: { path: "^src/index\\.ts$" },
      to: { path: "^src/[^/]+/", pathNot: "^src/[^/]+/index\\.ts$" },
    },
  ],
  options: {
    doNotFollow: { path: "node_modules" },
    tsConfig: { fileName: "tsconfig.json" },
    tsPreCompilationDeps: true,
    exclude: { path: "^(dist|test|bench|scripts)/" },
  },
};
