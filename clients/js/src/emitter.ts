/** A small typed event emitter: the client's and the sessions' events. */

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Listener = (...args: any[]) => void;

export class Emitter<Events extends { [K in keyof Events]: Listener }> {
  private listeners = new Map<keyof Events, Set<Listener>>();

  /** Adds a listener; the returned function removes it. */
  on<K extends keyof Events>(event: K, fn: Events[K]): () => void {
    let set = this.listeners.get(event);
    if (!set) {
      set = new Set();
      this.listeners.set(event, set);
    }
    set.add(fn);
    return () => this.off(event, fn);
  }

  off<K extends keyof Events>(event: K, fn: Events[K]): void {
    this.listeners.get(event)?.delete(fn);
  }

  protected emit<K extends keyof Events>(event: K, ...args: Parameters<Events[K]>): void {
    const set = this.listeners.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      // A throwing listener must not break delivery to the others, nor the client's state.
      try {
        fn(...args);
      } catch (e) {
        report(e);
      }
    }
  }
}

/**
 * Surfaces a listener's exception without throwing it: browsers' `reportError` (the
 * page's error handlers see it), else the console. Rethrowing it, even in a microtask,
 * would end a Node process for a bug in one listener.
 */
function report(e: unknown): void {
  const reportError = (globalThis as { reportError?: (e: unknown) => void }).reportError;
  if (typeof reportError === 'function') reportError(e);
  else console.error('a Roomcast listener threw:', e);
}
