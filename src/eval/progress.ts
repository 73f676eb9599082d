// A progress bar on a terminal (stderr), or a line every 10% when it is not a terminal.

export interface ProgressStream {
  write(s: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

export class Progress {
  private done = 0;
  private readonly t0 = performance.now();
  private nextLine = 0.1;
  private lastDraw = 0;

  constructor(
    private readonly total: number,
    private readonly label: string,
    private readonly stream: ProgressStream = process.stderr,
  ) {}

  tick(n = 1, status = ''): void {
    this.done += n;
    const frac = this.total > 0 ? this.done / this.total : 1;
    const elapsed = (performance.now() - this.t0) / 1000;
    const rate = elapsed > 0 ? this.done / elapsed : 0;
    const eta = rate > 0 ? (this.total - this.done) / rate : 0;
    const text = `${this.done}/${this.total} ${rate.toFixed(1)} it/s eta ${eta.toFixed(0)}s${status ? ` ${status}` : ''}`;
    if (this.stream.isTTY) {
      const now = performance.now();
      if (this.done < this.total && now - this.lastDraw < 100) return;
      this.lastDraw = now;
      const width = Math.max(10, Math.min(40, (this.stream.columns ?? 80) - this.label.length - text.length - 6));
      const filled = Math.round(frac * width);
      this.stream.write(`\r${this.label} [${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${text}\x1b[K`);
      if (this.done >= this.total) this.stream.write('\n');
    } else if (frac >= this.nextLine || this.done >= this.total) {
      this.stream.write(`${this.label} ${Math.floor(frac * 100)}% ${text}\n`);
      while (frac >= this.nextLine) this.nextLine += 0.1;
    }
  }
}
