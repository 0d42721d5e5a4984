/**
 * `pipeline schedule systemd|cron [pipeline]`: prints (or installs) what runs a pipeline on a
 * schedule — a hardened systemd service + timer pair, or an /etc/cron.d line. Absolute paths
 * throughout: the node binary running this command, the CLI's own bin script, the config file.
 * The pipeline holds its own lock, so neither needs flock.
 *
 * Everything is worked out for the user that will run the backup (`--user`), not the one running
 * this command: `~` and the gpg home are that user's. `--install` (as root) also creates the
 * folders the run writes to, owned by that user, so the unit's first run does not fail.
 */
import { chown, mkdir, stat } from 'node:fs/promises';
import { userInfo } from 'node:os';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { displayCommand, exec, isPipelineError, makePathResolver, PipelineError, writeFileAtomic, type ResolvedConfig, type ResolvedPipeline } from '@backup-pipeline/core';
import type { Command } from 'commander';
import { CLI_DIR, CLI_PACKAGE } from '../builtins.js';
import { output } from '../output.js';
import { openSession } from '../session.js';

export interface ScheduleOptions {
  onCalendar: string;
  user?: string;
  install?: boolean;
}

export const SYSTEMD_DIR_ENV = 'BACKUP_PIPELINE_SYSTEMD_DIR';
export const CRON_DIR_ENV = 'BACKUP_PIPELINE_CRON_DIR';
const BIN = join(CLI_DIR, 'bin', 'pipeline.js');

export interface ScheduleInput {
  pipeline: string;
  configFile: string;
  user: string;
  onCalendar: string;
  /** Folders the run writes to (work dir, local destinations, metrics folder, gpg home). */
  writePaths: string[];
  /** Those of `writePaths` shared with another service (the metrics folder): never made private. */
  sharedPaths?: string[];
  /** GNUPGHOME for the run, when a gpg stage relies on the default keyring. */
  gnupgHome?: string;
  node?: string;
  bin?: string;
}

/** The Unix account that runs the backup. */
export interface TargetUser {
  name: string;
  uid: number;
  gid: number;
  home: string;
  /** False when the account does not exist on this host (the units may be for another one). */
  exists: boolean;
}

/** Looks `name` up with getent (local files, LDAP…); an unknown user gets /home/NAME, marked. */
export async function lookupUser(name: string): Promise<TargetUser> {
  try {
    const { stdout } = await exec('getent', ['passwd', name], { label: 'getent' });
    const [, , uid, gid, , home] = stdout.trim().split('\n')[0]!.split(':');
    if (uid && gid && home) return { name, uid: Number(uid), gid: Number(gid), home, exists: true };
  } catch {
    // getent exits 2 for an unknown name.
  }
  return { name, uid: -1, gid: -1, home: join('/home', name), exists: false };
}

/** GNUPGHOME of the run for a gpg stage without `gnupgHome`: the target user's ~/.gnupg. */
export function defaultGnupgHome(user: TargetUser): string {
  // The invoking user's $GNUPGHOME only counts when it is the same user (the unit sets it then).
  if (process.env.GNUPGHOME && user.exists && user.uid === process.getuid?.()) return resolve(process.env.GNUPGHOME);
  return join(user.home, '.gnupg');
}

function usesDefaultGnupgHome(pipeline: ResolvedPipeline): boolean {
  return pipeline.stages.some((s) => s.plugin.name === 'gpg' && !(s.options as { gnupgHome?: string }).gnupgHome);
}

