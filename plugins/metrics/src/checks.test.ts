import { describe, expect, it } from 'vitest';
import { renderCheck, renderMetrics } from './index.js';
import type { RunSummary } from '@backup-pipeline/core';

const run = (ok: boolean): RunSummary => ({ pipeline: 'nightly', setId: 'x', ok, startedAt: '2026-12-01T00:00:00Z', durationMs: 1000, artifacts: [], destinations: [], stages: [] });

describe('metrics of the restore half', () => {
  it('a verify writes its timestamp and status, keeping the runs\' samples; a later run keeps the verify samples', () => {
    const afterRun = renderMetrics({ pipeline: 'nightly', summary: run(true), endedAt: new Date(1_000_000_000) });
    const afterVerify = renderCheck({ pipeline: 'nightly', kind: 'verify', ok: false, endedAt: new Date(2_000_000_000), previous: afterRun });
    expect(afterVerify).toContain('backup_pipeline_last_verify_status{pipeline="nightly"} 0');
    expect(afterVerify).toContain('backup_pipeline_last_verify_timestamp_seconds{pipeline="nightly"} 2000000');
    expect(afterVerify).toContain('backup_pipeline_last_run_status{pipeline="nightly"} 1');
    const again = renderCheck({ pipeline: 'nightly', kind: 'verify', ok: true, endedAt: new Date(3_000_000_000), previous: afterVerify });
    expect(again.match(/backup_pipeline_last_verify_status\{/g)).toHaveLength(1);
    const nextRun = renderMetrics({ pipeline: 'nightly', summary: run(false), endedAt: new Date(4_000_000_000), previous: again });
    expect(nextRun).toContain('backup_pipeline_last_verify_status{pipeline="nightly"} 1');
    expect(nextRun).toContain('backup_pipeline_last_run_status{pipeline="nightly"} 0');
  });
});
