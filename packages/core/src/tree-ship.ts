/**
 * Shipping a tree artifact (see tree.ts) to one destination: the runner calls this before it puts
 * the artifact's own file (the index), so a destination holds the index only once the tree is there.
 */
import type { Artifact, RunContext } from './context.js';
import { storesTrees, type NamedDestination } from './destination.js';
import { PipelineError } from './errors.js';
import { readTreeIndex, type TreePutResult } from './tree.js';

export interface TreeShipResult extends TreePutResult {
  name: string;
}

/** Stores `artifact.tree` in `d` through its `putTree`; DESTINATION_FAILED when `d` cannot store trees. */
export async function shipTree(
  ctx: RunContext,
  d: NamedDestination,
  artifact: Artifact,
  retrying: <T>(fn: () => Promise<T>, signal: AbortSignal) => Promise<T>,
): Promise<TreeShipResult> {
  const tree = artifact.tree!;
  if (!storesTrees(d.destination)) {
    throw new PipelineError('DESTINATION_FAILED', `destination "${d.name}" (${d.destination.describe()}) cannot store tree artifacts such as ${artifact.name} (no putTree/getTree/treeEntries)`, {
      hint: 'Ship this pipeline to destinations that store trees (local, rsync, s3), or use the files stage (a tar) for this destination.',
    });
  }
  if (!tree.dir || !tree.index) throw new PipelineError('PLUGIN_FAILED', `${artifact.name} is a tree artifact without its local folder and index (tree.dir, tree.index)`);
  const entries = await readTreeIndex(tree.index);
  const destination = d.destination;
  const result = await retrying(
    () =>
      destination.putTree(ctx.setId, tree.name, { dir: tree.dir!, entries }, {
        signal: ctx.signal,
        onBytes: (b) => ctx.progress({ plugin: d.plugin, task: `upload:${d.name}`, bytes: b, totalBytes: tree.bytes, message: `${tree.name}/` }),
      }),
    ctx.signal,
  );
  ctx.log.info({ destination: d.name, tree: tree.name, ...result }, `tree ${tree.name} in ${d.name}: ${result.files} files (${result.bytes} bytes), ${result.filesWritten} written (${result.bytesWritten} bytes)`);
  return { name: tree.name, ...result };
}
