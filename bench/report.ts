/** What each scenario reports: its figures, the baseline measured in the same run, targets met or not. */
export interface Target {
  name: string;
  /** e.g. "<= 5 ms" */
  want: string;
  value: number;
  unit: string;
  met: boolean;
}

export interface ScenarioResult {
  scenario: string;
  figures: Record<string, number>;
  baseline: Record<string, number>;
  /** fleet figure / baseline figure, where one compares to the other. */
  ratios: Record<string, number>;
  targets: Target[];
  notes: string[];
}

export function target(name: string, value: number, unit: string, op: "<=" | ">=", bound: number): Target {
  return {
    name,
    want: `${op} ${bound} ${unit}`,
    value,
    unit,
    met: op === "<=" ? value <= bound : value >= bound,
  };
}

export function round(n: number, digits = 2): number {
  const f = 10 ** digits;
  return Math.round(n * f) / f;
}

/** A plain-text table of all results. */
export function formatTable(results: ScenarioResult[]): string {
  const rows: string[][] = [["scenario", "figure", "fleet", "baseline", "ratio"]];
  for (const r of results) {
    for (const [k, v] of Object.entries(r.figures)) {
      const base = r.baseline[k];
      const ratio = r.ratios[k];
      rows.push([
        r.scenario,
        k,
        String(round(v)),
        base === undefined ? "" : String(round(base)),
        ratio === undefined ? "" : `${round(ratio)}x`,
      ]);
    }
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((row) => row[i]!.length)));
  const line = (row: string[]): string => row.map((c, i) => c.padEnd(widths[i]!)).join("  ");
  const out = [line(rows[0]!), widths.map((w) => "-".repeat(w)).join("  "), ...rows.slice(1).map(line)];
  out.push("", "targets:");
  for (const r of results)
    for (const t of r.targets)
      out.push(
        `  ${t.met ? "MET   " : "MISSED"} ${r.scenario}: ${t.name} = ${round(t.value)} ${t.unit} (want ${t.want})`,
      );
  for (const r of results) for (const n of r.notes) out.push(`  note ${r.scenario}: ${n}`);
  return out.join("\n");
}
