/** `pipeline schedule` through the real binary: printed units, installed units checked by systemd-analyze, cron lines. */
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const CLI_DIR = resolve(fileURLToPath(import.meta.url), '../..');
const BIN = join(CLI_DIR, 'bin', 'pipeline.js');
const SYSTEMD_ANALYZE = ['/usr/bin/systemd-analyze', '/bin/systemd-analyze'].find((p) => existsSync(p));

let dir: string;

function pipeline(args: string[], env: Record<string, string> = {}) {
  return execa(process.execPath, [BIN, ...args], { cwd: dir, reject: false, env: { NO_COLOR: '1', CI: 'true', ...env } });
}

/** Paths that differ between machines become placeholders, so the snapshot is stable. */
const normalize = (text: string) => text.split(dir).join('<DIR>').split(BIN).join('<BIN>').split(process.execPath).join('<NODE>');

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'bp-schedule-'));
  await writeFile(
    join(dir, 'pipeline.config.yaml'),
    `workDir: ./work
destinations:
  copies: { use: local, path: /var/backups/mastodon }
  offsite: { use: rsync, target: backup@backup.example:/srv/mastodon }
pipelines:
  nightly:
    stages:
      - use: credentials
      - use: pg-dump
      - use: metrics
        path: /var/lib/prometheus/node-exporter/backup_pipeline.prom
    destinations: [copies, offsite]
  weekly:
    stages:
      - use: credentials
      - use: pg-dump
`,
  );
});
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('pipeline schedule systemd', () => {
  it('prints a hardened service and a timer (snapshot)', async () => {
    const out = await pipeline(['schedule', 'systemd', 'nightly', '--user', 'mastodon']);
    // stderr: only the info record naming the config file that was found.
    expect(out.stderr.trim().split('\n').map((l) => (JSON.parse(l) as { msg: string }).msg)).toEqual([`config ${join(dir, 'pipeline.config.yaml')} (found: cwd)`]);
    expect(out.exitCode).toBe(0);
    expect(normalize(out.stdout)).toMatchSnapshot();
    expect(out.stdout).toContain(`ExecStart=${process.execPath} ${BIN} run nightly --config ${join(dir, 'pipeline.config.yaml')}`);
    expect(out.stdout).toContain(`ReadWritePaths=${join(dir, 'work')} /var/backups/mastodon /var/lib/prometheus/node-exporter\n`);
  });

  it('needs a pipeline name when the config has several, and refuses unknown kinds and bad calendars', async () => {
    const several = await pipeline(['schedule', 'systemd']);
    expect(several.exitCode).toBe(2);
    expect(several.stderr).toContain('has several pipelines; name one');
    const kind = await pipeline(['schedule', 'launchd', 'nightly']);
    expect(kind.exitCode).toBe(2);
    expect(kind.stderr).toContain('USAGE: unknown schedule kind "launchd"');
    const user = await pipeline(['schedule', 'systemd', 'nightly', '--user', 'x\ny']);
    expect(user.exitCode).toBe(2);
    if (SYSTEMD_ANALYZE) {
      const calendar = await pipeline(['schedule', 'systemd', 'nightly', '--on-calendar', 'dialy']);
      expect(calendar.exitCode).toBe(2);
      expect(calendar.stderr).toContain('is not a systemd calendar specification');
    }
  });

  it('--install writes both units (0644) to BACKUP_PIPELINE_SYSTEMD_DIR; systemd-analyze verify accepts them', async () => {
    const units = join(dir, 'units');
    await mkdir(units);
    const out = await pipeline(['schedule', 'systemd', 'weekly', '--user', 'root', '--on-calendar', 'Sun *-*-* 04:30:00', '--install'], { BACKUP_PIPELINE_SYSTEMD_DIR: units });
    expect(out.exitCode).toBe(0);
    const service = join(units, 'backup-pipeline-weekly.service');
    const timer = join(units, 'backup-pipeline-weekly.timer');
    expect(out.stdout).toBe(`wrote ${service}\nwrote ${timer}\nNow run: systemctl daemon-reload && systemctl enable --now backup-pipeline-weekly.timer`);
    expect((await stat(service)).mode & 0o777).toBe(0o644);
    expect(await readFile(timer, 'utf8')).toContain('OnCalendar=Sun *-*-* 04:30:00\n');
    expect(await readFile(service, 'utf8')).toContain(`ReadWritePaths=${join(dir, 'work')}\n`);

    if (!SYSTEMD_ANALYZE) {
      console.warn('skipped systemd-analyze verify: systemd-analyze is not installed');
      return;
    }
    const verify = await execa(SYSTEMD_ANALYZE, ['verify', service, timer], { reject: false });
    // Only complaints about our two files count: a container without a running systemd may add
    // unrelated noise about the host's own units.
    const ours = verify.stderr.split('\n').filter((l) => l.includes('backup-pipeline-weekly'));
    expect(ours).toEqual([]);

    // The check has teeth: a broken timer is reported with its file and line.
    await writeFile(timer, (await readFile(timer, 'utf8')).replace('OnCalendar=Sun *-*-* 04:30:00', 'OnCalendar=sometimes').replace('Persistent=', 'Persistnt='));
    const broken = await execa(SYSTEMD_ANALYZE, ['verify', service, timer], { reject: false });
    expect(broken.stderr).toContain(`${timer}:6: Failed to parse calendar specification, ignoring: sometimes`);
    expect(broken.stderr).toContain("Unknown key 'Persistnt'");
  });
});

