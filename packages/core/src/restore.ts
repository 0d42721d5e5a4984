/**
 * Getting a stored set back, owned by the core: locate it (an id, or `latest` = the newest set
 * that is complete somewhere among the work dir and the pipeline's destinations), fetch every
 * artifact, check its size and sha256 against the manifest (a bad copy: try the same set from the
 * next destination that holds it, and say so), decrypt through the `decrypt` hook (checking the
 * plaintext's sha256 too), then restore through the `restore` hook. The CLI only parses flags and
 * prints what this returns.
 *
 * A set that needs a plugin that is not loaded (no tap for its encryption method or format) is
 * reported as such before anything is fetched — never called corrupt.
 */
import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { constants, copyFile, mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { fileSystemError, hashFile, writeFileAtomic } from './atomic-file.js';
import type { Artifact, RunContext } from './context.js';
import type { NamedDestination } from './destination.js';
import { isPipelineError, PipelineError, toPipelineError } from './errors.js';
import { isChainConsequence } from './exec.js';
import type { PipelineHooks } from './hooks.js';
import type { Manifest, ManifestArtifact } from './manifest.js';
import { psql, quoteIdent, quoteLiteral, type PgSource } from './postgres.js';
import type { RestoreContext, RestoreReport, RestoreTarget } from './restore-context.js';
import { listSets, recordDamage } from './sets.js';
import { pathInSet } from './names.js';
import { checkedChain, checkedFileChain, isDamagedCopy, isFetchFailure, type OpenedArtifact, type RestoreInput } from './restore-stream.js';

/** PostgreSQL's own databases: never a restore target. */
export const SYSTEM_DATABASES: readonly string[] = ['postgres', 'template0', 'template1'];

export interface LocatedSet {
  id: string;
  manifest: Manifest;
  /** The destinations holding it complete, in the order they are tried. */
  holders: NamedDestination[];
}

/**
 * The set `id` (or the newest complete one for `latest`) and every destination holding it
 * complete. Only sets whose state is `complete` count; a destination that cannot be listed is
 * skipped with a warning.
 */
export async function locateSet(sources: readonly NamedDestination[], id: string, ctx: Pick<RunContext, 'log' | 'tmpDir'>): Promise<LocatedSet> {
  const listed: Array<{ from: NamedDestination; sets: Awaited<ReturnType<typeof listSets>> }> = [];
  const unreachable: string[] = [];
  for (const from of sources) {
    try {
      listed.push({ from, sets: await listSets(from.destination, { scratchDir: ctx.tmpDir }) });
    } catch (error) {
      unreachable.push(`${from.name}: ${(error as Error).message}`);
      ctx.log.warn({ destination: from.name }, `cannot list the sets of ${from.name}: ${(error as Error).message}`);
    }
  }
  const wanted =
    id === 'latest'
      ? listed
          .flatMap((l) => l.sets.filter((s) => s.complete).map((s) => s.id))
          .sort()
          .at(-1)
      : id;
  const holders: NamedDestination[] = [];
  let manifest: Manifest | undefined;
  const problems: string[] = [];
  for (const { from, sets } of listed) {
    const set = wanted ? sets.find((s) => s.id === wanted) : undefined;
    if (!set) continue;
    if (set.complete && set.manifest) {
      holders.push(from);
      manifest ??= set.manifest;
    } else {
      problems.push(`${from.name}: ${set.problem ?? 'not complete'}`);
    }
  }
  if (wanted && manifest) return { id: wanted, manifest, holders };
  const where = sources.map((d) => d.name).join(', ');
  if (problems.length > 0) throw new PipelineError('SET_INCOMPLETE', `set ${wanted} is not complete anywhere (${problems.join('; ')})`);
  throw new PipelineError('SET_NOT_FOUND', `${id === 'latest' ? 'no complete set' : `set ${id} was not found`} in ${where}${unreachable.length ? ` (not listed: ${unreachable.join('; ')})` : ''}`);
}

/** A loaded plugin decrypts `method`: as a stream (`decryptFilter`) or into a file (`decrypt`). */
function canDecrypt(hooks: PipelineHooks, method: string): boolean {
  return !!hooks.decryptFilter.get(method)?.taps.length || !!hooks.decrypt.get(method)?.taps.length;
}

/** Throws RESTORE_NEEDS_PLUGIN (naming what is missing) unless loaded plugins can read these artifacts. */
export function checkPlugins(hooks: PipelineHooks, entries: readonly ManifestArtifact[], needRestore: boolean): void {
  const missing: string[] = [];
  for (const entry of entries) {
    if (entry.encryption && !canDecrypt(hooks, entry.encryption.method)) missing.push(`${entry.name}: decrypt for "${entry.encryption.method}"`);
    if (needRestore && !hooks.restore.get(entry.format)?.taps.length) missing.push(`${entry.name}: restore for format "${entry.format}"`);
  }
  if (missing.length === 0) return;
  const methods = [...new Set(entries.flatMap((e) => (e.encryption && !canDecrypt(hooks, e.encryption.method) ? [e.encryption.method] : [])))];
  throw new PipelineError('RESTORE_NEEDS_PLUGIN', `this set needs plugins that are not loaded: ${missing.join('; ')}`, {
    hint: `The set is not damaged. ${methods.length ? `Add the stage that encrypted it (\`use: ${methods.join('`, `use: ')}\`, with its restore-time options such as a key file) to the pipeline. ` : ''}Every artifact is restored by the plugin that wrote it: keep that stage in the config of the host you restore on.`,
    details: { missing },
  });
}

/** The keys the loaded plugins answer for on the restore side (see `Runner.restoreCapabilities`). */
export interface RestoreCapabilities {
  decrypt: readonly string[];
  decompress: readonly string[];
  restore: readonly string[];
}

/**
 * What a set needs that the loaded plugins cannot do: an encryption method nobody decrypts, a
 * database dump format nobody restores. Empty when the set can be restored here. A fact to show
 * (`needs a plugin for decrypt "age"`), never a reason to call the set damaged.
 */
export function missingPlugins(entries: readonly Pick<ManifestArtifact, 'kind' | 'format' | 'encryption'>[], can: RestoreCapabilities): string[] {
  const out = new Set<string>();
  for (const entry of entries) {
    if (entry.encryption && !can.decrypt.includes(entry.encryption.method)) out.add(`decrypt "${entry.encryption.method}"`);
    if ((entry.kind === 'database' || entry.kind === 'globals') && !can.restore.includes(entry.format)) out.add(`restore "${entry.format}"`);
  }
  return [...out];
}

/** Downloads one artifact and checks it against its manifest entry, then runs the `fetched` checks. */
async function fetchOne(hooks: PipelineHooks, from: NamedDestination, setId: string, entry: ManifestArtifact, dir: string, ctx: RestoreContext): Promise<Artifact> {
  const path = pathInSet(dir, entry.name);
  ctx.log.info({ destination: from.name, setId, artifact: entry.name }, `fetching ${entry.name} from ${from.name}`);
  await from.destination.get(setId, entry.name, path, { signal: ctx.signal }).catch((error: unknown) => {
    // Say which step ran out of room (this is the core's, not a plugin's: no stage tag names it).
    if (isPipelineError(error) && (error.code === 'NO_SPACE' || error.code === 'ACCESS_DENIED')) error.message = `fetching ${entry.name} from ${from.name}: ${error.message}`;
    throw error;
  });
  const got = await hashFile(path, ctx.signal);
  if (got.sha256 !== entry.sha256 || got.bytes !== entry.bytes) {
    const error = new PipelineError(
      'CHECKSUM_MISMATCH',
      `${from.name}/${setId}/${entry.name} does not match its manifest (sha256 ${got.sha256.slice(0, 16)}…, ${got.bytes} bytes; expected ${entry.sha256.slice(0, 16)}…, ${entry.bytes} bytes)`,
      { details: { destination: from.name, setId, artifact: entry.name } },
    );
    // From now on every listing calls this copy damaged: retention neither counts nor deletes it.
    await recordDamage(from.destination, setId, error.message, { scratchDir: ctx.tmpDir, signal: ctx.signal, log: ctx.log });
    throw error;
  }
  const artifact: Artifact = { ...entry, path, meta: entry.meta ?? {} } as Artifact;
  await hooks.fetched.promise(artifact, ctx);
  return artifact;
}

/**
 * Opens one artifact of one holder as its checked plaintext stream. One pass where it can: the
 * destination streams (`read`), and the encryption (if any) has a `decryptFilter` — fetch, sha256,
 * decrypt, sha256, no ciphertext file. Otherwise as before, through files: `get`, the `fetched`
 * checks, `decrypt` into a plaintext file (said in the log), read back as a stream.
 */
export async function openArtifact(hooks: PipelineHooks, from: NamedDestination, setId: string, entry: ManifestArtifact, dir: string, ctx: RestoreContext): Promise<OpenedArtifact> {
  const method = entry.encryption?.method;
  if (method && !entry.plain) throw new PipelineError('MANIFEST_INVALID', `${entry.name} is encrypted but the manifest does not describe its plaintext`);
  const stored: Artifact = { ...entry, path: '', meta: entry.meta ?? {} } as Artifact;
  const filter = method ? await hooks.decryptFilter.get(method)?.promise(stored, ctx) : undefined;
  const read = from.destination.read?.bind(from.destination);
  const localFile = from.destination.localFile?.bind(from.destination);
  const streams = !!read || !!localFile;
  if (method && !filter) {
    ctx.log.info({ destination: from.name, setId, artifact: entry.name }, `${entry.name}: fetched and decrypted through files (the "${method}" plugin has no decryptFilter: one more pass over the data)`);
    let fetched: Artifact;
    try {
      fetched = await fetchOne(hooks, from, setId, entry, dir, ctx);
    } catch (error) {
      throw markFetching(error);
    }
    const plain = await decryptArtifact(hooks, fetched, ctx);
    const stream = createReadStream(plain.path);
    return { artifact: plain, file: plain.path, stream, checked: Promise.resolve(), stop: () => stream.destroy() };
  }
  let source: Readable | undefined;
  let file: string | undefined;
  let fetchedFile: string | undefined;
  if (streams) {
    ctx.log.info({ destination: from.name, setId, artifact: entry.name }, `fetching ${entry.name} from ${from.name} (one stream${filter ? `, decrypted by ${filter.label ?? filter.command}` : ''}, checked on the way)`);
    const opening = localFile ? localFile(setId, entry.name, { signal: ctx.signal }).then((path) => (file = path)) : read!(setId, entry.name, { signal: ctx.signal }).then((stream) => (source = stream));
    await opening.catch((error: unknown) => {
      throw markFetching(error);
    });
  } else {
    ctx.log.info({ destination: from.name, setId, artifact: entry.name }, `${entry.name}: fetched into a file first (${from.name} cannot stream)`);
    try {
      fetchedFile = (await fetchOne(hooks, from, setId, entry, dir, ctx)).path;
    } catch (error) {
      throw markFetching(error);
    }
    file = fetchedFile;
  }
  // One pass: `fetched` runs as the copy starts streaming (no file: `path` is empty; the checks end the stream).
  try {
    await hooks.fetched.promise(stored, ctx);
  } catch (error) {
    source?.destroy();
    throw markFetching(error);
  }
  const copy = `${from.name}/${setId}/${entry.name}`;
  const chained = { stored: entry, plain: method ? entry.plain : undefined, filter, copy, name: entry.name, exec: ctx.exec };
  const chain = file ? await checkedFileChain({ ...chained, file, tmpDir: dir }) : checkedChain({ ...chained, source: source! });
  const checked = chain.checked.then(
    async () => {
      if (fetchedFile) await rm(fetchedFile, { force: true });
    },
    async (error: unknown) => {
      if (fetchedFile) await rm(fetchedFile, { force: true });
      // From now on every listing calls this copy damaged: retention neither counts nor deletes it.
      if (isDamagedCopy(error)) await recordDamage(from.destination, setId, (error as Error).message, { scratchDir: ctx.tmpDir, signal: ctx.signal, log: ctx.log });
      throw error;
    },
  );
  checked.catch(() => {});
  const { encryption: _e, plain: _p, ...rest } = stored;
  const artifact: Artifact = method ? { ...rest, name: entry.plain!.name, bytes: entry.plain!.bytes, sha256: entry.plain!.sha256 } : stored;
  return { artifact, stream: chain.stream, checked, stop: chain.stop };
}

/** A failure of getting the stored copy (not of decrypting it): another holder may do better. */
function markFetching(error: unknown): PipelineError {
  const e = toPipelineError(error, 'DESTINATION_FAILED');
  // A full local disk or an interruption fails the same way for every copy.
  if (e.code !== 'NO_SPACE' && e.code !== 'ABORTED') e.details = { ...e.details, fetching: true };
  return e;
}

/** The opened artifact's plaintext as a file in `dir` (0600), renamed into place only once every check passed. */
export async function materialize(opened: OpenedArtifact, dir: string, ctx: RestoreContext): Promise<Artifact> {
  if (opened.file) {
    opened.stop();
    return opened.artifact;
  }
  const path = pathInSet(dir, `plain-${opened.artifact.name}`);
  const [written, checked] = await Promise.allSettled([writeFileAtomic(path, opened.stream, { signal: ctx.signal }), opened.checked]);
  if (checked.status === 'rejected') throw checked.reason;
  if (written.status === 'rejected') throw written.reason;
  return { ...opened.artifact, path };
}

/** Whether a failure is about this holder's copy (damaged, or not transferable): the next holder is tried. */
function aboutTheCopy(error: unknown): boolean {
  return isDamagedCopy(error) || isFetchFailure(error);
}

/** Runs `attempt` on each holder in turn until one succeeds; a failure about the copy moves to the next, any other stops. */
async function fromFirstGoodCopy<T>(located: LocatedSet, ctx: RestoreContext, holders: readonly NamedDestination[], attempt: (from: NamedDestination, dir: string) => Promise<T>): Promise<{ from: NamedDestination; value: T }> {
  const failures: PipelineError[] = [];
  for (const [i, from] of holders.entries()) {
    const dir = join(ctx.tmpDir, `fetch-${i}-${randomBytes(3).toString('hex')}`);
    await mkdir(dir, { recursive: true, mode: 0o700 });
    (ctx.stored as { from: string }).from = from.name;
    (ctx.stored as { destination?: unknown }).destination = from.destination;
    try {
      const value = await attempt(from, dir);
      if (failures.length > 0) ctx.log.warn({ destination: from.name, setId: located.id }, `using the copy of ${located.id} in ${from.name} (${failures.length} other cop${failures.length === 1 ? 'y was' : 'ies were'} bad)`);
      return { from, value };
    } catch (caught) {
      const error = toPipelineError(caught, 'DESTINATION_FAILED');
      await rm(dir, { recursive: true, force: true });
      if (ctx.signal.aborted || !aboutTheCopy(error)) throw error;
      failures.push(error);
      const next = holders[i + 1];
      ctx.log.warn({ destination: from.name, setId: located.id, code: error.code }, `${error.message}${next ? `; trying the same set from ${next.name}` : ''}`);
    }
  }
  if (failures.length === 1) throw failures[0]!;
  const last = failures.at(-1)!;
  throw new PipelineError(last.code, `no good copy of ${located.id}: ${failures.map((f) => f.message).join('; ')}`, { hint: last.hint, details: { tried: holders.map((h) => h.name) } });
}

/**
 * Fetches `entries` of the located set as plaintext files (decrypted, both sha256 checked), from
 * the first holder whose copy is good. A copy that does not match its manifest (or cannot be
 * fetched) is reported, and the next holder is tried.
 */
export async function fetchArtifacts(
  hooks: PipelineHooks,
  located: LocatedSet,
  entries: readonly ManifestArtifact[],
  ctx: RestoreContext,
  options: { fallback: boolean },
): Promise<{ from: NamedDestination; artifacts: Artifact[] }> {
  const holders = options.fallback ? located.holders : located.holders.slice(0, 1);
  const { from, value } = await fromFirstGoodCopy(located, ctx, holders, async (from, dir) => {
    const artifacts: Artifact[] = [];
    for (const entry of entries) artifacts.push(await materialize(await openArtifact(hooks, from, located.id, entry, dir, ctx), dir, ctx));
    return artifacts;
  });
  return { from, artifacts: value };
}

/**
 * The database dump restored from its stream (`restoreStream`): one pass from the holder to the
 * server. A copy found bad at the end of its stream fails this attempt; a database this restore
 * created is dropped and created again, and the next holder is tried.
 */
async function restoreDumpStreamed(
  hooks: PipelineHooks,
  located: LocatedSet,
  entry: ManifestArtifact,
  target: RestoreTarget,
  plan: DatabasePlan,
  holders: readonly NamedDestination[],
  ctx: RestoreContext,
): Promise<{ from: NamedDestination; value: RestoreReport }> {
  let attempts = 0;
  return fromFirstGoodCopy(located, ctx, holders, async (from, dir) => {
    if (attempts++ > 0 && plan.created) {
      await dropDatabase(ctx.pg!, plan.into, ctx);
      await createDatabase(ctx.pg!, plan.into, ctx);
    }
    const opened = await openArtifact(hooks, from, located.id, entry, dir, ctx);
    const input: RestoreInput = { stream: opened.stream, checked: opened.checked, targetDisposable: plan.created };
    let report: RestoreReport | undefined;
    try {
      report = await hooks.restoreStream.get(entry.format)?.promise(opened.artifact, target, input, ctx);
      if (!report) report = await ctx.restore(await materialize(opened, dir, ctx), target);
    } catch (error) {
      // The checks say whether the input was damaged (the real cause) or the restore failed on its own.
      const check = await opened.checked.then(
        () => undefined,
        (e: unknown) => e,
      );
      throw check !== undefined && !isChainConsequence(check) ? check : error;
    }
    await opened.checked;
    return report;
  });
}

/** The plaintext of a fetched artifact, through the `decrypt` hook, checked against the manifest. */
export async function decryptArtifact(hooks: PipelineHooks, artifact: Artifact, ctx: RestoreContext): Promise<Artifact> {
  if (!artifact.encryption) return artifact;
  if (!artifact.plain) throw new PipelineError('MANIFEST_INVALID', `${artifact.name} is encrypted but the manifest does not describe its plaintext`);
  const method = artifact.encryption.method;
  const decrypted = await hooks.decrypt.get(method)?.promise(artifact, ctx);
  if (!decrypted) {
    throw new PipelineError('RESTORE_NEEDS_PLUGIN', `${artifact.name} is encrypted with "${method}" and no stage of this pipeline decrypts it`, {
      hint: `The set is not damaged. Add the \`${method}\` stage (with its restore-time options, such as a key file) to the pipeline.`,
    });
  }
  const digest = await hashFile(decrypted.path, ctx.signal);
  if (digest.sha256 !== artifact.plain.sha256 || digest.bytes !== artifact.plain.bytes) {
    await rm(decrypted.path, { force: true });
    throw new PipelineError('CHECKSUM_MISMATCH', `${artifact.name} decrypts to content that does not match the manifest (sha256 ${digest.sha256.slice(0, 16)}…)`);
  }
  if (decrypted.path !== artifact.path) await rm(artifact.path, { force: true });
  const { encryption: _e, plain: _p, ...rest } = artifact;
  return { ...rest, name: artifact.plain.name, path: decrypted.path, bytes: digest.bytes, sha256: digest.sha256 };
}

