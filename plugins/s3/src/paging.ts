import { PipelineError } from '@backup-pipeline/core';

/**
 * The token of the next page. A page that says it is truncated but gives no token would end the
 * listing early, and a set whose manifest was on a later page would look partial (and be swept
 * by retention): that is an error, never a short list.
 */
export function nextPage(page: { IsTruncated?: boolean; NextContinuationToken?: string }, what: string): string | undefined {
  if (!page.IsTruncated) return undefined;
  if (!page.NextContinuationToken) throw new PipelineError('DESTINATION_FAILED', `${what}: the server said the list goes on but gave no continuation token`, { hint: 'The S3 service answered ListObjectsV2 out of protocol; nothing was deleted. Check the endpoint is S3-compatible.' });
  return page.NextContinuationToken;
}
