#!/usr/bin/env node
import { main } from '../dist/main.js';

// `pipeline list | head` closes the pipe early: that is not an error.
process.stdout.on('error', (error) => {
  if (error.code === 'EPIPE') process.exit(0);
  throw error;
});

main(process.argv).then((code) => {
  process.exitCode = code;
});