/** One word of a systemd command line or path list: `%` and `$` escaped, quoted when needed. */
export function systemdWord(word: string, command = false): string {
  let w = word.replace(/%/g, '%%');
  if (command) w = w.replace(/\$/g, '$$$$');
  return /^[A-Za-z0-9@%+=:,./_-]+$/.test(w) ? w : `"${w.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;
}

export function unitName(pipeline: string): string {
  return `backup-pipeline-${pipeline}`;
}

/**
 * The folders a run of `pipeline` writes to, so ProtectSystem=strict can let it: the work dir, and
 * what each destination and stage declares (`writablePaths` of its plugin), resolved as the
 * target user's run resolves them (`~` is that user's home).
 */
export function writePaths(config: ResolvedConfig, pipeline: ResolvedPipeline, user: TargetUser): string[] {
  // `config.workDir` is this process's reading of `~`; the run reads the config's own value with the target user's.
  const api = { configDir: config.dir, resolvePath: makePathResolver(config.dir, user.home) };
  const paths = [api.resolvePath(config.raw.workDir)];
  for (const name of pipeline.destinations) {
    const d = config.destinations[name];
    if (d?.plugin.destination?.writablePaths) paths.push(...d.plugin.destination.writablePaths(d.options as never, api));
  }
  for (const stage of pipeline.stages) {
    // gpg's default keyring is the target user's (the unit sets GNUPGHOME), never the caller's $GNUPGHOME.
    if (stage.plugin.name === 'gpg' && !(stage.options as { gnupgHome?: string }).gnupgHome) paths.push(defaultGnupgHome(user));
    else if (stage.plugin.writablePaths) paths.push(...stage.plugin.writablePaths(stage.options as never, api));
  }
  return [...new Set(paths.map((p) => resolve(p)))];
}

/** Folders the run shares with another service (node_exporter reads the metrics folder): never made private. */
export function sharedPaths(config: ResolvedConfig, pipeline: ResolvedPipeline, user: TargetUser): string[] {
  const api = { configDir: config.dir, resolvePath: makePathResolver(config.dir, user.home) };
  return pipeline.stages.filter((s) => s.plugin.name === 'metrics' && s.plugin.writablePaths).flatMap((s) => s.plugin.writablePaths!(s.options as never, api).map((p) => resolve(p)));
}

export function systemdUnits(input: ScheduleInput): { service: string; timer: string } {
  const node = input.node ?? process.execPath;
  const bin = input.bin ?? BIN;
  const exec = [node, bin, 'run', input.pipeline, '--config', input.configFile].map((w) => systemdWord(w, true)).join(' ');
  const header = `# Written by \`pipeline schedule systemd ${input.pipeline}\` (backup-pipeline ${CLI_PACKAGE.version}).`;
  const install = input.writePaths
    .map((p) => (input.sharedPaths?.includes(p) ? `#   sudo setfacl -m u:${input.user}:rwx ${p}   # shared with node_exporter: stays readable` : `#   sudo install -d -o ${input.user} -m 0700 ${p}`))
    .join('\n');
  const service = `${header}
# ProtectSystem=strict makes everything read-only but ReadWritePaths=: those folders must exist
# and be writable by ${input.user} (\`pipeline schedule systemd --install\` creates missing ones):
${install}
# A missing one ("-" prefix) does not stop the unit: the run then names the folder it cannot write.
[Unit]
Description=backup-pipeline: run pipeline ${input.pipeline}
Wants=network-online.target
After=network-online.target postgresql.service

[Service]
Type=oneshot
User=${input.user}
${input.gnupgHome ? `Environment=${systemdWord(`GNUPGHOME=${input.gnupgHome}`)}\n` : ''}ExecStart=${exec}
# Back off for Mastodon's own work: lowest CPU and I/O priority.
Nice=10
IOSchedulingClass=idle
# Files are private (0600) unless written with an explicit mode, like the metrics file (0644).
UMask=0077
# SIGTERM stops the run cleanly (exit 143): partial sets are removed, the lock is released.
TimeoutStopSec=2min
# Hardening: the run reads the system and the Mastodon home, and writes only its own folders.
NoNewPrivileges=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectSystem=strict
ProtectHome=read-only
ReadWritePaths=${input.writePaths.map((p) => systemdWord(`-${p}`)).join(' ')}
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
RestrictNamespaces=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
LockPersonality=yes
SystemCallArchitectures=native
CapabilityBoundingSet=
`;
  const timer = `${header}
[Unit]
Description=backup-pipeline: run pipeline ${input.pipeline} (${input.onCalendar})

[Timer]
OnCalendar=${input.onCalendar}
# Run at boot when the machine was off at the scheduled time.
Persistent=true
RandomizedDelaySec=30min

[Install]
WantedBy=timers.target
`;
  return { service, timer };
}

