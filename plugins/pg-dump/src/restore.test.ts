import { describe, expect, it } from 'vitest';
import { restoreSessionOptions } from './restore.js';

describe('restoreSessionOptions', () => {
  it('turns off PostgreSQL\'s parallel index builds only when pg_restore runs jobs of its own', () => {
    expect(restoreSessionOptions(1)).toBe('-c maintenance_work_mem=256MB -c synchronous_commit=off');
    expect(restoreSessionOptions(2)).toBe('-c maintenance_work_mem=256MB -c synchronous_commit=off -c max_parallel_maintenance_workers=0');
  });

  it('leaves memory and durability to a drill\'s throwaway cluster, which is configured for them', () => {
    expect(restoreSessionOptions(1, true)).toBeUndefined();
    expect(restoreSessionOptions(4, true)).toBe('-c max_parallel_maintenance_workers=0');
  });
});
