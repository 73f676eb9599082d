// 'present' mode's row copies (see KvMode in decoder.ts): a batch's past made of the rows of several states,
// each left-padded to the longest, and a state's prefix or copy in storage of its own. In JavaScript memory
// they are copied here; a cache in device memory (WebGPU) is copied on the device (kv-device.ts).
import type * as ort from 'onnxruntime-node';
import { KvCache } from './kv-cache.js';
import { copyRow, kvTensor, onDevice, PresentBlock, type KvArray, type KvType } from './kv-blocks.js';
import type { DeviceKvCopier, KvRowSource } from './kv-device.js';

export interface PresentLayout {
  /** the KV tensor names, in the decoder's order */
  names: readonly string[];
  kvHeads: number;
  headDim: number;
  type: KvType;
  /** copies caches in device memory; without it such a cache cannot be copied */
  device?: DeviceKvCopier;
}

const source = (s: KvCache, n = s.length): KvRowSource => {
  const b = s.storage as PresentBlock;
  return { tensors: b.feeds, row: s.row, from: b.total - s.length, n };
};

function deviceCopier(layout: PresentLayout): DeviceKvCopier {
  if (!layout.device) throw new Error('a KV cache in device memory needs its decoder to copy it (DecoderOptions.deviceKv)');
  return layout.device;
}

/** The rows of `states` (each a row of a PresentBlock) as one past [states.length, kvHeads, T, headDim]. */
export async function packRows(states: readonly KvCache[], T: number, layout: PresentLayout): Promise<Record<string, ort.Tensor>> {
  if (states.some((s) => onDevice((s.storage as PresentBlock).feeds)))
    return deviceCopier(layout).gather(
      states.map((s) => source(s)),
      T,
    );
  const { kvHeads, headDim, type } = layout;
  const past: Record<string, ort.Tensor> = {};
  for (const name of layout.names) {
    const dst = type.alloc(states.length * kvHeads * T * headDim);
    states.forEach((s, b) => {
      const src = s.storage as PresentBlock;
      copyRow(src.feeds[name].data as KvArray, src.total, s.row, src.total - s.length, dst, T, b, T - s.length, s.length, kvHeads, headDim);
    });
    past[name] = kvTensor(type, dst, [states.length, kvHeads, T, headDim]);
  }
  return past;
}

/**
 * The first `n` positions of `state` in storage of their own (KvCache.prefix), or all of them in a copy
 * (`copy`: KvCache.clone), wherever the cache lives. `empty` makes a cache of no positions.
 */
export async function ownRows(state: KvCache, n: number, layout: PresentLayout, copy: boolean, empty: () => KvCache): Promise<KvCache> {
  const b = state.storage;
  if (!(b instanceof PresentBlock) || !onDevice(b.feeds)) return copy ? state.clone() : state.prefix(n);
  if (!copy && n === state.length && state.standalone) return state.prefix(n);
  if (n === 0) return empty();
  return new KvCache(await deviceCopier(layout).gather([source(state, n)], n), n);
}
