/**
 * The `rsync` destination: sets copied with rsync, over ssh (`user@host:/path`) or to a local
 * path. Every command is an argv array; the ssh command rsync runs (`-e`) is built from an argv
 * array too and quoted for rsync's own splitter. Files land atomically (rsync writes a temp file
 * and renames it), their sha256 is checked after upload, and listing, deleting and the
 * writability check use rsync alone, so a remote restricted to rsync (rrsync) works with
 * `verify: rsync-checksum`.
 */
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, mkdtemp, open, rename, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { PassThrough, type Readable } from 'node:stream';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import {
  definePlugin,
  ensurePrivateDir,
  exec,
  hashFile,
  isPipelineError,
  parseSetId,
  syncDir,
  MANIFEST_NAME,
  PARTIAL_SUFFIX,
  PipelineError,
  z,
  type Destination,
  type DestinationOperationOptions,
  type ExecResult,
  type PutSource,
  type SecretRegistry,
  type StoredFile,
  type StoredSet,
  assertFileName,
  assertSetId,
  checkTreeFile,
  pathInTree,
  readTreeIndex,
  treeSealName,
  writeTreeIndex,
  type TreeEntry,
  type TreeOperationOptions,
  type TreePutResult,
  type TreeSource,
} from '@backup-pipeline/core';

const SshOption = z
  .string()
  .regex(/^[A-Za-z][A-Za-z0-9]*[= ]\S.*$/, 'use "Key=Value" (an ssh_config option)')
  .refine((s) => !/[\0\n\r]/.test(s), 'no control characters');

