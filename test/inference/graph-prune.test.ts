// withoutOutputs (src/inference/graph-prune.ts): the decoder without its present_new outputs, as MiniGPT.load opens
// it on WebGPU, computes the same logits and present as the package's graph, with fewer nodes.
import { beforeAll, describe, expect, it } from 'vitest';
import * as ort from 'onnxruntime-node';
import onnxProto from 'onnx-proto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { withoutOutputs } from '../../src/inference/graph-prune.js';
import { tempDirPerFile } from '../helpers/temp-dir.js';
import { convertTinyV2 } from '../helpers/tiny-package.js';

let dir = '';
tempDirPerFile('minigpt-prune-', (d) => {
  dir = d;
});
const work = () => dir;
const nodes = (model: Uint8Array) => onnxProto.onnx.ModelProto.decode(model).graph!.node!.length;

beforeAll(async () => {
  await convertTinyV2(join(work(), 'plain'));
  await convertTinyV2(join(work(), 'fused'), { fused: true });
}, 120_000);

describe('withoutOutputs', () => {
  for (const kind of ['plain', 'fused']) {
    it(`${kind} decoder without present_new: the same logits and present, fewer nodes`, async () => {
      const pkg = join(work(), kind);
      const original = await readFile(join(pkg, 'decoder.onnx'));
      const pruned = withoutOutputs(original, (n) => n.startsWith('present_new.'));
      expect(pruned.removedNodes).toBeGreaterThan(0);
      expect(nodes(pruned.model)).toBe(nodes(original) - pruned.removedNodes);
      const a = await ort.InferenceSession.create(join(pkg, 'decoder.onnx'), { executionProviders: ['cpu'] });
      const b = await ort.InferenceSession.create(pruned.model, {
        executionProviders: ['cpu'],
        extra: { session: { model_external_initializers_file_folder_path: pkg } },
      });
      try {
        expect(b.outputNames).toEqual(a.outputNames.filter((n) => !n.startsWith('present_new.')));
        const feeds: Record<string, ort.Tensor> = {};
        const cache = a.inputNames.includes('cache_key_values.0.key');
        for (const m of a.inputMetadata) {
          if (!m.isTensor) continue;
          const dims = m.shape.map((d) =>
            typeof d === 'number'
              ? d
              : d === 'batch'
                ? 1
                : d === 'sequence_length'
                  ? 3
                  : d === 'total_sequence_length'
                    ? 5 + (cache ? 1 : 0)
                    : 2,
          );
          if (m.name.startsWith('cache_key_values')) dims[2] = 1;
          const n = dims.reduce((x, y) => x * y, 1);
          feeds[m.name] =
            m.type === 'int64'
              ? new ort.Tensor(
                  'int64',
                  BigInt64Array.from({ length: n }, (_, i) => (m.name === 'position_ids' ? BigInt(2 + i) : 1n)),
                  dims,
                )
              : new ort.Tensor(
                  'float32',
                  Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.3)),
                  dims,
                );
        }
        feeds.logits_to_keep = new ort.Tensor('int64', BigInt64Array.of(0n), [1]);
        const [ra, rb] = [await a.run(feeds), await b.run(feeds)];
        for (const name of b.outputNames)
          expect(Array.from(rb[name].data as Float32Array), name).toEqual(Array.from(ra[name].data as Float32Array));
      } finally {
        await a.release();
        await b.release();
      }
    });
  }
});
