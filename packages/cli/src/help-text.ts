/** Help text shared by `--help` and the commands; no imports, so `pipeline --help` loads nothing else. */
export const EXIT_CODES_HELP = `Exit codes:
  0    success
  1    the run failed (the message names the stage and the cause)
  2    usage or config error (nothing was touched)
  75   another run of this pipeline holds the lock
  130  interrupted (SIGINT); 143 terminated (SIGTERM)`;
