// Loaded with `node --import` into the pipeline's own Node.js process: on exit, writes that
// process's peak RSS and CPU time (not its children's) to $BENCH_RSS_FILE.
import { writeFileSync } from 'node:fs';

const out = process.env.BENCH_RSS_FILE;
if (out) {
  delete process.env.BENCH_RSS_FILE; // children need not see it
  process.on('exit', () => {
    const r = process.resourceUsage();
    try {
      writeFileSync(out, JSON.stringify({ maxRssKB: r.maxRSS, userMs: r.userCPUTime / 1000, sysMs: r.systemCPUTime / 1000 }));
    } catch {
      /* best effort */
    }
  });
}
