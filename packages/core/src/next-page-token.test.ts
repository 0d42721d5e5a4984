import { describe, expect, it } from 'vitest';
import { nextPageToken } from './destination.js';

describe('listing pages', () => {
  it('goes on with the token, stops at the last page, and refuses a truncated page without a token', () => {
    expect(nextPageToken({ truncated: true, token: 'abc' }, 'listing sets')).toBe('abc');
    expect(nextPageToken({ truncated: false, token: 'ignored' }, 'listing sets')).toBeUndefined();
    expect(nextPageToken({}, 'listing sets')).toBeUndefined();
    expect(() => nextPageToken({ truncated: true }, 'listing sets on s3://b/p/')).toThrow(/listing sets on s3:\/\/b\/p\/: the server said the list goes on but gave no continuation token/);
  });
});
