/**
 * The secrets registry: every password, passphrase or key a run handles is added here, and every
 * log line, error message, displayed argv and manifest goes through `mask` before it leaves.
 */
export const MASK = '***';

export class SecretRegistry {
  readonly #values = new Set<string>();

  add(value: string | undefined | null): void {
    if (!value) return;
    this.#values.add(value);
    // The same value as it appears inside a JSON string, and URL-encoded (connection URLs).
    const json = JSON.stringify(value).slice(1, -1);
    if (json !== value) this.#values.add(json);
    const url = encodeURIComponent(value);
    if (url !== value) this.#values.add(url);
  }

  get size(): number {
    return this.#values.size;
  }

  has(text: string): boolean {
    for (const value of this.#values) if (text.includes(value)) return true;
    return false;
  }

  mask(text: string): string {
    if (this.#values.size === 0 || !text) return text;
    // Longest first, so a secret containing another is masked whole.
    const values = [...this.#values].sort((a, b) => b.length - a.length);
    let out = text;
    for (const value of values) out = out.split(value).join(MASK);
    return out;
  }

  /** Masks every string inside a JSON-compatible value (for manifests and --json output). */
  maskDeep<T>(value: T): T {
    if (this.#values.size === 0) return value;
    return JSON.parse(this.mask(JSON.stringify(value))) as T;
  }
}
