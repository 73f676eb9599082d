// Which rows of which block a batched 'append' step runs on. One session run feeds rows [0, k) of one
// block, so the states of a step must be rows of the same block, and every row below the highest one used
// is fed too: placing the rows trades a copy now against rows fed at every step after it.
import { AppendBlock, type KvArray } from './kv-blocks.js';
import type { KvCache } from './kv-cache.js';

/** State b of a step runs on row `slots[b]` of `block`, whose rows [0, k) are fed. */
export interface RowPlacement {
  block: AppendBlock;
  slots: number[];
  k: number;
  /** whether any state was copied to get there (DecoderStats.repacks) */
  copied: boolean;
}

/**
 * Where each state's row goes for this step: states already at the end of their row of one block stay
 * there (no copy); the others are copied into free rows of that block (rows no live state uses), or, if
 * there are not enough, everything goes to a new block from `newBlock` (`batchRows` rows, so that later
 * conversations join without a repack). Rows [0, k) are fed; a row in that range that is not stepped (a
 * conversation that skips this step) runs as a dummy whose outputs are dropped.
 *
 * Example: block X has 6 rows with room for 80 positions each, and the step is [A, C, D]:
 *
 *   row 0: A, 40 positions, nothing written after it   -> A stays on row 0
 *   row 1: free (its conversation ended)                -> D (20 positions) is copied here
 *   row 2: E, which skips this step (a live state)      -> fed as a dummy
 *   row 3: free                                         -> C's 35 positions are copied here
 *   row 4: C, 35 positions, nothing written after it
 *   row 5: free
 *
 * D comes from its prefill, in a 1-row block of its own: it has to be copied into X (row 1, the lowest
 * free row). C could stay on row 4, but then every step would feed rows [0, 5): C sits at or beyond row B
 * (3, the number of states), and a free row lies below it, so C is copied down too (one copy against one
 * fed row less at every step until the batch changes). E's row is not free, so the step feeds rows
 * [0, 4): slots [0, 3, 1], k 4, with row 2 a dummy. The next step ([A', C', D'], the states this one
 * returns) finds every state at the end of its row and copies nothing. Had X too few free rows for the
 * states to move, or no room for 41 positions (the longest state and its new one), all three would have
 * been copied into a new block, on rows 0, 1, 2.
 */
export function placeRows(
  states: readonly KvCache[],
  batchRows: number,
  newBlock: (rows: number, need: number) => AppendBlock,
): RowPlacement {
  const B = states.length;
  // The steady state of a batch: row b of the same block is state b, at the end of its row.
  const first0 = states[0].storage;
  if (first0 instanceof AppendBlock && first0.rows >= B) {
    let ok = true;
    for (let b = 0; b < B && ok; b++) {
      const s = states[b];
      ok = s.storage === first0 && s.row === b && first0.written[b] === s.length && s.length < first0.capacity;
    }
    if (ok) return { block: first0, slots: states.map((_, b) => b), k: B, copied: false };
  }
  const need = Math.max(...states.map((s) => s.length)) + 1;
  const first = states.find((s) => s.storage instanceof AppendBlock && s.storage.rows >= B)?.storage as AppendBlock | undefined;
  if (first && first.capacity >= need) {
    const claimed = new Uint8Array(first.rows);
    const slots = states.map((s) => {
      if (s.storage !== first || first.written[s.row] !== s.length || claimed[s.row]) return -1;
      claimed[s.row] = 1;
      return s.row;
    });
    const free: number[] = [];
    for (let r = 0; r < first.rows; r++) if (!claimed[r] && first.rowRefs[r] === 0) free.push(r);
    // Rows from elsewhere (and rows stepped beyond the first B) go to the lowest free rows.
    const moves = slots.map((slot, b) => (slot < 0 ? b : -1)).filter((b) => b >= 0);
    for (let b = 0; b < B; b++) if (slots[b] >= B && free.length > moves.length && free[moves.length] < slots[b]) moves.push(b);
    if (moves.length <= free.length) {
      moves.forEach((b, i) => {
        const s = states[b];
        const r = free[i];
        copyInto(first, r, s);
        slots[b] = r;
      });
      return { block: first, slots, k: Math.max(...slots) + 1, copied: moves.length > 0 };
    }
  }
  const block = newBlock(B > 1 ? Math.max(B, batchRows) : 1, need);
  states.forEach((s, b) => copyInto(block, b, s));
  return { block, slots: states.map((_, b) => b), k: B, copied: true };
}

/** Copies state `s` into row `row` of `block` (its positions [0, length)). */
export function copyInto(block: AppendBlock, row: number, s: KvCache): void {
  const from = s.storage;
  if (from instanceof AppendBlock) {
    block.copyRowFrom(from, s.row, s.length, row);
    return;
  }
  const p = s.prefix();
  try {
    for (const name of block.names) block.write(name, p.feeds()[name].data as KvArray, 0, s.length, row, 0);
    block.written[row] = s.length;
  } finally {
    p.dispose();
  }
}
