// Compiled by `npm run typecheck` (tsc --noEmit), never run: the generic session types
// what an app publishes and receives, and a wrong type does not compile.

import { RoomcastClient, type Message } from '../src/index.js';

interface Slide {
  slide: number;
}

declare const client: RoomcastClient;
const deck = client.session<Slide>('deck');
deck.on('message', (m: Message<Slide>) => {
  const n: number = m.data.slide;
  void n;
});
deck.on('reset', ({ history }) => {
  const first: Slide | undefined = history[0]?.data;
  void first;
});
void deck.publish({ slide: 2 });
// @ts-expect-error: a Slide has no `page`.
void deck.publish({ page: 2 });
void deck.history().then((page) => page.messages.map((m) => m.data.slide));

// Untyped, as before: data is unknown and anything JSON goes.
const loose = client.session('loose');
void loose.publish({ anything: [1, 'two'] });
loose.on('message', (m) => {
  // @ts-expect-error: unknown data must be narrowed first.
  void m.data.slide;
});
