// The @mention rule of docs/protocol.md#rooms, the same as the core's
// (legacy_socket_server/rooms.py, `mentioned`): `@name` in any case, where the
// name ends the text or is followed by a character that is not a letter, a
// digit, `_` or `-`. "@bob." and "@Bob!" mention Bob; "@bobby" and "@bob_x" do not.

const NAME_CHARS = /^[A-Za-z0-9_.-]+$/; // what a user name is made of (ASCII only)
const WORD_CHAR = /^[\p{L}\p{N}_-]$/u; // what may not follow the name

// Where `text` mentions `name`: [start, end) of each "@name", in order.
export function mentionRanges(text, name) {
  const ranges = [];
  if (!name || typeof text !== "string") return ranges;
  const want = name.toLowerCase();
  for (let at = text.indexOf("@"); at !== -1; at = text.indexOf("@", at + 1)) {
    const end = at + 1 + name.length;
    const run = text.slice(at + 1, end);
    if (run.length !== name.length || !NAME_CHARS.test(run) || run.toLowerCase() !== want) continue;
    const next = text.codePointAt(end);
    if (next === undefined || !WORD_CHAR.test(String.fromCodePoint(next))) ranges.push([at, end]);
  }
  return ranges;
}

export function mentions(text, name) {
  return mentionRanges(text, name).length > 0;
}