export interface RestoreRequestOptions {
  /** A set id or `latest`. */
  set: string;
  /** Restore the database artifact into this database. */
  database?: string;
  /** Write the other artifacts (files, env) into this folder. */
  filesTo?: string;
  /** Replay roles and tablespaces (globals artifact). */
  globals?: boolean;
  jobs?: number;
  /**
   * The database exists and has tables: restore into a fresh database, check it, then swap names,
   * keeping the previous one as `<name>_before_<set-id>`.
   */
  clean?: boolean;
}

export interface RestoreResult {
  setId: string;
  from: string;
  reports: RestoreReport[];
  /** With `--clean`: the name the previous database now has. */
  previousDatabase?: string;
  durationMs: number;
}

const q = (ctx: Pick<RunContext, 'signal' | 'secrets'>, database = 'postgres') => ({ signal: ctx.signal, secrets: ctx.secrets, database });

async function tableCount(pg: PgSource, database: string, ctx: RunContext): Promise<number> {
  const [[tables] = ['0']] = await psql(
    pg,
    `SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'`,
    q(ctx, database),
  );
  return Number(tables);
}

async function createDatabase(pg: PgSource, database: string, ctx: RunContext): Promise<void> {
  await psql(pg, `CREATE DATABASE ${quoteIdent(database)} TEMPLATE template0`, q(ctx)).catch((error: unknown) => {
    throw new PipelineError('RESTORE_TARGET_UNAVAILABLE', `cannot create database ${database} as ${pg.user}: ${(error as Error).message}`, {
      hint: `Create it first (createdb -T template0 -O ${pg.user} ${database}) or grant CREATEDB to ${pg.user}.`,
    });
  });
}

