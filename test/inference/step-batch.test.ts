// The worked example in placeRows' comment, on bare blocks: the comment is only worth having while it is true.
import { describe, expect, it } from 'vitest';
import { AppendBlock } from '../../src/inference/kv-blocks.js';
import { KvCache } from '../../src/inference/kv-cache.js';
import { placeRows } from '../../src/inference/step-batch.js';

const NAMES = ['past_key_values.0.key', 'past_key_values.0.value'];
const HEAD_DIM = 2;

/** A state of `length` positions on `row` of `block`, nothing written after it; position i holds row*1000 + i. */
function state(block: AppendBlock, row: number, length: number): KvCache {
  for (const name of NAMES) {
    const src = Float32Array.from({ length: length * HEAD_DIM }, (_, i) => row * 1000 + Math.floor(i / HEAD_DIM));
    block.write(name, src, 0, length, row, 0);
  }
  block.written[row] = length;
  return new KvCache(block, length, row);
}

/** Position values of `row` of `block`, [0, n). */
function positions(block: AppendBlock, row: number, n: number): number[] {
  const data = block.buffers[NAMES[0]];
  const at = row * block.capacity * HEAD_DIM;
  return Array.from({ length: n }, (_, i) => data[at + i * HEAD_DIM]);
}

describe('placeRows', () => {
  it('keeps rows at the end of theirs, copies in newcomers and rows above B to the lowest free rows', () => {
    const x = new AppendBlock(NAMES, 6, 80, 1, HEAD_DIM);
    const a = state(x, 0, 40);
    const e = state(x, 2, 30);
    const c = state(x, 4, 35);
    const d = state(new AppendBlock(NAMES, 1, 84, 1, HEAD_DIM), 0, 20);
    const newBlock = (): AppendBlock => {
      throw new Error('no new block expected');
    };

    const p = placeRows([a, c, d], 6, newBlock);
    expect(p.block).toBe(x);
    expect(p.slots).toEqual([0, 3, 1]);
    expect(p.k).toBe(4);
    expect(p.copied).toBe(true);
    expect(positions(x, 1, 20)).toEqual(positions(d.storage as AppendBlock, 0, 20));
    expect(positions(x, 3, 35)).toEqual(positions(x, 4, 35));
    expect(positions(x, 2, 30)).toEqual(Array.from({ length: 30 }, (_, i) => 2000 + i)); // E untouched

    // The step writes each state's new position and returns states on the rows it ran them on.
    const next = [a, c, d].map((s, b) => {
      x.written[p.slots[b]] = s.length + 1;
      return new KvCache(x, s.length + 1, p.slots[b]);
    });
    for (const s of [a, c, d]) s.dispose();
    const q = placeRows(next, 6, newBlock);
    expect(q).toEqual({ block: x, slots: [0, 3, 1], k: 4, copied: false });
    for (const s of [...next, e]) s.dispose();
  });

  it('moves every state to a new block when the shared one has no room for the longest', () => {
    const x = new AppendBlock(NAMES, 4, 40, 1, HEAD_DIM);
    const a = state(x, 0, 40);
    const b = state(x, 1, 10);
    const made: number[][] = [];
    const p = placeRows([a, b], 8, (rows, need) => {
      made.push([rows, need]);
      return new AppendBlock(NAMES, rows, need + 64, 1, HEAD_DIM);
    });
    expect(made).toEqual([[8, 41]]);
    expect(p.slots).toEqual([0, 1]);
    expect(p.k).toBe(2);
    expect(p.copied).toBe(true);
    expect(positions(p.block, 1, 10)).toEqual(positions(x, 1, 10));
    for (const s of [a, b]) s.dispose();
  });
});
