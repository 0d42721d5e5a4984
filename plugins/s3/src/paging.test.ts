import { describe, expect, it } from 'vitest';
import { nextPage } from './paging.js';

describe('listing pages', () => {
  it('goes on with the token, stops at the last page, and refuses a truncated page without a token', () => {
    expect(nextPage({ IsTruncated: true, NextContinuationToken: 'abc' }, 'listing sets')).toBe('abc');
    expect(nextPage({ IsTruncated: false, NextContinuationToken: 'ignored' }, 'listing sets')).toBeUndefined();
    expect(nextPage({}, 'listing sets')).toBeUndefined();
    expect(() => nextPage({ IsTruncated: true }, 'listing sets on s3://b/p/')).toThrow(/listing sets on s3:\/\/b\/p\/: the server said the list goes on but gave no continuation token/);
  });
});