async function dropDatabase(pg: PgSource, database: string, ctx: RunContext): Promise<void> {
  // Not with the command's signal: this cleanup must also run after an interruption.
  await psql(pg, `DROP DATABASE IF EXISTS ${quoteIdent(database)} WITH (FORCE)`, { secrets: ctx.secrets, database: 'postgres' }).catch((error: unknown) => {
    ctx.log.warn({ database }, `could not drop ${database}, which this restore created: ${(error as Error).message}; drop it by hand`);
  });
}

/** Where the database artifact goes, and what to do with it afterwards. */
interface DatabasePlan {
  /** The database pg_restore writes into. */
  into: string;
  /** This restore created `into` (dropped again when the restore fails). */
  created: boolean;
  /** `--clean` over a database with tables: after the check, `target` becomes `keptAs` and `into` becomes `target`. */
  swap?: { target: string; keptAs: string };
}

async function planDatabase(pg: PgSource, target: string, clean: boolean, setId: string, ctx: RunContext): Promise<DatabasePlan> {
  if (SYSTEM_DATABASES.includes(target)) {
    throw new PipelineError('RESTORE_TARGET_REFUSED', `refusing to restore into ${target}: it is one of PostgreSQL's own databases`, {
      hint: 'Restore into a database of its own (e.g. --to mastodon_production).',
    });
  }
  const exists = (await psql(pg, `SELECT 1 FROM pg_database WHERE datname = ${quoteLiteral(target)}`, q(ctx))).length > 0;
  if (!exists) {
    await createDatabase(pg, target, ctx);
    return { into: target, created: true };
  }
  const tables = await tableCount(pg, target, ctx);
  if (tables === 0) return { into: target, created: false };
  if (!clean) {
    throw new PipelineError('RESTORE_TARGET_NOT_EMPTY', `database ${target} already has ${tables} tables; refusing to restore over it`, {
      hint: 'Restore into a new database name, or pass --clean to restore into a fresh database and swap it in (the current one is kept, renamed).',
    });
  }
  const keptAs = `${target}_before_${setId}`;
  const fresh = `${target}_restoring_${randomBytes(3).toString('hex')}`;
  for (const name of [keptAs, fresh]) {
    if (Buffer.byteLength(name) > 63) {
      throw new PipelineError('RESTORE_TARGET_REFUSED', `--clean needs the database name ${name}, longer than PostgreSQL's 63 bytes`, { hint: 'Restore into a shorter database name.' });
    }
  }
  if ((await psql(pg, `SELECT 1 FROM pg_database WHERE datname = ${quoteLiteral(keptAs)}`, q(ctx))).length > 0) {
    throw new PipelineError('RESTORE_TARGET_REFUSED', `a database named ${keptAs} already exists (kept by an earlier --clean restore of this set)`, {
      hint: `Drop it when you no longer need it (dropdb ${keptAs}), then run again.`,
    });
  }
  await createDatabase(pg, fresh, ctx);
  return { into: fresh, created: true, swap: { target, keptAs } };
}

