// Command-line reading the scripts here share (bench-convert.mjs, random-checkpoint.mjs): flags one at a time,
// a flag's value taken on request, so that each script keeps its own switch of flags and defaults; the flags that
// only set a field, as a table; and the flags both take for the random checkpoint's shape.

/**
 * Calls `on(flag, next)` for each argument from argv[2] on; `next()` takes the argument after the flag as its
 * value and throws when there is none.
 */
export function eachArg(argv, on) {
  for (let i = 2; i < argv.length; i++) {
    const flag = argv[i];
    on(flag, () => {
      if (i + 1 >= argv.length) throw new Error(`${flag} needs a value`);
      return argv[++i];
    });
  }
}

/**
 * The flags that set one field of `o`: `values` names the field each takes its value into, `switches` the field
 * each sets to true. False for any other flag.
 */
export function fieldArg(o, flag, next, { values = {}, switches = {} }) {
  if (Object.hasOwn(values, flag)) o[values[flag]] = next();
  else if (Object.hasOwn(switches, flag)) o[switches[flag]] = true;
  else return false;
  return true;
}

/**
 * The random checkpoint's shape flags, the same in every script that writes one: --llm-layers N, --vit-depth N,
 * --dtype T (the ViT's and Llama's weights; the caller checks T). Sets it on `o`; false for any other flag.
 */
export function shapeArg(o, flag, next) {
  switch (flag) {
    case '--llm-layers':
      o.llmLayers = intArg(flag, next());
      return true;
    case '--vit-depth':
      o.vitDepth = intArg(flag, next());
      return true;
    case '--dtype':
      o.dtype = next();
      return true;
    default:
      return false;
  }
}

/** `value` as a whole number of at least `min` (1 or 0), else an error that names `flag`. */
export function intArg(flag, value, min = 1) {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min) throw new Error(`${flag} needs a ${min === 0 ? 'non-negative' : 'positive'} integer, got ${value}`);
  return n;
}
