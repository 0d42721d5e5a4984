/**
 * `pipeline schedule` through the real binary: printed units, installed units checked by
 * systemd-analyze, cron lines, and units installed by root for another user whose ExecStart= then
 * runs as that user in exactly the folders the unit lets it write.
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readdir, readFile, realpath, rm, stat, writeFile } from 'node:fs/promises';
import { homedir, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { GpgHome } from '@backup-pipeline/sandbox';

const CLI_DIR = resolve(fileURLToPath(import.meta.url), '../..');
const BIN = join(CLI_DIR, 'bin', 'pipeline.js');
// Not optional: .ci/run installs systemd, and a check that skips proves nothing.
const SYSTEMD_ANALYZE = ['/usr/bin/systemd-analyze', '/bin/systemd-analyze'].find((p) => existsSync(p));
if (!SYSTEMD_ANALYZE) throw new Error('systemd-analyze is missing: apt-get install systemd (the schedule tests need it)');

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
    expect(out.stdout).toContain(`ReadWritePaths=-${join(dir, 'work')} -/var/backups/mastodon -/var/lib/prometheus/node-exporter\n`);
    expect(out.stdout).toContain('#   sudo install -d -o mastodon -m 0700 /var/backups/mastodon\n');
    expect(out.stdout).toContain('#   sudo setfacl -m u:mastodon:rwx /var/lib/prometheus/node-exporter');
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
    const calendar = await pipeline(['schedule', 'systemd', 'nightly', '--on-calendar', 'dialy']);
    expect(calendar.exitCode).toBe(2);
    expect(calendar.stderr).toContain('is not a systemd calendar specification');
  });

  it('--install writes both units (0644) to BACKUP_PIPELINE_SYSTEMD_DIR; systemd-analyze verify accepts them', async () => {
    const units = join(dir, 'units');
    await mkdir(units);
    const out = await pipeline(['schedule', 'systemd', 'weekly', '--user', 'root', '--on-calendar', 'Sun *-*-* 04:30:00', '--install'], { BACKUP_PIPELINE_SYSTEMD_DIR: units });
    expect(out.exitCode).toBe(0);
    const service = join(units, 'backup-pipeline-weekly.service');
    const timer = join(units, 'backup-pipeline-weekly.timer');
    expect(out.stdout).toBe(
      `wrote ${service}\nwrote ${timer}\ncreated ${join(dir, 'work')} (owner root, mode 0700)\nNow run: systemctl daemon-reload && systemctl enable --now backup-pipeline-weekly.timer`,
    );
    expect((await stat(service)).mode & 0o777).toBe(0o644);
    expect(await readFile(timer, 'utf8')).toContain('OnCalendar=Sun *-*-* 04:30:00\n');
    expect(await readFile(service, 'utf8')).toContain(`ReadWritePaths=-${join(dir, 'work')}\n`);

    const verify = await execa(SYSTEMD_ANALYZE!, ['verify', service, timer], { reject: false });
    // Only complaints about our two files count: a container without a running systemd may add
    // unrelated noise about the host's own units.
    const ours = verify.stderr.split('\n').filter((l) => l.includes('backup-pipeline-weekly'));
    expect(ours).toEqual([]);

    // The check has teeth: a broken timer is reported with its file and line.
    await writeFile(timer, (await readFile(timer, 'utf8')).replace('OnCalendar=Sun *-*-* 04:30:00', 'OnCalendar=sometimes').replace('Persistent=', 'Persistnt='));
    const broken = await execa(SYSTEMD_ANALYZE!, ['verify', service, timer], { reject: false });
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
    const out = await pipeline(['schedule', 'cron', 'weekly', '--user', 'root', '--install'], { BACKUP_PIPELINE_CRON_DIR: cron });
    expect(out.exitCode, out.stderr).toBe(0);
    expect(await readFile(join(cron, 'backup-pipeline-weekly'), 'utf8')).toMatch(/^@daily root /m);
    // The user must exist to be given its folders.
    const unknown = await pipeline(['schedule', 'cron', 'weekly', '--user', 'no-such-user-here', '--install'], { BACKUP_PIPELINE_CRON_DIR: cron });
    expect(unknown.exitCode).toBe(2);
    expect(unknown.stderr).toContain('--user no-such-user-here: no such user on this host');
  });
});

describe('writable paths of the unit', () => {
  const mastodon = { name: 'mastodon', uid: 991, gid: 991, home: '/home/mastodon', exists: true };

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
    expect(writePaths(config, config.pipelines.nightly!, mastodon)).toEqual([join(dir, 'work'), '/srv/copy', join(dir, 'keys'), '/var/lib/prom']);
  });

  it('are the target user\'s, not the caller\'s: ~ is that home, the default gpg home is its ~/.gnupg whatever $GNUPGHOME says', async () => {
    const { resolveConfig } = await import('@backup-pipeline/core');
    const { writePaths, defaultGnupgHome } = await import('./commands/schedule.js');
    const { CLI_DIR } = await import('./builtins.js');
    const dir = await mkdtemp(join(tmpdir(), 'bp-paths-'));
    const config = await resolveConfig(
      join(dir, 'pipeline.config.json'),
      {
        workDir: '~/backups/work',
        destinations: { copy: { use: 'local', path: '~/backups/sets' } },
        pipelines: { nightly: { stages: [{ use: 'gpg', recipients: ['ABCD'] }], destinations: ['copy'] } },
      },
      { pluginSearchDirs: [CLI_DIR] },
    );
    const saved = process.env.GNUPGHOME;
    process.env.GNUPGHOME = '/root/.gnupg';
    try {
      expect(defaultGnupgHome(mastodon)).toBe('/home/mastodon/.gnupg');
      const paths = writePaths(config, config.pipelines.nightly!, mastodon);
      expect(paths).toContain('/home/mastodon/.gnupg');
      expect(paths).toContain('/home/mastodon/backups/sets');
      expect(paths).toContain('/home/mastodon/backups/work');
      expect(paths.filter((p) => p.startsWith('/root'))).toEqual([]);
      // An absolute workDir is that folder, whoever runs (it is not moved to the target's home).
      const absolute = await resolveConfig(join(dir, 'pipeline.config.json'), { workDir: join(homedir(), 'bp-work'), pipelines: { nightly: { stages: [{ use: 'gpg', recipients: ['ABCD'] }] } } }, { pluginSearchDirs: [CLI_DIR] });
      expect(writePaths(absolute, absolute.pipelines.nightly!, mastodon)[0]).toBe(join(homedir(), 'bp-work'));
    } finally {
      if (saved === undefined) delete process.env.GNUPGHOME;
      else process.env.GNUPGHOME = saved;
    }
  });
});

/**
 * As root, for a throwaway unprivileged user: `--install` into a temporary root creates the unit's
 * folders for that user; systemd-analyze accepts the units; the unit's ExecStart= then runs as that
 * user (with the unit's environment) and writes only inside ReadWritePaths=. Without root,
 * --install says to use sudo.
 */
