/**
 * The pgbackrest stage with an S3 repository (a config generated from `repository: { type: s3 }`),
 * against s3rver behind a TLS front (pgBackRest's S3 client always talks TLS) whose self-signed
 * certificate is trusted through `caFile`, with verification on. The server's archive_command
 * pushes WAL to the same bucket. Run through the CLI: a full backup, `list`, the restore drill,
 * and the objects found in s3rver's own folder; the S3 secret is never in argv, the log or the
 * manifest.
 */
import { readdir, readFile, rm, writeFile, mkdtemp } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateMastodonData, loadMastodonSchema, startS3Server, startTlsFront, type S3Server, type TlsFront } from '@backup-pipeline/testing';
import { parseInfo } from './info.js';
import { RECORD_NAME, type PhysicalBackupRecord } from './record.js';
import { startArchivingCluster, type ArchivingCluster } from './test-support.js';

const ROOT = resolve(fileURLToPath(import.meta.url), '../../../..');
const BIN = join(ROOT, 'packages', 'cli', 'bin', 'pipeline.js');
const DB = 'mastodon_production';
const PREFIX = '/pgbackrest';

// s3rver checks signatures against its account registry, which holds only S3RVER/S3RVER: add a key
// pair of our own (s3rver runs in this process), so the secret is a string found nowhere else and
// a leak of it could not hide behind the default.
const KEY = `bp-key-${process.pid}`;
const SECRET = `bp-s3-secret-${Math.random().toString(36).slice(2)}-${process.pid}`;
function addS3rverKeyPair(): void {
  const account = createRequire(import.meta.url)('s3rver/lib/models/account.js') as { DUMMY_ACCOUNT: { createKeyPair(id: string, secret: string): void } };
  account.DUMMY_ACCOUNT.createKeyPair(KEY, SECRET);
}

/** Every file under `dir` (relative paths). */
async function filesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries.filter((e) => e.isFile()).map((e) => join(e.parentPath, e.name).slice(dir.length + 1));
}

/**
 * Reads every process's argv from /proc until stopped: what holds `needle`, and how many
 * pgbackrest processes were seen (so a sampler that saw nothing cannot pass for a clean run).
 */
