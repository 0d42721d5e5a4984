// Writes a small text summary of the latest Stryker run (reports/mutation/mutation.json) to
// bench/results/mutation.txt: score per module and every surviving / uncovered mutant.
import { readFileSync, writeFileSync } from 'node:fs';

const report = JSON.parse(readFileSync('reports/mutation/mutation.json', 'utf8'));
const lines = [`Stryker mutation report, ${new Date().toISOString()} (npm run mutation; Node ${process.version})`, ''];
let killedAll = 0;
let validAll = 0;
const rows = [];
const survivors = [];
for (const [file, { mutants, source }] of Object.entries(report.files)) {
  const by = (s) => mutants.filter((m) => m.status === s).length;
  const killed = by('Killed') + by('Timeout');
  const valid = mutants.filter((m) => !['CompileError', 'RuntimeError', 'Ignored'].includes(m.status)).length;
  killedAll += killed;
  validAll += valid;
  rows.push(`${file.padEnd(45)} ${String(killed).padStart(4)} / ${String(valid).padEnd(4)} killed  ${((100 * killed) / (valid || 1)).toFixed(1).padStart(5)}%  (survived ${by('Survived')}, no coverage ${by('NoCoverage')}, static not run ${by('Ignored')})`);
  const srcLines = source.split('\n');
  for (const m of mutants.filter((m) => m.status === 'Survived' || m.status === 'NoCoverage')) {
    const line = m.location.start.line;
    survivors.push(`${file}:${line} ${m.status} ${m.mutatorName}: ${(m.replacement ?? '').replace(/\s+/g, ' ').slice(0, 80)}   | ${srcLines[line - 1].trim().slice(0, 90)}`);
  }
}
lines.push(...rows, '', `total: ${killedAll} / ${validAll} killed = ${((100 * killedAll) / (validAll || 1)).toFixed(1)}%`, '', 'surviving / uncovered mutants:', ...survivors, '');
writeFileSync('bench/results/mutation.txt', lines.join('\n'));
console.log(lines.slice(0, rows.length + 4).join('\n'));
