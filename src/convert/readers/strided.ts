// A tensor view's elements in C order: whether a view already is contiguous (then it is read as one span of its
// storage), and the gather of a strided one (a transposed or sliced tensor saved as a view of a larger storage).
export function isCContiguous(shape: readonly number[], stride: readonly number[]): boolean {
  let expected = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    if (shape[i] !== 1 && stride[i] !== expected) return false;
    expected *= shape[i];
  }
  return true;
}

type WordArray = Uint8Array | Uint16Array | Uint32Array;
function wordView(b: Uint8Array, word: number): WordArray {
  if (word === 1) return b;
  if (word === 2) return new Uint16Array(b.buffer, b.byteOffset, b.byteLength / 2);
  return new Uint32Array(b.buffer, b.byteOffset, b.byteLength / 4);
}

/**
 * Gathers a strided view into contiguous C order. `src` holds the storage elements starting at the view's
 * storage offset (must own an aligned buffer); strides are in elements.
 */
export function gatherStrided(src: Uint8Array, shape: readonly number[], stride: readonly number[], itemsize: number): Uint8Array {
  const numel = shape.reduce((a, b) => a * b, 1);
  const out = new Uint8Array(numel * itemsize);
  if (numel === 0) return out;
  const word = itemsize === 8 ? 4 : itemsize;
  const wpe = itemsize / word;
  const s = wordView(src, word);
  const o = wordView(out, word);
  const nd = shape.length;
  const inner = shape[nd - 1];
  const innerStride = stride[nd - 1];
  const rows = numel / inner;
  const idx = new Array<number>(Math.max(0, nd - 1)).fill(0);
  let base = 0;
  let w = 0;
  for (let r = 0; r < rows; r++) {
    if (innerStride === 1) {
      o.set(s.subarray(base * wpe, (base + inner) * wpe), w);
      w += inner * wpe;
    } else {
      for (let j = 0; j < inner; j++) {
        const e = (base + j * innerStride) * wpe;
        for (let k = 0; k < wpe; k++) o[w++] = s[e + k];
      }
    }
    for (let d = nd - 2; d >= 0; d--) {
      idx[d]++;
      base += stride[d];
      if (idx[d] < shape[d]) break;
      base -= stride[d] * shape[d];
      idx[d] = 0;
    }
  }
  return out;
}
