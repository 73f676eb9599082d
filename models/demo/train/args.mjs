// The one command-line helper of the recipe's Node scripts (prepare.mjs, publish.mjs).

/** The value after `name` in process.argv; `def` when absent (absent and no default: an error). */
export function arg(name, def) {
  const i = process.argv.indexOf(name);
  if (i < 0) {
    if (def === undefined) throw new Error(`${name} is required`);
    return def;
  }
  return process.argv[i + 1];
}