function watchArgv(needle: string): { stop(): Promise<{ leaks: string[]; pgbackrestSeen: number }> } {
  const leaks: string[] = [];
  const seen = new Set<string>();
  let running = true;
  const loop = (async () => {
    while (running) {
      for (const pid of await readdir('/proc').catch(() => [] as string[])) {
        if (!/^\d+$/.test(pid)) continue;
        const argv = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
        if (argv.includes(needle)) leaks.push(argv.replace(/\0/g, ' '));
        if (/(^|\/)pgbackrest\0/.test(argv)) seen.add(`${pid} ${argv}`);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  return {
    stop: async () => {
      running = false;
      await loop;
      return { leaks, pgbackrestSeen: seen.size };
    },
  };
}

describe('pgbackrest stage: an S3 repository (s3rver behind a TLS front)', () => {
  let s3: S3Server;
  let front: TlsFront;
  let c: ArchivingCluster;
  let dir: string;
  const pipeline = (args: string[]) =>
    execa(process.execPath, [BIN, ...args], { cwd: dir, reject: false, env: { NO_COLOR: '1', CI: 'true', BP_S3_KEY: KEY, BP_S3_SECRET: SECRET }, timeout: 300_000 });

  beforeAll(async () => {
    s3 = await startS3Server();
    addS3rverKeyPair();
    front = await startTlsFront({ host: '127.0.0.1', port: Number(new URL(s3.endpoint).port) });
    // The harness's stanza-create and the server's archive-push already go through S3.
    c = await startArchivingCluster({ s3: { bucket: s3.bucket, port: front.port, key: KEY, secret: SECRET, prefix: PREFIX, caFile: front.caFile } });
    await c.pg.createDatabase(DB);
    await loadMastodonSchema(c.pg, DB);
    await generateMastodonData(c.pg, DB, { scale: 'tiny' });
    dir = await mkdtemp(join(tmpdir(), 'bp-pgbr-s3-'));
    const config = {
      workDir: join(dir, 'backups'),
      pipelines: {
        s3: {
          source: 'physical',
          stages: [
            {
              use: 'pgbackrest',
              stanza: c.stanza,
              repository: { type: 's3', bucket: s3.bucket, endpoint: '127.0.0.1', port: front.port, uriStyle: 'path', prefix: PREFIX, key: '${BP_S3_KEY}', secret: '${BP_S3_SECRET}', caFile: c.caFile },
              createStanza: true,
              dataDir: c.dataDir,
              lockPath: c.lockPath,
              socketDir: c.pg.socketDir,
              port: c.pg.port,
              pgUser: c.pg.superuser,
              processMax: 2,
              type: 'full',
              drill: { database: DB },
            },
          ],
        },
      },
    };
    await writeFile(join(dir, 'pipeline.config.json'), JSON.stringify(config, null, 2));
  }, 300_000);
  afterAll(async () => {
    await c?.stop();
    await front?.stop();
    await s3?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('backs up into the bucket over verified TLS, lists the set, drills it, and keeps the secret out of argv, log and manifest', async () => {
    const watch = watchArgv(SECRET);
    const out = await pipeline(['run', 's3', '--json']);
    const argv = await watch.stop();
    expect(out.exitCode, out.stderr).toBe(0);
    const summary = JSON.parse(out.stdout) as { setId: string; ok: boolean };
    expect(summary.ok).toBe(true);
    expect(out.stderr).toMatch(/drill: \S+ restored, reached consistency, promoted and answered \([1-9]\d* table counts match\)/);

    const manifestText = await readFile(join(dir, 'backups', summary.setId, 'manifest.json'), 'utf8');
    const manifest = JSON.parse(manifestText) as { artifacts: Array<{ name: string; meta: PhysicalBackupRecord }> };
    const record = manifest.artifacts.find((a) => a.name === RECORD_NAME)!.meta;
    expect(record.type).toBe('full');
    expect(record.repository).toEqual({ type: 's3', bucket: s3.bucket, endpoint: '127.0.0.1', region: 'us-east-1', prefix: PREFIX });

    // The data is in the bucket, not on a local path: s3rver's own folder holds the backup's
    // manifest and archived WAL, and the harness's posix repository folder stayed empty.
    const objects = await filesUnder(join(s3.directory, s3.bucket));
    expect(objects.some((f) => f.startsWith(`pgbackrest/backup/${c.stanza}/${record.label}/backup.manifest`)), objects.join('\n')).toBe(true);
    expect(objects.some((f) => f.startsWith(`pgbackrest/archive/${c.stanza}/`) && /[0-9A-F]{24}-[0-9a-f]{40}/.test(f)), objects.join('\n')).toBe(true);
    expect(await readdir(c.repoPath)).toEqual([]);
    // pgbackrest's own view, through the server's config (the archive_command's repository).
    const info = parseInfo((await c.pgbackrest(['--output=json', 'info'])).stdout, c.stanza);
    expect(info.backup.map((b) => b.label)).toEqual([record.label]);

    const list = await pipeline(['list', '--json']);
    expect(list.exitCode, list.stderr).toBe(0);
    const listed = JSON.parse(list.stdout) as Array<{ destination: string; sets: Array<{ id: string; state: string }> }>;
    expect(listed.find((d) => d.destination === 'work')!.sets.find((s) => s.id === summary.setId)).toMatchObject({ state: 'complete' });

    // The secret went only into the private config file.
    expect(argv.pgbackrestSeen).toBeGreaterThan(0);
    expect(argv.leaks).toEqual([]);
    for (const text of [manifestText, out.stdout, out.stderr, list.stdout, list.stderr]) {
      expect(text).not.toContain(SECRET);
      expect(text).not.toContain(KEY);
    }
  }, 600_000);
});