describe('pipeline schedule cron', () => {
  it('prints an /etc/cron.d file logging to syslog (snapshot)', async () => {
    const out = await pipeline(['schedule', 'cron', 'nightly', '--user', 'mastodon', '--on-calendar', '30 3 * * *']);
    expect(out.exitCode).toBe(0);
    expect(normalize(out.stdout)).toMatchSnapshot();
    expect(out.stdout).toContain(`30 3 * * * mastodon ${process.execPath} ${BIN} run nightly --config ${join(dir, 'pipeline.config.yaml')} --log-format json 2>&1 | logger -t backup-pipeline`);
    expect(out.stdout.split('\n').filter((l) => !l.startsWith('#')).join('\n')).not.toContain('flock');
    const daily = await pipeline(['schedule', 'cron', 'weekly', '--user', 'mastodon']);
    expect(daily.stdout).toMatch(/\n@daily mastodon .* run weekly /);
    const bad = await pipeline(['schedule', 'cron', 'weekly', '--on-calendar', 'every tuesday']);
    expect(bad.exitCode).toBe(2);
    expect(bad.stderr).toContain('is not a cron schedule');
  });

  it('--install writes the line to BACKUP_PIPELINE_CRON_DIR', async () => {
    const cron = join(dir, 'cron.d');
    await mkdir(cron);
    const out = await pipeline(['schedule', 'cron', 'weekly', '--user', 'mastodon', '--install'], { BACKUP_PIPELINE_CRON_DIR: cron });
    expect(out.exitCode).toBe(0);
    expect(await readFile(join(cron, 'backup-pipeline-weekly'), 'utf8')).toMatch(/^@daily mastodon /m);
  });
});

describe('writable paths of the unit', () => {
  it('include the work dir, local destinations, the metrics folder and the gpg home', async () => {
    const { resolveConfig } = await import('@backup-pipeline/core');
    const { writePaths } = await import('./commands/schedule.js');
    const { CLI_DIR } = await import('./builtins.js');
    const dir = await mkdtemp(join(tmpdir(), 'bp-paths-'));
    const config = await resolveConfig(
      join(dir, 'pipeline.config.json'),
      {
        workDir: './work',
        destinations: { copy: { use: 'local', path: '/srv/copy' }, offsite: { use: 'rsync', target: 'u@h:/x' } },
        pipelines: {
          nightly: {
            stages: [{ use: 'gpg', gnupgHome: './keys', recipients: ['ABCD'] }, { use: 'metrics', path: '/var/lib/prom/bp.prom' }],
            destinations: ['copy', 'offsite'],
          },
        },
      },
      { pluginSearchDirs: [CLI_DIR] },
    );
    expect(writePaths(config, config.pipelines.nightly!)).toEqual([join(dir, 'work'), '/srv/copy', join(dir, 'keys'), '/var/lib/prom']);
  });
});
