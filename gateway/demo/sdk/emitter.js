/** A small typed event emitter: the client's and the sessions' events. */
export class Emitter {
    listeners = new Map();
    /** Adds a listener; the returned function removes it. */
    on(event, fn) {
        let set = this.listeners.get(event);
        if (!set) {
            set = new Set();
            this.listeners.set(event, set);
        }
        set.add(fn);
        return () => this.off(event, fn);
    }
    off(event, fn) {
        this.listeners.get(event)?.delete(fn);
    }
    emit(event, ...args) {
        const set = this.listeners.get(event);
        if (!set)
            return;
        for (const fn of [...set]) {
            // A throwing listener must not break delivery to the others, nor the client's state.
            try {
                fn(...args);
            }
            catch (e) {
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
function report(e) {
    const reportError = globalThis.reportError;
    if (typeof reportError === 'function')
        reportError(e);
    else
        console.error('a Roomcast listener threw:', e);
}
