/**
 * Prometheus text exposition format, the subset node_exporter's textfile collector reads:
 * `# HELP` / `# TYPE` lines, then `name{label="value",…} number` samples. Pure functions.
 */

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface MetricFamily {
  name: string;
  help: string;
  type: 'gauge' | 'counter';
}

/** Escapes a label value: backslash, double quote and line feed. */
export function escapeLabelValue(value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

/** Escapes HELP text: backslash and line feed. */
export function escapeHelp(text: string): string {
  return text.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
}

function formatValue(value: number): string {
  if (Number.isNaN(value)) return 'NaN';
  if (value === Infinity) return '+Inf';
  if (value === -Infinity) return '-Inf';
  return String(value);
}

export function formatSample(sample: Sample): string {
  const labels = Object.entries(sample.labels)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, v]) => `${k}="${escapeLabelValue(v)}"`)
    .join(',');
  return `${sample.name}${labels ? `{${labels}}` : ''} ${formatValue(sample.value)}`;
}

/** Renders families in the given order, each with its HELP and TYPE lines and its samples. */
export function renderTextfile(families: readonly MetricFamily[], samples: readonly Sample[]): string {
  const out: string[] = [];
  for (const family of families) {
    out.push(`# HELP ${family.name} ${escapeHelp(family.help)}`, `# TYPE ${family.name} ${family.type}`);
    for (const s of samples.filter((x) => x.name === family.name)) out.push(formatSample(s));
  }
  return out.join('\n') + '\n';
}

function unescapeLabelValue(value: string): string {
  return value.replace(/\\(.)/g, (_m, c: string) => (c === 'n' ? '\n' : c));
}

const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?\s*$/;
const LABEL = /\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?/y;

/** Parses samples (comments and unparsable lines are skipped): used to keep earlier values. */
export function parseTextfile(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    if (!line.trim() || line.startsWith('#')) continue;
    const m = SAMPLE.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    const body = m[2] ?? '';
    LABEL.lastIndex = 0;
    let ok = true;
    while (LABEL.lastIndex < body.length) {
      const l = LABEL.exec(body);
      if (!l) {
        ok = body.slice(LABEL.lastIndex).trim() === '';
        break;
      }
      labels[l[1]!] = unescapeLabelValue(l[2]!);
    }
    const raw = m[3]!;
    const value = raw === '+Inf' ? Infinity : raw === '-Inf' ? -Infinity : Number(raw);
    if (!ok || (Number.isNaN(value) && raw !== 'NaN')) continue;
    out.push({ name: m[1]!, labels, value });
  }
  return out;
}
