/**
 * Proof that a stranger can write a stage that takes part in restore: a plugin package created
 * here, in a temp folder outside the repository, encrypting with `openssl enc` (the key in a file,
 * never in argv), using only the public API of @backup-pipeline/core, loaded by name from the
 * config (`use: openssl` → backup-pipeline-plugin-openssl), round-trips a real database through
 * run → list → restore → verify. It is the worked example of docs/plugins.md.
 */
import { mkdir, readdir, readFile, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tableChecksums } from '@backup-pipeline/testing';
import { mastodonHost, pipeline, ROOT, writeConfig, writeMastodonConfig, type MastodonHost } from './support.js';

/** The whole plugin, as its author would publish it. */
export const OPENSSL_PLUGIN = `import { dirname, join } from 'node:path';
import { rm, stat } from 'node:fs/promises';
import { definePlugin, hashFile, PipelineError, writeFileAtomic, z } from '@backup-pipeline/core';

const METHOD = 'openssl-aes-256-cbc';

export default definePlugin({
  name: 'openssl',
  description: 'Encrypts every artifact with openssl enc (AES-256-CBC, PBKDF2); the key is read from a file.',
  options: z.object({ keyFile: z.string().min(1).describe('File holding the key (passphrase) for openssl -pass file:') }).strict(),
  apply(hooks, options, api) {
    const keyFile = api.resolvePath(options.keyFile);
    const pass = ['-pass', \`file:\${keyFile}\`]; // the path is in argv, never the key
    // openssl writes to stdout; the core's atomic writer makes the file (0600, fsync, rename) and hashes it.
    const opensslToFile = async (ctx, args, to) => {
      const child = ctx.exec('openssl', args, { stdout: 'stream', label: 'openssl enc', writes: to });
      const [digest] = await Promise.all([writeFileAtomic(to, child.stdout, { signal: ctx.signal }), child]);
      return digest;
    };

    hooks.preflight.tapPromise(api.name, async (ctx) => {
      if (!(await stat(keyFile).catch(() => undefined))?.isFile()) {
        throw new PipelineError('OPENSSL_KEY_MISSING', \`key file \${keyFile} does not exist\`, { hint: 'Create it (openssl rand -base64 32 > key; chmod 600 key).' });
      }
      ctx.tools.openssl = (await ctx.exec('openssl', ['version'])).stdout.trim();
    });

    hooks.transform.tapPromise(api.name, async (artifact, ctx) => {
      if (artifact.encryption) return artifact;
      const name = \`\${artifact.name}.enc\`;
      const path = join(dirname(artifact.path), name);
      const digest = await opensslToFile(ctx, ['enc', '-aes-256-cbc', '-pbkdf2', '-salt', ...pass, '-in', artifact.path], path);
      await rm(artifact.path);
      return {
        ...artifact,
        name,
        path,
        bytes: digest.bytes,
        sha256: digest.sha256,
        encryption: { method: METHOD, recipients: [], symmetric: true },
        plain: { name: artifact.name, bytes: artifact.bytes, sha256: artifact.sha256 },
      };
    });

    // The restore half: the core asks hooks.decrypt.get(METHOD) and checks the result against plain.sha256.
    hooks.decrypt.for(METHOD).tapPromise(api.name, async (artifact, ctx) => {
      const to = join(ctx.tmpDir, \`plain-\${artifact.plain.name}\`);
      const digest = await opensslToFile(ctx, ['enc', '-d', '-aes-256-cbc', '-pbkdf2', ...pass, '-in', artifact.path], to);
      return { ...artifact, name: artifact.plain.name, path: to, bytes: digest.bytes, sha256: digest.sha256, encryption: undefined, plain: undefined };
    });
  },
});
`;

let host: MastodonHost;