const CRON_WORDS: Record<string, string> = { hourly: '@hourly', daily: '@daily', weekly: '@weekly', monthly: '@monthly', yearly: '@yearly', annually: '@yearly' };

/** `daily` → `@daily`; a five-field expression or an `@word` is kept. */
export function cronSchedule(spec: string): string {
  const s = spec.trim();
  if (CRON_WORDS[s]) return CRON_WORDS[s];
  if (/^@(hourly|daily|weekly|monthly|yearly|annually|reboot)$/.test(s)) return s;
  if (/^(\S+\s+){4}\S+$/.test(s) && /^[\d*,/\-\sA-Za-z]+$/.test(s)) return s.split(/\s+/).join(' ');
  throw new PipelineError('USAGE', `"${spec}" is not a cron schedule`, {
    hint: 'Give five fields ("30 3 * * *"), an @word (@daily), or hourly, daily, weekly, monthly.',
  });
}

export function cronFile(input: ScheduleInput): string {
  const node = input.node ?? process.execPath;
  const bin = input.bin ?? BIN;
  // In a crontab `%` ends the command: escape it.
  const command = displayCommand(node, [bin, 'run', input.pipeline, '--config', input.configFile, '--log-format', 'json']).replace(/%/g, '\\%');
  return `# Written by \`pipeline schedule cron ${input.pipeline}\` (backup-pipeline ${CLI_PACKAGE.version}).
# The pipeline holds its own lock (a second run exits 75), so no flock is needed. Output goes to
# syslog (journalctl -t backup-pipeline).
SHELL=/bin/sh
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
${input.gnupgHome ? `GNUPGHOME=${input.gnupgHome}\n` : ''}${cronSchedule(input.onCalendar)} ${input.user} ${command} 2>&1 | logger -t backup-pipeline
`;
}

function checkWord(what: string, value: string, pattern: RegExp, hint: string): void {
  if (!pattern.test(value)) throw new PipelineError('USAGE', `${what} "${value.replace(/[\r\n]/g, ' ')}" is not valid`, { hint });
}

/** Asks `systemd-analyze calendar` whether systemd understands the spec (skipped without it). */
async function checkCalendar(spec: string): Promise<void> {
  try {
    await exec('systemd-analyze', ['calendar', spec], { label: 'systemd-analyze' });
  } catch (error) {
    if (isPipelineError(error) && error.code === 'EXEC_NOT_FOUND') return;
    throw new PipelineError('USAGE', `--on-calendar "${spec}" is not a systemd calendar specification`, {
      hint: 'See `man systemd.time`: e.g. daily, Mon..Fri 03:30, *-*-* 02:15:00. `systemd-analyze calendar SPEC` checks one.',
    });
  }
}

/** `--install` writes to system folders and hands folders to another user: that takes root. */
function needsRoot(what: string, command: string): PipelineError {
  return new PipelineError('NEEDS_ROOT', `--install writes to ${what} and creates the backup folders for another user: run it with sudo`, {
    hint: `sudo ${command}`,
    exitCode: 77,
  });
}

const isRoot = () => process.getuid?.() === 0;

/**
 * Creates each missing folder the run writes to (and its missing parents), owned by the target
 * user, 0700 (a shared one 0755); reports existing ones that user cannot write. Root only.
 */
async function prepareFolders(user: TargetUser, paths: string[], shared: string[], out: (line: string) => void): Promise<void> {
  for (const path of paths) {
    const mode = shared.includes(path) ? 0o755 : 0o700;
    const missing: string[] = [];
    for (let p = path; !(await stat(p).catch(() => undefined)); p = dirname(p)) missing.unshift(p);
    for (const dir of missing) {
      await mkdir(dir, { mode });
      await chown(dir, user.uid, user.gid);
    }
    if (missing.length > 0) {
      out(`created ${missing.join(', ')} (owner ${user.name}, mode ${mode.toString(8).padStart(4, '0')})`);
      continue;
    }
    const writable = await exec('runuser', ['-u', user.name, '--', 'test', '-w', path, '-a', '-x', path], { label: 'runuser' }).then(
      () => true,
      () => false,
    );
    if (!writable) {
      const fix = shared.includes(path) ? `sudo setfacl -m u:${user.name}:rwx ${path}` : `sudo chown ${user.name} ${path}`;
      out(`warning: ${user.name} cannot write ${path}, so the run will fail there. Fix: ${fix}`);
    }
  }
}

