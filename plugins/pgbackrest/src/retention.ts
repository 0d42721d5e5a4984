/**
 * One retention, not two. pgBackRest is configured never to expire on its own
 * (repo1-retention-full 9999999); the pipeline's retention stage decides which sets stay. After it
 * ran, this expires (`pgbackrest expire --set=LABEL`) every backup that no remaining set needs:
 *
 * - needed = the label of every pgbackrest record of this stanza in any set still listed by any
 *   destination or the work dir (complete, damaged — a damaged set is kept for a person, so is its
 *   backup — or partial-but-named), plus every backup those build on (their full, and for an incr
 *   the backups between: info's `reference`);
 * - only backups older than the newest needed one are candidates (a backup made by a run that has
 *   not written its manifest yet, or by hand after it, is left alone);
 * - oldest first: expiring a full also expires the diff/incr built on it, which are not needed
 *   either (or their full would be). WAL older than the oldest remaining backup goes with
 *   pgBackRest's expire (archive retention follows the backups).
 *
 * When any listing fails, or a set's manifest cannot be read, nothing is expired: a set that could
 * not be seen, or read, may need any backup.
 */
import { listSets, type RetainReport, type RunContext } from '@backup-pipeline/core';
import { RETENTION_FULL_NEVER, type Pgbackrest } from './command.js';
import { dependencies, type InfoBackup, type InfoStanza } from './info.js';
import type { PgbackrestOptions } from './options.js';
import { recordOf } from './record.js';

export interface ExpirePlan {
  keep: Array<{ id: string; reasons: string[] }>;
  expire: Array<{ id: string; reasons: string[] }>;
}

/** Which backups to expire, given the labels the remaining sets reference (pure). */
export function planExpire(backups: readonly InfoBackup[], referenced: ReadonlyMap<string, string[]>): ExpirePlan {
  const byLabel = new Map(backups.map((b) => [b.label, b]));
  const needed = new Map<string, string[]>();
  for (const [label, sets] of referenced) {
    const b = byLabel.get(label);
    needed.set(label, [...(needed.get(label) ?? []), ...sets.map((s) => `recorded by set ${s}`)]);
    for (const dep of b ? dependencies(b) : []) needed.set(dep, [...(needed.get(dep) ?? []), `${label} builds on it`]);
  }
  const newestNeeded = Math.max(...backups.filter((b) => needed.has(b.label)).map((b) => b.timestamp.stop), -Infinity);
  const keep: ExpirePlan['keep'] = [];
  const expire: ExpirePlan['expire'] = [];
  for (const b of [...backups].sort((x, y) => x.timestamp.stop - y.timestamp.stop)) {
    const reasons = needed.get(b.label);
    if (reasons) keep.push({ id: b.label, reasons: [...new Set(reasons)] });
    else if (!Number.isFinite(newestNeeded)) keep.push({ id: b.label, reasons: ['no set records any backup of this stanza: nothing is expired'] });
    else if (b.timestamp.stop >= newestNeeded) keep.push({ id: b.label, reasons: ['newer than the newest backup a set records'] });
    else expire.push({ id: b.label, reasons: ['no remaining set needs it'] });
  }
  // Expiring a backup expires what builds on it: never one that a kept backup builds on.
  const keptNeeds = new Map<string, string>();
  for (const k of keep) for (const dep of byLabel.get(k.id) ? dependencies(byLabel.get(k.id)!) : []) keptNeeds.set(dep, k.id);
  for (const e of [...expire]) {
    const by = keptNeeds.get(e.id);
    if (by === undefined) continue;
    expire.splice(expire.indexOf(e), 1);
    keep.push({ id: e.id, reasons: [`${by} builds on it`] });
  }
  return { keep, expire };
}

export async function expireUnreferenced(ctx: RunContext, cmd: Pgbackrest, options: PgbackrestOptions, info: (ctx: RunContext) => Promise<InfoStanza>): Promise<RetainReport> {
  const destination = `pgbackrest ${options.stanza}`;
  const dryRun = ctx.dryRun;
  const referenced = new Map<string, string[]>();
  for (const target of [...ctx.destinations, ctx.work]) {
    let sets;
    try {
      sets = await listSets(target.destination, { scratchDir: ctx.tmpDir });
    } catch (error) {
      ctx.log.warn({ destination: target.name }, `cannot list "${target.name}" (${(error as Error).message}): no pgBackRest backup is expired this time`);
      return { destination, dryRun, keep: [], delete: [], deleted: [], failed: [] };
    }
    for (const set of sets) {
      if (set.state === 'damaged' && !set.manifest) {
        // Kept for a person, and which backup it records is unknown: it may be any of them.
        ctx.log.warn({ destination: target.name, setId: set.id }, `set ${set.id} in "${target.name}" is damaged (${set.problem}): no pgBackRest backup is expired until a person looks at it`);
        return { destination, dryRun, keep: [], delete: [], deleted: [], failed: [] };
      }
      for (const artifact of set.manifest?.artifacts ?? []) {
        const record = recordOf(artifact);
        if (record?.stanza !== options.stanza) continue;
        referenced.set(record.label, [...new Set([...(referenced.get(record.label) ?? []), set.id])]);
      }
    }
  }
  const now = await info(ctx);
  const plan = planExpire(now.backup, referenced);
  const deleted: string[] = [];
  const failed: RetainReport['failed'] = [];
  let gone = new Set<string>();
  for (const { id, reasons } of plan.expire) {
    if (gone.has(id)) {
      deleted.push(id);
      continue;
    }
    if (dryRun) {
      ctx.log.info({ stanza: options.stanza, label: id, dryRun: true }, `would expire pgBackRest backup ${id}: ${reasons.join('; ')}`);
      continue;
    }
    try {
      await cmd.run([`--repo1-retention-full=${RETENTION_FULL_NEVER}`, `--set=${id}`, 'expire']);
      deleted.push(id);
      ctx.log.info({ stanza: options.stanza, label: id }, `expired pgBackRest backup ${id}: ${reasons.join('; ')}`);
      // Its dependents went with it.
      const left = new Set((await info(ctx)).backup.map((b) => b.label));
      gone = new Set(now.backup.map((b) => b.label).filter((l) => !left.has(l)));
    } catch (error) {
      failed.push({ id, error: (error as Error).message });
    }
  }
  // WAL: with repo1-retention-full never reached, pgBackRest expires no WAL on its own. Keep the
  // WAL of every remaining full backup and after it (archive retention = the number of fulls);
  // what each backup needs to be consistent is always kept by pgBackRest, and no backup is
  // expired by this (repo1-retention-full stays "never").
  if (!dryRun && deleted.length > 0 && failed.length === 0) {
    const fulls = (await info(ctx)).backup.filter((b) => b.type === 'full').length;
    if (fulls > 0) {
      try {
        await cmd.run([`--repo1-retention-full=${RETENTION_FULL_NEVER}`, `--repo1-retention-archive=${fulls}`, '--repo1-retention-archive-type=full', 'expire']);
      } catch (error) {
        failed.push({ id: 'WAL archive', error: (error as Error).message });
      }
    }
  }
  return { destination, dryRun, keep: plan.keep, delete: plan.expire, deleted, failed };
}
