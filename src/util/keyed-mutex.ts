// Async critical sections by name: the calls of one name run one at a time, in the order they were made; other
// names run meanwhile. A call's failure does not stop the next.
export class KeyedMutex {
  private readonly tails = new Map<string, Promise<unknown>>();

  run<T>(name: string, fn: () => Promise<T>): Promise<T> {
    const result = (this.tails.get(name) ?? Promise.resolve()).then(fn);
    const tail = result.catch(() => {});
    this.tails.set(name, tail);
    void tail.then(() => {
      if (this.tails.get(name) === tail) this.tails.delete(name);
    });
    return result;
  }
}
