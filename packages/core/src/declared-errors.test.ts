/** declaredErrors: a plugin's own codes raised with the hint it declared for each, and no code it did not declare. */
import { describe, expect, expectTypeOf, it } from 'vitest';
import { declaredErrors, EXIT, isPipelineError, type PipelineError } from './index.js';

const HINTS = {
  DEMO_KEY_MISSING: 'Create the key file.',
  DEMO_FAILED: 'See the tool\'s message above.',
} as const;
const demoError = declaredErrors(HINTS);

describe('declaredErrors', () => {
  it.each(Object.entries(HINTS) as Array<[keyof typeof HINTS, string]>)('%s carries its declared hint', (code, hint) => {
    const error = demoError(code, 'it went wrong');
    expect(isPipelineError(error)).toBe(true);
    expect(error).toMatchObject({ code, message: 'it went wrong', hint, exitCode: EXIT.failed });
  });

  it('keeps the cause and the details it is given', () => {
    const cause = new Error('underneath');
    const error = demoError('DEMO_FAILED', 'the tool failed', { cause, details: { exitCode: 3 } });
    expect(error.cause).toBe(cause);
    expect(error.details).toEqual({ exitCode: 3 });
    expect(error.hint).toBe(HINTS.DEMO_FAILED);
  });

  it('accepts only the declared codes, and never a hint of the caller\'s own', () => {
    expectTypeOf(demoError).returns.toEqualTypeOf<PipelineError>();
    // @ts-expect-error: not a code of this plugin
    demoError('DEMO_UNKNOWN', 'no such code');
    // @ts-expect-error: the hint is the declared one
    demoError('DEMO_FAILED', 'message', { hint: 'another hint' });
  });
});
