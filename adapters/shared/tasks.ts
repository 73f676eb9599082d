// The work an adapter runs detached from the platform's event loop (one promise per handled event), so that
// closing can wait for answers in flight instead of cutting them off mid-message.

export class TaskSet {
  private readonly tasks = new Set<Promise<void>>();

  constructor(private readonly onError: (what: string, err: unknown) => void) {}

  /** Running tasks (for tests and statistics). */
  get size(): number {
    return this.tasks.size;
  }

  /** Runs `work` as a tracked task; a failure goes to `onError` (with `what`), never to the caller. */
  run(what: string, work: () => Promise<void>): void {
    const task = (async () => {
      try {
        await work();
      } catch (err) {
        this.onError(what, err);
      }
    })();
    this.tasks.add(task);
    void task.finally(() => this.tasks.delete(task));
  }

  /** Waits for the tasks running now, at most `ms`; false when some were still running then. */
  async settle(ms: number): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
    try {
      return await Promise.race([Promise.allSettled([...this.tasks]).then(() => true as const), timeout]);
    } finally {
      clearTimeout(timer);
    }
  }
}