export default async function schedule(command: Command, kind: string, name: string | undefined): Promise<number> {
  const options = command.opts<ScheduleOptions>();
  if (kind !== 'systemd' && kind !== 'cron') {
    throw new PipelineError('USAGE', `unknown schedule kind "${kind}"`, { hint: 'Use `pipeline schedule systemd [pipeline]` or `pipeline schedule cron [pipeline]`.' });
  }
  const userName = options.user ?? userInfo().username;
  checkWord('--user', userName, /^[A-Za-z_][A-Za-z0-9_.-]*\$?$/, 'Give the name of the Unix user that runs the backup (e.g. mastodon).');
  checkWord('--on-calendar', options.onCalendar, /^[^\r\n\0]+$/, 'See `man systemd.time` (e.g. daily, *-*-* 03:30:00).');
  if (kind === 'systemd') await checkCalendar(options.onCalendar);
  const dirOverride = process.env[kind === 'systemd' ? SYSTEMD_DIR_ENV : CRON_DIR_ENV];
  const dir = dirOverride || (kind === 'systemd' ? '/etc/systemd/system' : '/etc/cron.d');
  const { config, runner } = await openSession(command);
  const pipeline = runner.pipeline(name);
  const configFile = isAbsolute(config.file) ? config.file : resolve(config.file);
  const sudoCommand = `pipeline schedule ${kind} ${pipeline.name} --user ${userName} --config ${configFile} --install`;
  // Before anything is written: the system folder, and folders owned by another user, take root.
  if (options.install && !isRoot() && (!dirOverride || userName !== userInfo().username)) throw needsRoot(dir, sudoCommand);
  const user = await lookupUser(userName);
  if (options.install && !user.exists) {
    throw new PipelineError('USAGE', `--user ${userName}: no such user on this host`, {
      hint: `Create it first (e.g. adduser --system --group ${userName}), or name the user that runs Mastodon.`,
    });
  }
  const input: ScheduleInput = {
    pipeline: pipeline.name,
    configFile,
    user: userName,
    onCalendar: options.onCalendar,
    writePaths: writePaths(config, pipeline, user),
    sharedPaths: sharedPaths(config, pipeline, user),
    gnupgHome: usesDefaultGnupgHome(pipeline) ? defaultGnupgHome(user) : undefined,
  };
  const unit = unitName(pipeline.name);
  const note = user.exists ? '' : `# Note: there is no user ${userName} on this host; its home is taken to be ${user.home}.\n`;
  const write = async (path: string, text: string) => {
    try {
      await writeFileAtomic(path, text, { mode: 0o644 });
    } catch (error) {
      if (isPipelineError(error) && error.code === 'ACCESS_DENIED') throw needsRoot(dir, sudoCommand);
      throw error;
    }
    output.stdout(`wrote ${path}\n`);
  };
  const prepare = async () => {
    if (isRoot()) await prepareFolders(user, input.writePaths, input.sharedPaths ?? [], (line) => output.stdout(line + '\n'));
  };

  if (kind === 'cron') {
    const text = cronFile(input);
    if (!options.install) {
      output.stdout(`${note}# /etc/cron.d/${unit}\n${text}`);
      return 0;
    }
    await write(join(dir, unit), text);
    await prepare();
    return 0;
  }

  const { service, timer } = systemdUnits(input);
  if (!options.install) {
    output.stdout(`${note}# /etc/systemd/system/${unit}.service\n${service}\n# /etc/systemd/system/${unit}.timer\n${timer}`);
    output.stdout(`\n# Then: systemctl daemon-reload && systemctl enable --now ${unit}.timer\n`);
    return 0;
  }
  for (const [suffix, text] of [['service', service], ['timer', timer]] as const) await write(join(dir, `${unit}.${suffix}`), text);
  await prepare();
  output.stdout(`Now run: systemctl daemon-reload && systemctl enable --now ${unit}.timer\n`);
  return 0;
}