describe('schedule systemd --user OTHER --install, run by root', () => {
  const name = `bp-sched-${randomBytes(3).toString('hex')}`;
  let base: string;
  let home: string;
  let uid: number;
  let gid: number;
  let gpgHome: GpgHome | undefined;
  /** Folders given o+x so the user can reach node and the CLI (CI's clone or Node.js may sit in a 0700 folder). */
  const opened: Array<[string, number]> = [];

  async function letUserReach(path: string): Promise<void> {
    for (let d = dirname(path); ; d = dirname(d)) {
      const mode = (await stat(d)).mode & 0o7777;
      if ((mode & 0o001) === 0) {
        opened.push([d, mode]);
        await chmod(d, mode | 0o001);
      }
      if (d === dirname(d)) break;
    }
  }

  beforeAll(async () => {
    expect(process.getuid?.(), 'these tests create a user and run as it: run them as root (CI does)').toBe(0);
    await letUserReach(await realpath(process.execPath));
    await letUserReach(join(resolve(CLI_DIR, '../..'), 'package.json'));
    base = await mkdtemp(join('/tmp', 'bp-schedule-root-'));
    await chmod(base, 0o755);
    home = join(base, 'home', name);
    await execa('useradd', ['--system', '--user-group', '--home-dir', home, '--no-create-home', '--shell', '/usr/sbin/nologin', name]);
    uid = Number((await execa('id', ['-u', name])).stdout);
    gid = Number((await execa('id', ['-g', name])).stdout);
    await mkdir(join(base, 'etc'));
  });
  afterAll(async () => {
    for (const [d, mode] of opened.reverse()) await chmod(d, mode).catch(() => {});
    await gpgHome?.cleanup();
    await execa('userdel', [name], { reject: false });
    if (base) await rm(base, { recursive: true, force: true });
  });

  /** Runs argv as the user, with a clean environment like systemd's (HOME from passwd, PATH). */
  const asUser = (argv: string[], env: Record<string, string> = {}) =>
    execa('setpriv', ['--reuid', String(uid), '--regid', String(gid), '--init-groups', '--', 'env', `HOME=${home}`, ...Object.entries(env).map(([k, v]) => `${k}=${v}`), ...argv], {
      cwd: '/',
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', NO_COLOR: '1' },
      extendEnv: false,
      reject: false,
      stdin: 'ignore',
    });

  it('creates the folders for that user, and its ExecStart= runs as it, writing only inside ReadWritePaths=', async () => {
    // The user's public key, imported into what will be its default keyring once install made it.
    const { createGpgHome } = await import('@backup-pipeline/sandbox');
    gpgHome = await createGpgHome();
    const key = join(base, 'etc', 'admin.asc');
    await gpgHome.exportPublicKey(key);
    await chmod(key, 0o644);
    const var_ = join(base, 'var');
    const config = join(base, 'etc', 'pipeline.config.yaml');
    await writeFile(
      config,
      `workDir: ${var_}/backups/mastodon/work
timezone: UTC
destinations:
  copies: { use: local, path: ${var_}/backups/mastodon/sets }
pipelines:
  nightly:
    source: host
    stages:
      - use: command
        command: [sh, -c, 'echo hello > "$BACKUP_OUTPUT_DIR/hello.txt"']
      - use: gpg
        recipients: [${gpgHome.fingerprint}]
      - use: metrics
        path: ${var_}/lib/node-exporter/backup_pipeline.prom
    destinations: [copies]
`,
      { mode: 0o644 },
    );
    const units = join(base, 'units');
    await mkdir(units);
    // Run with root's own GNUPGHOME set: it must not leak into the unit.
    const out = await pipeline(['schedule', 'systemd', 'nightly', '--user', name, '--config', config, '--install'], { BACKUP_PIPELINE_SYSTEMD_DIR: units, GNUPGHOME: '/root/.gnupg' });
    expect(out.exitCode, out.stderr).toBe(0);
    expect(out.stderr).not.toMatch(/warn|error/i);
    expect(out.stdout).toContain(`created ${var_}, ${var_}/backups, ${var_}/backups/mastodon, ${var_}/backups/mastodon/work (owner ${name}, mode 0700)`);
    expect(out.stdout).toContain(`created ${var_}/lib, ${var_}/lib/node-exporter (owner ${name}, mode 0755)`);
    expect(out.stdout).toContain(`created ${join(base, 'home')}, ${home}, ${home}/.gnupg (owner ${name}, mode 0700)`);

    const service = join(units, 'backup-pipeline-nightly.service');
    const text = await readFile(service, 'utf8');
    expect(text).not.toContain('/root');
    expect(text).toContain(`User=${name}\n`);
    expect(text).toContain(`Environment=GNUPGHOME=${home}/.gnupg\n`);
    const verify = await execa(SYSTEMD_ANALYZE!, ['verify', service, join(units, 'backup-pipeline-nightly.timer')], { reject: false });
    expect(verify.stderr.split('\n').filter((l) => l.includes('backup-pipeline-nightly'))).toEqual([]);

    const writable = text.match(/^ReadWritePaths=(.*)$/m)![1]!.split(' ').map((p) => p.replace(/^-/, ''));
    expect(writable).toEqual([`${var_}/backups/mastodon/work`, `${var_}/backups/mastodon/sets`, `${home}/.gnupg`, `${var_}/lib/node-exporter`]);
    for (const path of writable) {
      const st = await stat(path);
      expect([path, st.uid]).toEqual([path, uid]);
      expect((await asUser(['test', '-d', path, '-a', '-w', path])).exitCode, `${name} can write ${path}`).toBe(0);
    }

    // The key goes into the user's keyring, as the admin would do it.
    const environment = Object.fromEntries([...text.matchAll(/^Environment=(\w+)=(.*)$/gm)].map((m) => [m[1]!, m[2]!]));
    const imported = await asUser(['gpg', '--batch', '--import', key], environment);
    expect(imported.exitCode, imported.stderr).toBe(0);

    // ExecStart= exactly as written (no word in it needs systemd unquoting here), as the user.
    const argv = text.match(/^ExecStart=(.*)$/m)![1]!.split(' ');
    const run = await asUser(argv, environment);
    expect(run.exitCode, run.stderr).toBe(0);
    const sets = await readdir(`${var_}/backups/mastodon/sets`);
    expect(sets).toHaveLength(1);
    expect((await readdir(join(`${var_}/backups/mastodon/sets`, sets[0]!))).sort()).toEqual(['hello.txt.gpg', 'manifest.json']);
    // node_exporter (another user) must be able to read the metrics despite UMask=0077.
    expect(text).toContain('UMask=0077\n');
    expect((await stat(`${var_}/lib/node-exporter/backup_pipeline.prom`)).mode & 0o777).toBe(0o644);

    // What ProtectSystem=strict would enforce: every file the run made is inside ReadWritePaths=.
    const found = (await execa('find', [base, '-user', name, '-type', 'f'])).stdout.split('\n').filter(Boolean);
    expect(found.length).toBeGreaterThan(0);
    expect(found.filter((f) => !writable.some((w) => f.startsWith(w + '/')))).toEqual([]);
  });

  it('--install without root says to run it with sudo (exit 77), and writes nothing', async () => {
    const config = join(base, 'etc', 'pipeline.config.yaml');
    const out = await asUser([process.execPath, BIN, 'schedule', 'systemd', 'nightly', '--user', 'mastodon', '--config', config, '--install'], { NO_COLOR: '1' });
    expect(out.exitCode).toBe(77);
    expect(out.stderr).toContain('NEEDS_ROOT');
    expect(out.stderr).toContain('run it with sudo');
    expect(out.stderr).toContain(`sudo pipeline schedule systemd nightly --user mastodon --config ${config} --install`);
    expect(out.stderr).not.toContain('INTERNAL');
    expect(existsSync('/etc/systemd/system/backup-pipeline-nightly.service')).toBe(false);
  });
});
