/** `pipeline verify SET`: the core fetches one stored copy, checks every sha256, decrypts, and runs the pipeline's verify stages on it. */
import type { Command } from 'commander';
import { green, output } from '../output.js';
import { openSession } from '../session.js';
import { withSignals } from '../signals.js';
import { progressReporter } from '../progress.js';
import { stageOptionsFrom, type StageOptionFlags } from '../stage-options.js';

interface Verification {
  tableData?: number;
  restoreTest?: { tables: number; rows: number };
}

export default async function verify(command: Command, id: string, flags: StageOptionFlags & { from?: string; pipeline?: string; restoreTest?: boolean }): Promise<number> {
  const session = await openSession(command);
  const pipeline = session.runner.pipeline(flags.pipeline);
  return withSignals(async (signal) => {
    const result = await session.runner.verifyStored(
      pipeline.name,
      { set: id, from: flags.from, restoreTest: flags.restoreTest },
      { signal, stageOptions: stageOptionsFrom(flags), observe: progressReporter({ quiet: session.options.quiet || session.options.json }) },
    );
    const where = `${result.setId} in ${result.from}`;
    const artifacts = result.artifacts.map((a) => ({ artifact: a.name, verification: a.meta.verification as Verification | undefined }));
    if (session.options.json) {
      output.json({ ok: true, set: where, artifacts });
    } else if (!session.options.quiet) {
      output.stdout(`${green('ok')} ${where}: every sha256 matches the manifest${result.verifiers === 0 ? ' (the pipeline has no verify stage: checksums and decryption only)' : ''}\n`);
      for (const { artifact, verification: v } of artifacts) {
        const detail = v
          ? `archive readable, ${v.tableData} tables with data${v.restoreTest ? `, restore drill: ${v.restoreTest.tables} tables / ${v.restoreTest.rows} rows match the snapshot` : ''}`
          : 'checksum ok';
        output.stdout(`  ${artifact}: ${detail}\n`);
      }
    }
    return 0;
  }, session.options);
}