beforeAll(async () => {
  host = await mastodonHost();
  // The plugin package, installed beside the config the way `npm install` would, next to the core it shares.
  const modules = join(host.dir, 'node_modules');
  const pkg = join(modules, 'backup-pipeline-plugin-openssl');
  await mkdir(pkg, { recursive: true });
  await writeFile(
    join(pkg, 'package.json'),
    JSON.stringify({ name: 'backup-pipeline-plugin-openssl', version: '1.0.0', type: 'module', exports: { '.': { default: './index.js' } }, peerDependencies: { '@backup-pipeline/core': '*' } }, null, 2),
  );
  await writeFile(join(pkg, 'index.js'), OPENSSL_PLUGIN);
  await mkdir(join(modules, '@backup-pipeline'), { recursive: true });
  await symlink(join(ROOT, 'packages', 'core'), join(modules, '@backup-pipeline', 'core'));
  await writeFile(join(host.dir, 'openssl.key'), 'a long random key, kept in a file\n', { mode: 0o600 });
  await writeMastodonConfig(host.dir, {
    nightly: [
      { use: 'credentials', envFile: host.envFile },
      { use: 'pg-dump' },
      { use: 'verify', expectTables: ['accounts'] },
      { use: 'openssl', keyFile: './openssl.key' },
      { use: 'retention', keepLast: 3 },
    ],
  });
});

afterAll(async () => {
  await host?.pg.stop();
});

describe('a third-party encryption plugin from outside the repository', () => {
  it('round-trips a real database: run → list → restore → verify', async () => {
    expect(host.dir.startsWith(ROOT)).toBe(false);
    const run = await pipeline(['run'], host.dir);
    expect(run.exitCode, run.stderr).toBe(0);
    expect(run.stderr).not.toContain('a long random key');

    const set = (await readdir(join(host.dir, 'folder'))).sort().at(-1)!;
    expect((await readdir(join(host.dir, 'folder', set))).sort()).toEqual(['manifest.json', 'mastodon_production.dump.zst.enc']);
    const manifest = await readFile(join(host.dir, 'folder', set, 'manifest.json'), 'utf8');
    expect(manifest).toContain('"method": "openssl-aes-256-cbc"');

    const list = await pipeline(['list', '--json'], host.dir);
    expect(list.exitCode, list.stderr).toBe(0);
    const listed = JSON.parse(list.stdout) as Array<{ sets: Array<{ complete: boolean; encrypted: boolean }> }>;
    expect(listed.every((d) => d.sets.length > 0 && d.sets.every((s) => s.complete && s.encrypted))).toBe(true);

    const restore = await pipeline(['restore', 'latest', '--to', 'restored_openssl'], host.dir);
    expect(restore.exitCode, restore.stderr).toBe(0);
    expect(await tableChecksums(host.pg, 'restored_openssl')).toEqual(await tableChecksums(host.pg, host.database));

    const verify = await pipeline(['verify', 'latest', '--from', 'folder', '--restore-test'], host.dir);
    expect(verify.exitCode, verify.stderr).toBe(0);
    expect(verify.stdout).toMatch(/restore drill: \d+ tables/);

    // Listed with its real package name, and the hooks its apply taps with the configured options.
    const plugins = JSON.parse((await pipeline(['plugins', '--json'], host.dir)).stdout) as Array<{ name: string; package: string; hooks: string[] }>;
    expect(plugins.find((p) => p.name === 'openssl')).toMatchObject({ package: 'backup-pipeline-plugin-openssl', hooks: ['preflight', 'transform', 'decrypt[openssl-aes-256-cbc]'] });
  });

  it('survives retention like any other set: counted as complete, the newest kept, the older pruned', async () => {
    await new Promise((r) => setTimeout(r, 1100));
    const again = await pipeline(['run'], host.dir);
    expect(again.exitCode, again.stderr).toBe(0);
    const [older, newest] = (await readdir(join(host.dir, 'folder'))).sort();
    const config = JSON.parse(await readFile(join(host.dir, 'pipeline.config.json'), 'utf8'));
    config.pipelines.nightly.stages.at(-1).keepLast = 1;
    await writeConfig(host.dir, config);
    const prune = await pipeline(['prune'], host.dir);
    expect(prune.exitCode, prune.stderr).toBe(0);
    expect(prune.stdout).toContain(`deleted ${older}`);
    expect(await readdir(join(host.dir, 'folder'))).toEqual([newest]);
    const restore = await pipeline(['restore', 'latest', '--to', 'restored_openssl_after_prune'], host.dir);
    expect(restore.exitCode, restore.stderr).toBe(0);
  });
});
