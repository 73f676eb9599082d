// `minigpt demo-data` and `minigpt eval` (issue 7): registered on the main program by main.ts.
import { type Command, InvalidArgumentError, Option } from 'commander';
import { parseProviderChoice } from '../inference/providers.js';
import { providerOption } from './options.js';
import { DEFAULT_SHAPE_SET, SHAPE_SET_NAMES } from '../demo-data/scene.js';

function integer(name: string, min: number) {
  return (v: string): number => {
    const n = Number(v);
    if (!/^\s*\d+\s*$/.test(v) || !Number.isSafeInteger(n) || n < min)
      throw new InvalidArgumentError(`${name} must be an integer >= ${min}`);
    return n;
  };
}

function pair(name: string) {
  return (v: string): [number, number] => {
    const m = /^(\d+)(?:[-,:](\d+))?$/.exec(v.trim());
    if (!m) throw new InvalidArgumentError(`${name} must be N or MIN-MAX`);
    const lo = Number(m[1]);
    const hi = m[2] === undefined ? lo : Number(m[2]);
    if (lo < 1 || hi < lo) throw new InvalidArgumentError(`${name}: need 1 <= MIN <= MAX`);
    return [lo, hi];
  };
}

export function registerEvalCommands(program: Command, log: (line: string) => void): void {
  program
    .command('demo-data')
    .description(
      'write a synthetic split: images, refer.json / vqa.json / identify.json / caption.json (eval) and train.jsonl (all six tasks)',
    )
    .requiredOption('--seed <n>', 'seed (a split is determined by it)', integer('--seed', 0))
    .requiredOption('--count <n>', 'number of images', integer('--count', 1))
    .requiredOption('--out <dir>', 'output folder')
    .addOption(new Option('--format <fmt>', 'image format').choices(['png', 'jpg']).default('png'))
    .option('--objects <range>', 'objects per image, N or MIN-MAX (default 1-5)', pair('--objects'))
    .option('--size <range>', 'longest image side in px, N or MIN-MAX (default 192-448)', pair('--size'))
    .addOption(
      new Option(
        '--shapes <set>',
        "shape set: aspect-safe (the committed demo model's) or classic (ellipse and rectangle instead of ring and heart: the stretch to a square input can make them look like a circle and a square)",
      )
        .choices(SHAPE_SET_NAMES)
        .default(DEFAULT_SHAPE_SET),
    )
    .action(async (o) => {
      const { writeDemoData } = await import('../demo-data/index.js');
      const t0 = performance.now();
      // only the options given (and the shape set, always) go into the manifest
      const scene = { ...(o.objects ? { objects: o.objects } : {}), ...(o.size ? { longSide: o.size } : {}), shapes: o.shapes };
      const s = await writeDemoData(o.out, { seed: o.seed, count: o.count, format: o.format, scene }, log);
      log(
        `demo-data: ${s.images} images, refer ${s.refer}, vqa ${s.vqa}, identify ${s.identify}, caption ${s.caption}, train ${s.train} samples ` +
          `(${Object.entries(s.trainByTask)
            .map(([k, v]) => `${k} ${v}`)
            .join(', ')}) in ${((performance.now() - t0) / 1000).toFixed(1)} s -> ${o.out}`,
      );
    });

  program
    .command('eval')
    .description('accuracy of a model package like the original MiniGPT-v2 eval scripts')
    .requiredOption('--model <dir>', 'model package')
    .requiredOption('--data <path>', 'folder with <task>.json (from demo-data), or the JSON file (e.g. RefCOCO refcoco_val.json)')
    .addOption(new Option('--task <task>', 'what to evaluate').choices(['refer', 'vqa', 'identify', 'caption']).makeOptionMandatory())
    .option('--images <dir>', "images folder (default: the data file's folder; RefCOCO entries without 'image' use <img_id[:27]>.jpg)")
    .option('--json', 'print a JSON report {task, n, accuracy, ..., details}')
    .option('--batch <n>', 'items run at once (default 1)', integer('--batch', 1))
    .option('--limit <n>', 'only the first N items', integer('--limit', 1))
    .option('--max-new-tokens <n>', 'answer length limit (default 20 as the benchmark config; caption 60)', integer('--max-new-tokens', 1))
    .option('--res <n>', 'refer: grid size of the answer boxes (eval_ref.py --res, default 100)', integer('--res', 1))
    .option('--threads <n>', 'intra-op threads', integer('--threads', 1))
    .addOption(providerOption('EXECUTION_PROVIDER, then auto'))
    .action(async (o) => {
      const { runEval } = await import('../eval/run.js');
      const report = await runEval({
        model: o.model,
        data: o.data,
        task: o.task,
        images: o.images,
        batch: o.batch,
        limit: o.limit,
        maxNewTokens: o.maxNewTokens,
        res: o.res,
        threads: o.threads,
        provider: parseProviderChoice(o.provider ?? process.env.EXECUTION_PROVIDER ?? 'auto'),
        log,
      });
      if (o.json) {
        process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
      } else {
        const lines = [
          `${report.task}: ${(report.accuracy * 100).toFixed(2)}% on ${report.n} items (${report.metric}) in ${report.seconds.toFixed(1)} s`,
        ];
        for (const [t, v] of Object.entries(report.by_type ?? {})) lines.push(`  ${t}: ${(v.accuracy * 100).toFixed(2)}% (${v.n})`);
        const bg = report.background;
        if (bg)
          lines.push(`  background named: ${(bg.accuracy * 100).toFixed(2)}% (its kind: ${(bg.kind_accuracy * 100).toFixed(2)}%; ${bg.n})`);
        process.stdout.write(`${lines.join('\n')}\n`);
      }
    });
}