/**
 * `target` → `keptAs`, then the freshly restored database → `target`, in one transaction: either
 * both names change or neither does.
 */
async function swapDatabases(pg: PgSource, plan: DatabasePlan, ctx: RunContext): Promise<void> {
  const { target, keptAs } = plan.swap!;
  await psql(pg, `BEGIN; ALTER DATABASE ${quoteIdent(target)} RENAME TO ${quoteIdent(keptAs)}; ALTER DATABASE ${quoteIdent(plan.into)} RENAME TO ${quoteIdent(target)}; COMMIT;`, q(ctx)).catch(
    (error: unknown) => {
      throw new PipelineError('RESTORE_SWAP_FAILED', `the restored database could not take the name ${target}: ${(error as Error).message}`, {
        hint: `${target} is unchanged. Stop what is connected to it (Mastodon's web, sidekiq and streaming services), then run the restore again.`,
        cause: error,
      });
    },
  );
}

/** Restores the located set: fetch (with fallback) → decrypt → restore each wanted artifact. */
export async function restoreStoredSet(hooks: PipelineHooks, located: LocatedSet, request: RestoreRequestOptions, ctx: RestoreContext): Promise<RestoreResult> {
  const started = Date.now();
  const entries = located.manifest.artifacts;
  const database = entries.find((a) => a.kind === 'database');
  const globals = entries.find((a) => a.kind === 'globals');
  const others = entries.filter((a) => a.kind !== 'database' && a.kind !== 'globals');
  if (request.database && !database) throw new PipelineError('SET_NOT_RESTORABLE', `set ${located.id} holds no database dump (${entries.map((a) => a.name).join(', ')})`);
  if (request.globals && !globals) throw new PipelineError('SET_NOT_RESTORABLE', `set ${located.id} holds no globals dump (enable \`globals: true\` in the dump stage)`);
  const wanted = [...(request.globals && globals ? [globals] : []), ...(request.database && database ? [database] : []), ...(request.filesTo ? others : [])];
  if (wanted.length === 0) throw new PipelineError('USAGE', 'nothing to restore: give a database (--to), a folder (--files-to) or --globals');
  checkPlugins(hooks, wanted, false);
  const needRestore = wanted.filter((a) => a.kind === 'database' || a.kind === 'globals');
  checkPlugins(hooks, needRestore, true);
  if (needRestore.length > 0 && !ctx.pg) {
    throw new PipelineError('CREDENTIALS_MISSING', `pipeline "${ctx.pipeline}" has no credentials stage to connect with`, { hint: 'Add `- use: credentials` to it.' });
  }

  // The dump goes from its stream into the server when its plugin restores from a stream; the
  // other artifacts (and a dump whose plugin reads only files) become checked plaintext files first.
  const streamedDump = request.database && database && hooks.restoreStream.get(database.format)?.taps.length ? database : undefined;
  const early = wanted.filter((a) => a !== streamedDump);
  const fetched = early.length > 0 ? await fetchArtifacts(hooks, located, early, ctx, { fallback: true }) : undefined;
  const plain: Artifact[] = fetched?.artifacts ?? [];
  let from = fetched?.from.name ?? '';

  const reports: RestoreReport[] = [];
  const jobs = request.jobs ?? 2;
  for (const artifact of plain.filter((a) => a.kind === 'globals')) reports.push(await ctx.restore(artifact, { globals: true, jobs }));

  // Files before the database: a folder that cannot take them fails the restore before a database is created.
  if (request.filesTo) {
    await mkdir(request.filesTo, { recursive: true, mode: 0o700 });
    for (const artifact of plain.filter((a) => a.kind !== 'database' && a.kind !== 'globals')) {
      const report = hooks.restore.get(artifact.format)?.taps.length ? await ctx.restore(artifact, { directory: request.filesTo, jobs }) : undefined;
      if (report) {
        reports.push(report);
        continue;
      }
      // No plugin restores this format: the (decrypted) file itself, never over an existing one.
      const to = pathInSet(request.filesTo, artifact.name);
      await copyFile(artifact.path, to, constants.COPYFILE_EXCL).catch((error: unknown) => {
        // Only an existing file is the target's fault; a full disk or a read-only folder says so.
        if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw fileSystemError(error, to);
        throw new PipelineError('RESTORE_TARGET_NOT_EMPTY', `${to} already exists; not overwritten`, { hint: 'Restore into an empty folder.' });
      });
      reports.push({ artifact: artifact.name, into: request.filesTo, files: [artifact.name], mismatches: [], durationMs: 0 });
    }
  }
  let previousDatabase: string | undefined;
  const dump = streamedDump ?? plain.find((a) => a.kind === 'database' && request.database);
  if (dump) {
    const pg = ctx.pg!;
    const plan = await planDatabase(pg, request.database!, !!request.clean, located.id, ctx);
    let ok = false;
    try {
      const target: RestoreTarget = { database: plan.into, jobs, clean: !!request.clean && !plan.swap && !plan.created };
      ctx.progress({ plugin: 'core', task: 'restore', message: `${dump.name} → ${plan.into}` });
      let report: RestoreReport;
      if (streamedDump) {
        // The holder the other artifacts came from first, then the rest in their order.
        const holders = [...located.holders].sort((a, b) => Number(b.name === from) - Number(a.name === from));
        const streamed = await restoreDumpStreamed(hooks, located, streamedDump, target, plan, holders, ctx);
        report = streamed.value;
        from = streamed.from.name;
      } else {
        report = await ctx.restore(dump as Artifact, target);
      }
      if (report.mismatches.length > 0) {
        throw new PipelineError('RESTORE_MISMATCH', `the restored row counts differ from the dump's snapshot: ${report.mismatches.slice(0, 3).join('; ')}`, {
          hint: plan.swap ? `${plan.swap.target} was left as it was.` : 'Do not use this database; check the server log and the dump.',
          details: { report },
        });
      }
      if (plan.swap) {
        await swapDatabases(pg, plan, ctx);
        previousDatabase = plan.swap.keptAs;
        report.into = plan.swap.target;
        ctx.log.info({ database: plan.swap.target, previous: previousDatabase }, `${plan.swap.target} is the restored database; the previous one is kept as ${previousDatabase}`);
      }
      reports.push(report);
      ok = true;
    } finally {
      if (!ok && plan.created) await dropDatabase(pg, plan.into, ctx);
    }
  }

  return { setId: located.id, from, reports, previousDatabase, durationMs: Date.now() - started };
}

/** Fetches and decrypts every artifact of the located set (checked plaintext files), then runs the `verify` hook on each. */
export async function verifyStoredSet(hooks: PipelineHooks, located: LocatedSet, ctx: RestoreContext): Promise<{ setId: string; from: string; artifacts: Artifact[] }> {
  const entries = located.manifest.artifacts;
  checkPlugins(hooks, entries, false);
  // Verifying is about this copy: a bad one is the finding, not a reason to look elsewhere.
  const fetched = await fetchArtifacts(hooks, located, entries, ctx, { fallback: false });
  const artifacts: Artifact[] = [];
  for (const plain of fetched.artifacts) {
    await hooks.verify.promise(plain, ctx);
    artifacts.push(plain);
  }
  return { setId: located.id, from: fetched.from.name, artifacts };
}

