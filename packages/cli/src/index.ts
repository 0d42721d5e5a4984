export { main, buildProgram } from './main.js';
export { BUILTIN_PLUGINS, CLI_DIR } from './builtins.js';
