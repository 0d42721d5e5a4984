/**
 * `pipeline schedule systemd|cron [pipeline]`: prints (or installs) what runs a pipeline on a
 * schedule — a hardened systemd service + timer pair, or an /etc/cron.d line. Absolute paths
 * throughout: the node binary running this command, the CLI's own bin script, the config file.
 * The pipeline holds its own lock, so neither needs flock.
 */
import { userInfo } from 'node:os';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { displayCommand, exec, isPipelineError, makePathResolver, PipelineError, writeFileAtomic, type ResolvedConfig, type ResolvedPipeline } from '@backup-pipeline/core';
import type { Command } from 'commander';
import { CLI_DIR, CLI_PACKAGE } from '../builtins.js';
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
  /** Folders the run writes to (work dir, local destinations, metrics folder). */
  writePaths: string[];
  node?: string;
  bin?: string;
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

/** The folders a run of `pipeline` writes to, so ProtectSystem=strict can let it. */
export function writePaths(config: ResolvedConfig, pipeline: ResolvedPipeline): string[] {
  const resolvePath = makePathResolver(config.dir);
  const paths = [config.workDir];
  for (const name of pipeline.destinations) {
    const d = config.destinations[name];
    const options = (d?.options ?? {}) as { path?: unknown; target?: unknown };
    if (d?.plugin.name === 'local' && typeof options.path === 'string') paths.push(resolvePath(options.path));
    // rsync to a local path (no `host:` before the first slash).
    if (d?.plugin.name === 'rsync' && typeof options.target === 'string' && !/^[^/]*:/.test(options.target)) paths.push(resolvePath(options.target));
  }
  for (const stage of pipeline.stages) {
    const options = (stage.options ?? {}) as { path?: unknown };
    if (stage.plugin.name === 'metrics' && typeof options.path === 'string') paths.push(dirname(resolvePath(options.path)));
    // gpg takes lock files in its home even to encrypt (ProtectHome=read-only would stop it).
    if (stage.plugin.name === 'gpg') {
      const home = (stage.options as { gnupgHome?: string }).gnupgHome;
      paths.push(home ? resolvePath(home) : process.env.GNUPGHOME ?? resolvePath('~/.gnupg'));
    }
  }
  return [...new Set(paths.map((p) => resolve(p)))];
}

export function systemdUnits(input: ScheduleInput): { service: string; timer: string } {
  const node = input.node ?? process.execPath;
  const bin = input.bin ?? BIN;
  const exec = [node, bin, 'run', input.pipeline, '--config', input.configFile].map((w) => systemdWord(w, true)).join(' ');
  const header = `# Written by \`pipeline schedule systemd ${input.pipeline}\` (backup-pipeline ${CLI_PACKAGE.version}).`;
  const service = `${header}
# ProtectSystem=strict makes everything read-only but ReadWritePaths=: those folders must exist
# before the first run and be writable by ${input.user}.
[Unit]
Description=backup-pipeline: run pipeline ${input.pipeline}
Wants=network-online.target
After=network-online.target postgresql.service

[Service]
Type=oneshot
User=${input.user}
ExecStart=${exec}
# Back off for Mastodon's own work: lowest CPU and I/O priority.
Nice=10
IOSchedulingClass=idle
UMask=0077
# SIGTERM stops the run cleanly (exit 143): partial sets are removed, the lock is released.
TimeoutStopSec=2min
# Hardening: the run reads the system and the Mastodon home, and writes only its own folders.
NoNewPrivileges=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectSystem=strict
ProtectHome=read-only
ReadWritePaths=${input.writePaths.map((p) => systemdWord(p)).join(' ')}
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
${cronSchedule(input.onCalendar)} ${input.user} ${command} 2>&1 | logger -t backup-pipeline
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

export default async function schedule(command: Command, kind: string, name: string | undefined): Promise<number> {
  const options = command.opts<ScheduleOptions>();
  if (kind !== 'systemd' && kind !== 'cron') {
    throw new PipelineError('USAGE', `unknown schedule kind "${kind}"`, { hint: 'Use `pipeline schedule systemd [pipeline]` or `pipeline schedule cron [pipeline]`.' });
  }
  const user = options.user ?? userInfo().username;
  checkWord('--user', user, /^[A-Za-z_][A-Za-z0-9_.-]*\$?$/, 'Give the name of the Unix user that runs the backup (e.g. mastodon).');
  checkWord('--on-calendar', options.onCalendar, /^[^\r\n\0]+$/, 'See `man systemd.time` (e.g. daily, *-*-* 03:30:00).');
  if (kind === 'systemd') await checkCalendar(options.onCalendar);
  const { config, runner } = await openSession(command);
  const pipeline = runner.pipeline(name);
  const input: ScheduleInput = {
    pipeline: pipeline.name,
    configFile: isAbsolute(config.file) ? config.file : resolve(config.file),
    user,
    onCalendar: options.onCalendar,
    writePaths: writePaths(config, pipeline),
  };
  const unit = unitName(pipeline.name);

  if (kind === 'cron') {
    const text = cronFile(input);
    if (!options.install) {
      process.stdout.write(`# /etc/cron.d/${unit}\n${text}`);
      return 0;
    }
    const path = join(process.env[CRON_DIR_ENV] || '/etc/cron.d', unit);
    await writeFileAtomic(path, text, { mode: 0o644 });
    process.stdout.write(`wrote ${path}\n`);
    return 0;
  }

  const { service, timer } = systemdUnits(input);
  if (!options.install) {
    process.stdout.write(`# /etc/systemd/system/${unit}.service\n${service}\n# /etc/systemd/system/${unit}.timer\n${timer}`);
    process.stdout.write(`\n# Then: systemctl daemon-reload && systemctl enable --now ${unit}.timer\n`);
    return 0;
  }
  const dir = process.env[SYSTEMD_DIR_ENV] || '/etc/systemd/system';
  for (const [suffix, text] of [['service', service], ['timer', timer]] as const) {
    const path = join(dir, `${unit}.${suffix}`);
    await writeFileAtomic(path, text, { mode: 0o644 });
    process.stdout.write(`wrote ${path}\n`);
  }
  process.stdout.write(`Now run: systemctl daemon-reload && systemctl enable --now ${unit}.timer\n`);
  return 0;
}
