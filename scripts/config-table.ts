/** Prints the README's configuration table from the settings list, so the two cannot drift. */
import { SETTINGS, flagName, yamlName } from "../src/config/settings.js";
import { HOUR, MINUTE, SECOND } from "../src/core/time.js";

function human(ms: number): string {
  if (ms === 0) return "0 (none)";
  if (ms % HOUR === 0) return `${ms / HOUR} h`;
  if (ms % MINUTE === 0) return `${ms / MINUTE} min`;
  return `${ms / SECOND} s`;
}

const rows = SETTINGS.map((s) => {
  const def = s.kind === "duration" ? human(s.default as number) : JSON.stringify(s.default);
  const env = [s.env, ...("envAliases" in s ? s.envAliases : [])].map((e) => `\`${e}\``).join(", ");
  return `| \`--${flagName(s.key)}\` | ${env} | \`${yamlName(s.key)}\` | ${def} | ${s.help} |`;
});
process.stdout.write(
  ["| flag | environment | YAML key | default | meaning |", "| --- | --- | --- | --- | --- |", ...rows].join(
    "\n",
  ) + "\n",
);
