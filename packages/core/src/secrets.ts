/**
 * The secrets registry: every password, passphrase or key a run handles is added here, and every
 * log line, error message and displayed argv goes through `mask` before it leaves. Files the product
 * reads back (manifests) are never masked: secrets are kept out of them by construction.
 */
export const MASK = '***';

/**
 * Set ids (`20261201T014500Z-mastodon`) are public by construction — a time and the configured
 * source name — and are never masked.
 */
const SET_ID_TOKEN = /\d{8}T\d{6}(?:\d{3})?Z-[A-Za-z0-9][A-Za-z0-9_-]*/g;

export class SecretRegistry {
  readonly #values = new Set<string>();

  add(value: string | undefined | null): void {
    if (!value) return;
    this.#values.add(value);
    // The same value as it appears inside a JSON string, and URL-encoded (connection URLs).
    const json = JSON.stringify(value).slice(1, -1);
    if (json !== value) {
      this.#values.add(json);
      // A JSON-escaped value inside a JSON log line is escaped twice.
      this.#values.add(JSON.stringify(json).slice(1, -1));
    }
    const url = encodeURIComponent(value);
    if (url !== value) this.#values.add(url);
  }

  get size(): number {
    return this.#values.size;
  }

  /** Whether `value` is, as a whole, a registered secret. */
  isSecret(value: string): boolean {
    return value !== '' && this.#values.has(value);
  }

  has(text: string): boolean {
    for (const value of this.#values) if (text.includes(value)) return true;
    return false;
  }

  mask(text: string): string {
    if (this.#values.size === 0 || !text) return text;
    // Longest first, so a secret containing another is masked whole.
    const values = [...this.#values].sort((a, b) => b.length - a.length);
    const maskPart = (part: string) => {
      for (const value of values) part = part.split(value).join(MASK);
      return part;
    };
    // Set ids stay whole, so a person can copy them into `restore` even when a weak password
    // equals the source name they end with.
    let out = '';
    let last = 0;
    for (const m of text.matchAll(SET_ID_TOKEN)) {
      out += maskPart(text.slice(last, m.index)) + m[0];
      last = m.index + m[0].length;
    }
    return out + maskPart(text.slice(last));
  }

  /** Masks every string inside a JSON-compatible value, for display (--json output, notifications); never for files read back. */
  maskDeep<T>(value: T): T {
    if (this.#values.size === 0) return value;
    return JSON.parse(this.mask(JSON.stringify(value))) as T;
  }
}
