import type { Command } from 'commander';
import { makePathResolver, PipelineError } from '@backup-pipeline/core';
import { MASTODON_TABLES, verifyDatabaseArtifact, type Verification } from '@backup-pipeline/plugin-verify';
import { green, output } from '../output.js';
import { decryptionOptions, fetchSet, locateSet } from '../restore-set.js';
import { openDestinations, openSession } from '../session.js';
import { withSignals } from '../signals.js';
import { progressReporter } from '../progress.js';

/** Re-verifies a stored set: every checksum, decryption, the archive's contents, optionally a restore drill. */
export default async function verify(
  command: Command,
  id: string,
  flags: { from?: string; pipeline?: string; restoreTest?: boolean; gnupgHome?: string; passphraseFile?: string },
): Promise<number> {
  const session = await openSession(command);
  const pipeline = session.runner.pipeline(flags.pipeline);
  const destinations = await openDestinations(session, pipeline.name, flags.from);
  const decryption = decryptionOptions(pipeline, flags, makePathResolver(process.cwd()));
  const stage = pipeline.stages.find((s) => s.plugin.name === 'verify')?.options as { expectTables?: string[]; jobs?: number } | undefined;
  return withSignals(async (signal) => {
    const results: Array<{ artifact: string; verification?: Verification }> = [];
    let where = '';
    await session.runner.run(pipeline.name, {
      signal,
      observe: progressReporter({ quiet: session.options.quiet || session.options.json, log: session.log }),
      session: async (ctx) => {
        const located = await locateSet(destinations, id);
        where = `${located.set.id} in ${located.from.name}`;
        const artifacts = await fetchSet(located, ctx.tmpDir, ctx, decryption);
        for (const artifact of artifacts) {
          if (artifact.kind !== 'database') {
            results.push({ artifact: artifact.name });
            continue;
          }
          if (flags.restoreTest && !ctx.pg) throw new PipelineError('CREDENTIALS_MISSING', 'a restore drill needs a credentials stage in the pipeline');
          const verification = await verifyDatabaseArtifact(
            artifact,
            { expectTables: stage?.expectTables ?? MASTODON_TABLES, fullRead: true, restoreTest: !!flags.restoreTest, jobs: stage?.jobs ?? 2 },
            ctx,
          );
          results.push({ artifact: artifact.name, verification });
        }
      },
    });
    output.clearStatus();
    if (session.options.json) {
      output.json({ ok: true, set: where, artifacts: results });
    } else if (!session.options.quiet) {
      output.stdout(`${green('ok')} ${where}: every sha256 matches the manifest\n`);
      for (const r of results) {
        const v = r.verification;
        const detail = v ? `archive readable, ${v.tableData} tables with data${v.restoreTest ? `, restore drill: ${v.restoreTest.tables} tables / ${v.restoreTest.rows} rows match the snapshot` : ''}` : 'checksum ok';
        output.stdout(`  ${r.artifact}: ${detail}\n`);
      }
    }
    return 0;
  }, session.options);
}
