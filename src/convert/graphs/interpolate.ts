// Bicubic resize of the ViT position-embedding grid, as upstream `interpolate_pos_embed` does with
// torch.nn.functional.interpolate(mode='bicubic', align_corners=False): cubic convolution with A=-0.75,
// source index = scale*(dst+0.5)-0.5 (not clamped), neighbour indices clamped to the border.

const A = -0.75;

function cubicWeights(t: number): [number, number, number, number] {
  const near = (x: number) => ((A + 2) * x - (A + 3)) * x * x + 1; // |x| <= 1
  const far = (x: number) => ((A * x - 5 * A) * x + 8 * A) * x - 4 * A; // 1 < |x| < 2
  return [far(t + 1), near(t), near(1 - t), far(2 - t)];
}

/** Resizes a [inSize, inSize, channels] grid (row-major, channels last) to [outSize, outSize, channels]. */
export function bicubicResizeGrid(grid: Float32Array, inSize: number, outSize: number, channels: number): Float32Array {
  const scale = inSize / outSize;
  const taps = (dst: number) => {
    const real = scale * (dst + 0.5) - 0.5;
    const base = Math.floor(real);
    const w = cubicWeights(real - base);
    const idx = [base - 1, base, base + 1, base + 2].map((i) => Math.min(Math.max(i, 0), inSize - 1));
    return { idx, w };
  };
  const out = new Float32Array(outSize * outSize * channels);
  for (let oy = 0; oy < outSize; oy++) {
    const ty = taps(oy);
    for (let ox = 0; ox < outSize; ox++) {
      const tx = taps(ox);
      for (let c = 0; c < channels; c++) {
        let acc = 0;
        for (let j = 0; j < 4; j++) {
          let row = 0;
          const rowBase = ty.idx[j] * inSize;
          for (let i = 0; i < 4; i++) row += tx.w[i] * grid[(rowBase + tx.idx[i]) * channels + c];
          acc += ty.w[j] * row;
        }
        out[(oy * outSize + ox) * channels + c] = acc;
      }
    }
  }
  return out;
}

/**
 * pos_embed [1, extra + n*n, D] saved for one grid size -> [1, extra + m*m, D] for another; the extra
 * (CLS) rows are copied unchanged. Returns the input when the sizes already agree.
 */
export function interpolatePosEmbed(posEmbed: Float32Array, dim: number, extraTokens: number, newGrid: number): Float32Array {
  const tokens = posEmbed.length / dim - extraTokens;
  const oldGrid = Math.round(Math.sqrt(tokens));
  if (oldGrid * oldGrid !== tokens) throw new Error(`pos_embed has ${tokens} patch positions, not a square grid`);
  if (oldGrid === newGrid) return posEmbed;
  const extra = posEmbed.subarray(0, extraTokens * dim);
  const resized = bicubicResizeGrid(posEmbed.subarray(extraTokens * dim), oldGrid, newGrid, dim);
  const out = new Float32Array(extra.length + resized.length);
  out.set(extra, 0);
  out.set(resized, extra.length);
  return out;
}
