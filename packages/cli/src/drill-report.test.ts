/** The per-part restore drill report of `pipeline verify --restore-test` (pure). */
import { describe, expect, it } from 'vitest';
import { drillReport } from './commands/verify.js';

const drill = (part: string, durationMs: number) => ({ part, bytes: 10, durationMs, detail: `${part} ok` });

describe('drillReport', () => {
  it('every part drilled: complete, times summed', () => {
    const r = drillReport([
      { name: 'db.dump', kind: 'database', format: 'pg-custom', drill: drill('database', 100) },
      { name: 'secrets.tar', kind: 'secrets', format: 'tar', drill: drill('secrets', 5) },
      { name: 'media.tar', kind: 'files', format: 'tar', drill: drill('media', 7) },
      { name: 'redis.rdb', kind: 'redis', format: 'redis-rdb', drill: drill('redis', 20) },
    ]);
    expect(r).toMatchObject({ missing: [], totalMs: 132, complete: true });
    expect(r.parts.map((p) => [p.part, p.restored])).toEqual([['database', true], ['secrets', true], ['media', true], ['redis', true]]);
  });

  it('a part without a drill is NOT drilled, named by its kind; parts absent from the set are listed', () => {
    const r = drillReport([
      { name: 'db.dump', kind: 'database', format: 'pg-custom', drill: drill('database', 100) },
      { name: 'bucket-copy.jsonl', kind: 'media-bucket', format: 'bucket-copy-index' },
    ]);
    expect(r.complete).toBe(false);
    expect(r.missing).toEqual(['secrets', 'redis']);
    expect(r.parts[1]).toEqual({ part: 'media', artifact: 'bucket-copy.jsonl', restored: false, detail: 'checksum checked; no stage of this pipeline drills format "bucket-copy-index"' });
    expect(r.totalMs).toBe(100);
  });
});