export const RsyncOptions = z
  .object({
    target: z
      .string()
      .min(1)
      .refine((s) => !/[\0\n\r]/.test(s), 'no control characters')
      .describe('Where the sets go: `user@host:/path` (rsync over ssh) or a local path. A relative remote path is relative to the remote home.'),
    port: z.number().int().min(1).max(65535).optional().describe('ssh port of the remote host (default: ssh\'s own, usually 22).'),
    identityFile: z.string().min(1).optional().describe('Private key ssh logs in with (`-i`, with IdentitiesOnly=yes). Default: ssh\'s own keys and agent.'),
    knownHostsFile: z
      .string()
      .min(1)
      .refine((s) => !/["\0\n\r]/.test(s), 'no double quotes or control characters')
      .optional()
      .describe('known_hosts file holding the remote host key; when given, StrictHostKeyChecking=yes and only this file is used.'),
    sshOptions: z.array(SshOption).default([]).describe('Extra ssh options, each "Key=Value" (passed as `-o Key=Value`), e.g. "ProxyJump=bastion".'),
    bwLimit: z
      .union([z.number().int().positive(), z.string().regex(/^\d+(\.\d+)?[KMGkmg]?$/, 'a rate such as 5000, 800K or 2M')])
      .optional()
      .describe('Bandwidth limit for rsync (`--bwlimit`): KiB per second, or a number with K/M/G.'),
    connectTimeoutSeconds: z.number().int().positive().default(20).describe('ssh connection timeout (ConnectTimeout).'),
    ioTimeoutSeconds: z.number().int().positive().default(600).describe('rsync I/O timeout (`--timeout`): a transfer stalled this long fails (and is retried).'),
    verify: z
      .enum(['sha256sum', 'rsync-checksum'])
      .default('sha256sum')
      .describe(
        'How an upload is checked: `sha256sum` runs `sha256sum` on the remote host over ssh and compares it with the artifact\'s sha256; `rsync-checksum` uses an rsync --checksum dry run (works with an rsync-only remote).',
      ),
  })
  .strict();
export type RsyncOptions = z.output<typeof RsyncOptions>;

export interface RsyncTarget {
  /** `user@host` or `host` as rsync and ssh take it, or undefined for a local path. */
  remote?: { login: string; host: string; user?: string };
  /** The root path (without trailing slash, `.` for the remote home). */
  path: string;
}

/** rsync's own rule: a colon before the first slash makes a target remote. */
export function parseTarget(target: string): RsyncTarget {
  const m = /^(?:([^@:/\s]+)@)?(\[[^\]/]+\]|[^:/\s@[\]]+):(.*)$/.exec(target);
  const trim = (p: string) => (p.length > 1 ? p.replace(/\/+$/, '') : p) || '.';
  if (!m || target.startsWith('/') || target.startsWith('.')) return { path: trim(target) };
  const [, user, hostPart, path] = m as unknown as [string, string | undefined, string, string];
  const host = hostPart.replace(/^\[(.*)\]$/, '$1');
  return { remote: { login: user ? `${user}@${hostPart}` : hostPart, host: user ? `${user}@${host}` : host, user }, path: trim(path) };
}

/** Quotes one argument for rsync's `-e` splitter (which knows quotes, and a doubled quote inside them). */
export function quoteForRsh(arg: string): string {
  return /^[\w@%+=:,./-]+$/.test(arg) ? arg : `"${arg.replace(/"/g, '""')}"`;
}

/** Quotes one argument for the remote POSIX shell ssh runs a command with. */
export function quoteForShell(arg: string): string {
  return `'${arg.replace(/'/g, `'\\''`)}'`;
}

/** Escapes a literal name for an rsync filter pattern. */
function filterLiteral(name: string): string {
  return /[*?[]/.test(name) ? name.replace(/[*?[\\]/g, '\\$&') : name;
}

const LIST_LINE = /^([dl-][rwxsStT-]{9})\s+([\d,.]+)\s+(\d{4})\/(\d\d)\/(\d\d) (\d\d):(\d\d):(\d\d) (.+)$/;

/** What rsync's exit codes mean (rsync(1)), for messages when its own stderr says nothing. */
const RSYNC_EXIT_MEANINGS: Record<number, string> = {
  3: 'errors selecting input/output files or dirs',
  5: 'error starting the client-server protocol',
  10: 'error in socket I/O',
  11: 'error in file I/O: is the target folder writable, and is there space left?',
  12: 'error in the rsync protocol data stream: is rsync installed on the remote host?',
  23: 'partial transfer: some files could not be written',
  30: 'timeout in data send/receive',
  35: 'timeout waiting for the daemon connection',
  255: 'ssh failed: host unreachable, key refused or host key mismatch',
};

export class RsyncDestination implements Destination {
  readonly target: RsyncTarget;
  readonly sshArgs: string[];
  #rootReady = false;

  constructor(
    readonly options: RsyncOptions,
    private readonly secrets?: SecretRegistry,
  ) {
    this.target = parseTarget(options.target);
    const ssh: string[] = [];
    if (options.port) ssh.push('-p', String(options.port));
    if (options.identityFile) ssh.push('-i', options.identityFile, '-o', 'IdentitiesOnly=yes');
    ssh.push('-o', 'BatchMode=yes', '-o', `ConnectTimeout=${options.connectTimeoutSeconds}`, '-o', 'ServerAliveInterval=15');
    // ssh splits UserKnownHostsFile on whitespace unless the value is double-quoted.
    if (options.knownHostsFile) ssh.push('-o', `UserKnownHostsFile="${options.knownHostsFile}"`, '-o', 'StrictHostKeyChecking=yes', '-o', 'GlobalKnownHostsFile=/dev/null');
    for (const o of options.sshOptions) ssh.push('-o', o);
    this.sshArgs = ssh;
  }

  describe(): string {
    return `rsync ${this.options.target}`;
  }

  /** The `-e` value: ssh and its options, quoted for rsync's splitter. */
  rsh(): string {
    return ['ssh', ...this.sshArgs].map(quoteForRsh).join(' ');
  }

  /** `host:path` for rsync, or the local path. */
  private loc(path: string): string {
    return this.target.remote ? `${this.target.remote.login}:${path}` : path;
  }

  private root(...parts: string[]): string {
    return [this.target.path, ...parts].join('/');
  }

  private baseArgs(): string[] {
    const args = ['--protect-args', '--8-bit-output', `--timeout=${this.options.ioTimeoutSeconds}`];
    if (this.options.bwLimit !== undefined) args.push(`--bwlimit=${this.options.bwLimit}`);
    if (this.target.remote) args.push('-e', this.rsh());
    return args;
  }

  private async run(program: 'rsync' | 'ssh', args: string[], what: string, options: DestinationOperationOptions & { okExitCodes?: number[] } = {}): Promise<ExecResult> {
    try {
      // C locale: the messages matched below ("No such file or directory") are rsync's English ones.
      return await exec(program, args, { signal: options.signal, secrets: this.secrets, label: program, okExitCodes: options.okExitCodes, env: { LC_ALL: 'C' } });
    } catch (error) {
      if (isPipelineError(error) && (error.code === 'ABORTED' || error.code === 'EXEC_NOT_FOUND')) throw error;
      const exitCode = isPipelineError(error) ? (error.details?.exitCode as number | undefined) : undefined;
      const meaning = program === 'rsync' && exitCode !== undefined ? RSYNC_EXIT_MEANINGS[exitCode] : undefined;
      const message = (error instanceof Error ? error.message : String(error)) + (meaning ? ` (${meaning})` : '');
      throw new PipelineError('DESTINATION_FAILED', `${what} (${this.describe()}): ${message}`, {
        cause: error,
        details: isPipelineError(error) ? error.details : undefined,
      });
    }
  }

  private async ssh(command: string, what: string, options: DestinationOperationOptions = {}): Promise<ExecResult> {
    const remote = this.target.remote!;
    return this.run('ssh', [...this.sshArgs, '--', remote.host, command], what, options);
  }

  /** A private staging folder holding `dirName/fileName` → `source` (a symlink rsync follows). */
  private async stage(dirName: string, fileName: string, sourcePath: string): Promise<{ dir: string; cleanup: () => Promise<void> }> {
    const base = await mkdtemp(join(tmpdir(), 'rsync-stage-'));
    const dir = join(base, dirName);
    await mkdir(dir, { mode: 0o700 });
    await symlink(sourcePath, join(dir, fileName));
    return { dir, cleanup: () => rm(base, { recursive: true, force: true }) };
  }

  async check(options: DestinationOperationOptions = {}): Promise<void> {
    // Reachable and writable: upload a probe file with the same path a real upload takes, verify it, remove it.
    const probeDir = `.backup-pipeline-probe-${randomBytes(6).toString('hex')}`;
    const base = await mkdtemp(join(tmpdir(), 'rsync-probe-'));
    try {
      const file = join(base, 'probe');
      await writeFile(file, `backup-pipeline write check ${new Date().toISOString()}\n`, { mode: 0o600 });
      const digest = await hashFile(file);
      await this.upload(probeDir, 'probe', { path: file, ...digest }, options);
      await this.deleteDir(probeDir, options);
    } finally {
      await rm(base, { recursive: true, force: true });
    }
  }

  async put(setId: string, name: string, source: PutSource, options: DestinationOperationOptions = {}): Promise<void> {
    assertSetId(setId);
    assertFileName(name);
    await this.upload(setId, name, source, options);
  }

  /**
   * Creates the target folder 0700 when it does not exist yet, like every folder backup-pipeline
   * makes (`--mkpath` alone would make it with the remote umask). An existing folder is left as it is.
   */
  private async ensureRoot(options: DestinationOperationOptions): Promise<void> {
    if (this.#rootReady) return;
    try {
      await this.run('rsync', [...this.baseArgs(), '--list-only', '--', this.loc(this.root()) + '/.'], 'checking the target folder', options);
    } catch (error) {
      const stderr = String((isPipelineError(error) && error.details?.stderr) || '');
      if (!/(change_dir|link_stat) .* failed: No such file or directory/.test(stderr)) throw error;
      const empty = await mkdtemp(join(tmpdir(), 'rsync-root-'));
      try {
        await this.run('rsync', [...this.baseArgs(), '-r', '--perms', '--mkpath', '--chmod=D700', '--', empty + '/', this.loc(this.root()) + '/'], 'creating the target folder', options);
      } finally {
        await rm(empty, { recursive: true, force: true });
      }
    }
    this.#rootReady = true;
  }

  private async upload(dirName: string, name: string, source: PutSource, options: DestinationOperationOptions): Promise<void> {
    await this.ensureRoot(options);
    const staged = await this.stage(dirName, name, source.path);
    try {
      // -r over the staged folder creates the set folder 0700 (files 0600); rsync writes each file to a
      // temporary name and renames it, so no reader ever sees a partial file under its final name.
      const common = [...this.baseArgs(), '-r', '--copy-links', '--times', '--chmod=D700,F600', '--mkpath'];
      await this.run('rsync', [...common, '--', staged.dir, this.loc(this.root()) + '/'], `uploading ${dirName}/${name}`, options);
      options.onBytes?.(source.bytes);
      await this.verifyUpload(dirName, name, source, staged.dir, common, options);
    } finally {
      await staged.cleanup();
    }
  }

  private async verifyUpload(dirName: string, name: string, source: PutSource, stagedDir: string, common: string[], options: DestinationOperationOptions): Promise<void> {
    const path = this.root(dirName, name);
    let actual: string;
    if (!this.target.remote) {
      actual = (await hashFile(path, options.signal)).sha256;
    } else if (this.options.verify === 'sha256sum') {
      const out = await this.ssh(`sha256sum -- ${quoteForShell(path)}`, `checking the sha256 of ${dirName}/${name}`, options);
      const m = /^\\?([0-9a-f]{64})\s/.exec(out.stdout);
      if (!m) throw new PipelineError('DESTINATION_FAILED', `sha256sum on ${this.target.remote.host} printed no checksum for ${path}`);
      actual = m[1]!;
    } else {
      // rsync compares full-file checksums of the local source and the remote copy; the local source
      // itself is compared with the artifact's sha256.
      const local = await hashFile(source.path, options.signal);
      const out = await this.run('rsync', [...common, '--dry-run', '--checksum', '--itemize-changes', '--', stagedDir, this.loc(this.root()) + '/'], `checking ${dirName}/${name}`, options);
      const differs = out.stdout.split('\n').some((l) => /^[<>]f/.test(l));
      actual = differs ? 'differs' : local.sha256;
    }
    if (actual !== source.sha256) {
      await this.deleteFile(dirName, name, options).catch(() => {});
      throw new PipelineError('CHECKSUM_MISMATCH', `${dirName}/${name} on ${this.describe()} has sha256 ${actual}, expected ${source.sha256}`);
    }
  }

  async list(options: DestinationOperationOptions = {}): Promise<StoredSet[]> {
    // The set folders and the files directly inside them (with their sizes, for the set's state).
    const args = [...this.baseArgs(), '-r', '--list-only', '--exclude=/*/*/', '--include=/*/', '--include=/*/*', '--exclude=*', '--', this.loc(this.root()) + '/'];
    let out: ExecResult;
    try {
      out = await this.run('rsync', args, 'listing sets', { ...options, okExitCodes: [0, 24] });
    } catch (error) {
      // A root that does not exist yet holds no sets.
      const stderr = String((isPipelineError(error) && error.details?.stderr) || '');
      if (/change_dir .* failed: No such file or directory/.test(stderr)) return [];
      throw error;
    }
    const dirs = new Map<string, Date>();
    const manifests = new Map<string, Date>();
    const files = new Map<string, StoredFile[]>();
    for (const line of out.stdout.split('\n')) {
      const m = LIST_LINE.exec(line);
      if (!m) continue;
      const [, perms, size, y, mo, d, h, mi, s, name] = m as unknown as string[];
      const time = new Date(Number(y), Number(mo) - 1, Number(d), Number(h), Number(mi), Number(s));
      if (perms!.startsWith('d') && parseSetId(name!)) dirs.set(name!, time);
      else if (perms!.startsWith('-') && name!.includes('/')) {
        const slash = name!.indexOf('/');
        const [dir, file] = [name!.slice(0, slash), name!.slice(slash + 1)];
        files.set(dir, [...(files.get(dir) ?? []), { name: file, bytes: Number(size!.replace(/[,.]/g, '')) }]);
        if (file === MANIFEST_NAME) manifests.set(dir, time);
      }
    }
    return [...dirs]
      .filter(([id]) => !id.endsWith(PARTIAL_SUFFIX))
      .map(([id, time]) => ({ id, hasManifest: manifests.has(id), modifiedAt: manifests.get(id) ?? time, files: files.get(id) ?? [], ...treesOf(files.get(id) ?? []) }))
      .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  async get(setId: string, name: string, toPath: string, options: DestinationOperationOptions = {}): Promise<void> {
    assertSetId(setId);
    assertFileName(name);
    await ensurePrivateDir(dirname(toPath));
    const tmp = await mkdtemp(join(dirname(toPath), '.rsync-get-'));
    try {
      const local = join(tmp, 'file');
      try {
        await this.run('rsync', [...this.baseArgs(), '--copy-links', '--', this.loc(this.root(setId, name)), local], `downloading ${setId}/${name}`, options);
      } catch (error) {
        const stderr = String((isPipelineError(error) && error.details?.stderr) || '');
        if (/(link_stat|change_dir) .* failed: No such file or directory/.test(stderr)) {
          throw new PipelineError('SET_NOT_FOUND', `${setId}/${name} is not in ${this.describe()}`, { cause: error });
        }
        throw error;
      }
      await chmod(local, 0o600);
      options.onBytes?.((await stat(local)).size);
      await rename(local, toPath);
      await syncDir(dirname(toPath));
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  }

  /**
   * The stored file as a stream, for a one-pass restore: `cat` over ssh (the same ssh options as
   * rsync's, so the pinned host key applies), or the file itself for a local target. A failed
   * transfer makes the stream fail (never end early); a missing file is SET_NOT_FOUND.
   */
  async read(setId: string, name: string, options: DestinationOperationOptions = {}): Promise<Readable> {
    assertSetId(setId);
    assertFileName(name);
    const path = this.root(setId, name);
    const what = `downloading ${setId}/${name}`;
    if (!this.target.remote) {
      const handle = await open(path, 'r').catch((error: NodeJS.ErrnoException) => {
        if (error.code === 'ENOENT' || error.code === 'ENOTDIR') throw new PipelineError('SET_NOT_FOUND', `${setId}/${name} is not in ${this.describe()}`);
        throw new PipelineError('DESTINATION_FAILED', `${what} (${this.describe()}): ${error.message}`, { cause: error });
      });
      return handle.createReadStream({ signal: options.signal, highWaterMark: 1024 * 1024 });
    }
    const child = exec('ssh', [...this.sshArgs, '--', this.target.remote.host, `cat -- ${quoteForShell(path)}`], {
      signal: options.signal,
      secrets: this.secrets,
      stdout: 'stream',
      label: 'ssh cat',
      env: { LC_ALL: 'C' },
    });
    const out = new PassThrough({ highWaterMark: 1024 * 1024 });
    const raw = child.stdout!;
    let bytes = 0;
    raw.on('data', (chunk: Buffer) => options.onBytes?.((bytes += chunk.length)));
    raw.pipe(out, { end: false });
    const rawEnded = new Promise<void>((resolve) => raw.once('end', resolve));
    // The end only once ssh said it sent everything (exit 0): a cut connection is an error, not an end.
    void Promise.all([child, rawEnded]).then(
      () => out.end(),
      (error: unknown) => {
        if (out.destroyed) return;
        const stderr = String((isPipelineError(error) && error.details?.stderr) || '');
        if (/No such file or directory|Not a directory/.test(stderr)) {
          out.destroy(new PipelineError('SET_NOT_FOUND', `${setId}/${name} is not in ${this.describe()}`, { cause: error }));
          return;
        }
        const code = isPipelineError(error) && (error.code === 'ABORTED' || error.code === 'EXEC_NOT_FOUND') ? error.code : 'DESTINATION_FAILED';
        out.destroy(new PipelineError(code, `${what} (${this.describe()}): ${(error as Error).message}`, { cause: error, details: isPipelineError(error) ? error.details : undefined }));
      },
    );
    // A reader that went away stops the transfer.
    out.on('close', () => {
      if (!out.writableFinished) child.kill();
    });
    return out;
  }

  async delete(setId: string, options: DestinationOperationOptions = {}): Promise<void> {
    assertSetId(setId);
    // The manifest goes first: a set deleted halfway is then partial, never one that looks damaged.
    await this.deleteFile(setId, MANIFEST_NAME, options);
    await this.deleteDir(setId, options);
  }

  // ── trees: `<set>/<name>/` hard-linked (--link-dest) to the newest other set's tree of that name, sealed by `<set>/<name>.tree` ──

  async putTree(setId: string, name: string, source: TreeSource, options: TreeOperationOptions = {}): Promise<TreePutResult> {
    assertSetId(setId);
    assertFileName(name);
    await this.ensureRoot(options);
    const previous = (await this.list(options))
      .filter((s) => s.id !== setId && s.trees?.some((t) => t.name === name))
      .map((s) => s.id)
      .at(-1);
    // Unchanged = same path, size and sha256 as in the previous tree's seal: hard-linked, never sent.
    const before = new Map((previous ? await this.treeEntries(previous, name, options).catch(() => []) : []).map((e) => [e.path, e]));
    const same = (e: TreeEntry) => before.get(e.path)?.sha256 === e.sha256 && before.get(e.path)?.bytes === e.bytes;
    const work = await mkdtemp(join(tmpdir(), 'rsync-tree-'));
    try {
      // A seal left by an earlier attempt goes first: the tree is complete again only once this one ends.
      await this.deleteFile(setId, treeSealName(name), options);
      const to = this.loc(this.root(setId, name)) + '/';
      const pass = async (label: string, entries: TreeEntry[], extra: string[]) => {
        const listFile = join(work, label);
        await writeFile(listFile, entries.map((e) => `${e.path}\0`).join(''), { mode: 0o600 });
        const common = [...this.baseArgs(), '--from0', `--files-from=${listFile}`, '--perms', '--chmod=D700,F600', '--mkpath', ...extra];
        const out = await this.run('rsync', [...common, '--stats', '--itemize-changes', '--', source.dir + '/', to], `uploading tree ${setId}/${name} (${label})`, options);
        const number = (what: string) => Number((new RegExp(`${what}: ([\\d,.]+)`).exec(out.stdout)?.[1] ?? '0').replace(/[,.]/g, ''));
        const sent = out.stdout.split('\n').filter((l) => /^[<>]f/.test(l)).map((l) => l.slice(l.indexOf(' ') + 1));
        const byPath = new Map(entries.map((e) => [e.path, e]));
        await this.verifyTreeFiles(setId, name, sent.map((p) => byPath.get(p)).filter((e): e is TreeEntry => e !== undefined), source, common, options);
        return { files: number('Number of regular files transferred'), bytes: number('Total transferred file size') };
      };
      const linked = source.entries.filter(same);
      const changed = source.entries.filter((e) => !same(e));
      // Linked by size alone (their content is known equal), without comparing times, so rsync links rather than copies.
      const a = linked.length > 0 ? await pass('linked', linked, ['--size-only', `--link-dest=../../${previous}/${name}`]) : { files: 0, bytes: 0 };
      const b = changed.length > 0 ? await pass('changed', changed, ['--times', '--ignore-times']) : { files: 0, bytes: 0 };
      const bytes = source.entries.reduce((n, e) => n + e.bytes, 0);
      options.onBytes?.(bytes);
      const seal = join(work, 'seal');
      const digest = await writeTreeIndex(seal, source.entries);
      await this.upload(setId, treeSealName(name), { path: seal, ...digest }, options);
      return { files: source.entries.length, bytes, filesWritten: a.files + b.files, bytesWritten: a.bytes + b.bytes };
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  }

  /** The files rsync just wrote, checked against their sha256 (on the remote host with sha256sum, or locally). */
  private async verifyTreeFiles(setId: string, name: string, written: TreeEntry[], source: TreeSource, common: string[], options: TreeOperationOptions): Promise<void> {
    const mismatch = async (entry: TreeEntry, actual: string) => {
      throw new PipelineError('CHECKSUM_MISMATCH', `${setId}/${name}/${entry.path} on ${this.describe()} has sha256 ${actual}, expected ${entry.sha256}`);
    };
    if (!this.target.remote) {
      for (const entry of written) checkTreeFile(entry, await hashFile(pathInTree(this.root(setId, name), entry.path), options.signal), `${this.describe()} ${setId}/${name}`);
      return;
    }
    if (this.options.verify === 'sha256sum') {
      for (let i = 0; i < written.length; i += 200) {
        const batch = written.slice(i, i + 200);
        const command = `cd ${quoteForShell(this.root(setId, name))} && sha256sum -- ${batch.map((e) => quoteForShell(e.path)).join(' ')}`;
        const out = await this.ssh(command, `checking the sha256 of tree ${setId}/${name}`, options);
        const sums = out.stdout.split('\n').filter(Boolean).map((l) => l.replace(/^\\/, '').slice(0, 64));
        for (const [j, entry] of batch.entries()) if (sums[j] !== entry.sha256) await mismatch(entry, sums[j] ?? 'missing');
      }
      return;
    }
    // rsync-checksum: full-file checksums of the (already checked) local files against the remote copies.
    for (const entry of written) checkTreeFile(entry, await hashFile(pathInTree(source.dir, entry.path), options.signal), 'the tree being stored');
    const listFile = join(dirname(common.find((a) => a.startsWith('--files-from='))!.slice('--files-from='.length)), 'check');
    await writeFile(listFile, written.map((e) => `${e.path}\0`).join(''), { mode: 0o600 });
    const args = common.map((a) => (a.startsWith('--files-from=') ? `--files-from=${listFile}` : a));
    const out = await this.run('rsync', [...args, '--dry-run', '--checksum', '--itemize-changes', '--', source.dir + '/', this.loc(this.root(setId, name)) + '/'], `checking tree ${setId}/${name}`, options);
    const differs = out.stdout.split('\n').find((l) => /^[<>]f/.test(l));
    if (differs) await mismatch(written.find((e) => differs.endsWith(e.path)) ?? written[0]!, 'differs');
  }

  async getTree(setId: string, name: string, entries: readonly TreeEntry[], toDir: string, options: TreeOperationOptions = {}): Promise<void> {
    assertSetId(setId);
    assertFileName(name);
    await this.treeEntriesFile(setId, name, options, async () => {});
    await ensurePrivateDir(toDir);
    const work = await mkdtemp(join(tmpdir(), 'rsync-tree-get-'));
    try {
      const listFile = join(work, 'files');
      await writeFile(listFile, entries.map((e) => `${e.path}\0`).join(''), { mode: 0o600 });
      try {
        await this.run('rsync', [...this.baseArgs(), '--from0', `--files-from=${listFile}`, '--perms', '--chmod=D700,F600', '--', this.loc(this.root(setId, name)) + '/', toDir + '/'], `downloading tree ${setId}/${name}`, options);
      } catch (error) {
        const stderr = String((isPipelineError(error) && error.details?.stderr) || '');
        if (/(link_stat|change_dir) .* failed: No such file or directory/.test(stderr)) throw new PipelineError('SET_NOT_FOUND', `files of tree ${setId}/${name} are missing in ${this.describe()}`, { cause: error });
        throw error;
      }
      let done = 0;
      for (const entry of entries) {
        checkTreeFile(entry, await hashFile(pathInTree(toDir, entry.path), options.signal), `${this.describe()} ${setId}/${name}`);
        options.onBytes?.((done += entry.bytes));
      }
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  }

  async treeEntries(setId: string, name: string, options: TreeOperationOptions = {}): Promise<TreeEntry[]> {
    let entries: TreeEntry[] = [];
    await this.treeEntriesFile(setId, name, options, async (path) => void (entries = await readTreeIndex(path)));
    return entries;
  }

  /** Downloads the seal of a tree (SET_NOT_FOUND when the tree is not complete there) and hands it to `use`. */
  private async treeEntriesFile(setId: string, name: string, options: TreeOperationOptions, use: (path: string) => Promise<void>): Promise<void> {
    assertSetId(setId);
    assertFileName(name);
    const work = await mkdtemp(join(tmpdir(), 'rsync-seal-'));
    try {
      const path = join(work, 'seal');
      await this.get(setId, treeSealName(name), path, options).catch((error: unknown) => {
        if (isPipelineError(error) && error.code === 'SET_NOT_FOUND') throw new PipelineError('SET_NOT_FOUND', `tree ${setId}/${name} is not (completely) in ${this.describe()}`, { cause: error });
        throw error;
      });
      await use(path);
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  }

  /** Removes `root/dirName` with rsync alone: an empty folder synced with --delete, filtered to that folder. */
  private async deleteDir(dirName: string, options: DestinationOperationOptions): Promise<void> {
    await this.deleteMatching(this.root(), `/${filterLiteral(dirName)}/***`, `deleting ${dirName}`, options);
  }

  private async deleteFile(dirName: string, name: string, options: DestinationOperationOptions): Promise<void> {
    await this.deleteMatching(this.root(dirName), `/${filterLiteral(name)}`, `deleting ${dirName}/${name}`, options);
  }

  private async deleteMatching(dir: string, pattern: string, what: string, options: DestinationOperationOptions): Promise<void> {
    const empty = await mkdtemp(join(tmpdir(), 'rsync-empty-'));
    try {
      const args = [...this.baseArgs(), '-r', '--delete', `--include=${pattern}`, '--exclude=*', '--', empty + '/', this.loc(dir) + '/'];
      const absent = (error: unknown) => {
        const stderr = String((isPipelineError(error) && error.details?.stderr) || '');
        // Nothing to delete when the folder is not there.
        if (/(mkdir|change_dir|chdir)[^\n]*No such file or directory/.test(stderr)) return true;
        return stderr === '' ? undefined : false;
      };
      await this.run('rsync', args, what, options).catch(async (error: unknown) => {
        const gone = absent(error);
        if (gone) return;
        if (gone === false || options.signal?.aborted) throw error;
        // rsync failed without a word (seen under load): deleting is idempotent, so ask once more.
        await this.run('rsync', args, what, options).catch((again: unknown) => {
          if (!absent(again)) throw again;
        });
      });
    } finally {
      await rm(empty, { recursive: true, force: true });
    }
  }
}

/** The trees a set's listing shows sealed (`NAME.tree` beside the `NAME/` folder). */
function treesOf(files: readonly StoredFile[]): { trees?: Array<{ name: string }> } {
  const trees = files.filter((f) => f.name.endsWith('.tree') && f.name.length > '.tree'.length).map((f) => ({ name: f.name.slice(0, -'.tree'.length) }));
  return trees.length > 0 ? { trees } : {};
}

export default definePlugin({
  name: 'rsync',
  description: 'Destination: a folder reached with rsync over ssh (user@host:/path), or a local path.',
  destination: {
    options: RsyncOptions,
    // Only a local target is written on this machine (no `host:` before the first slash).
    writablePaths: (options, api) => (parseTarget(options.target).remote ? [] : [api.resolvePath(options.target)]),
    create: (options, api) => {
      const target = parseTarget(options.target);
      const resolved: RsyncOptions = {
        ...options,
        target: target.remote ? options.target : api.resolvePath(options.target),
        identityFile: options.identityFile && api.resolvePath(options.identityFile),
        knownHostsFile: options.knownHostsFile && api.resolvePath(options.knownHostsFile),
      };
      return new RsyncDestination(resolved, api.secrets);
    },
  },
});
