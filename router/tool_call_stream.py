"""Reads a tool-call answer (router/tool_grammar.py's format) as it is generated, into OpenAI's pieces.

Fed the generated text piece by piece, `ToolCallReader` reports plain-answer text (when the grammar allowed
one and the output does not start with `[`), and for each call: once its name is complete, a new call
(index, id, name); then its arguments' text, in fragments, as they arrive. Concatenated, the fragments
are exactly the arguments' text in the output, so a streamed answer and a non-streamed one with the same
seed carry the same `arguments` strings.

The grammar fixes the layout, but the reader only assumes JSON: it follows strings (escapes included)
and nesting depth character by character, so it is O(1) per character and never re-parses.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field


@dataclass
class ToolCall:
    index: int
    id: str
    name: str
    arguments: str = ""


@dataclass
class CallDelta:
    """A new call (`name` and `id` set, `arguments` empty) or the next fragment of a call's arguments."""

    index: int
    arguments: str = ""
    id: str | None = None
    name: str | None = None


@dataclass
class ReadPiece:
    """What one fed piece of text added: plain-answer text, or call deltas in order."""

    content: str = ""
    deltas: list[CallDelta] = field(default_factory=list)


def new_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


class ToolCallReader:
    def __init__(self, text_allowed: bool) -> None:
        self.mode: str | None = None if text_allowed else "calls"  # "text" or "calls" once known
        self.calls: list[ToolCall] = []
        self.content = ""
        self._depth = 0  # 1: inside the array, 2: inside a call's object, 3+: inside a value
        self._in_string = False
        self._escaped = False
        self._string: list[str] = []  # a string being read at depth 2: a key or the name's value
        self._key: str | None = None  # at depth 2: the key whose value comes next
        self._call: ToolCall | None = None  # the call whose object is open
        self._in_arguments = False
        self._orphan_arguments = ""  # arguments read before their call's name (valid JSON, not our layout)

    def feed(self, text: str) -> ReadPiece:
        piece = ReadPiece()
        if self.mode is None and text:
            self.mode = "calls" if text[0] == "[" else "text"
        if self.mode == "text":
            self.content += text
            piece.content = text
            return piece
        start = 0 if self._in_arguments else None
        for i, char in enumerate(text):
            was_in_arguments = self._in_arguments
            self._scan(char, piece)
            if self._in_arguments and not was_in_arguments:
                start = i
            elif was_in_arguments and not self._in_arguments:
                assert start is not None
                self._add_arguments(piece, text[start: i + 1])
                start = None
        if self._in_arguments and start is not None:
            self._add_arguments(piece, text[start:])
        return piece

    def _scan(self, char: str, piece: ReadPiece) -> None:
        depth = self._depth
        if self._in_string:
            if self._escaped:
                self._escaped = False
            elif char == "\\":
                self._escaped = True
            elif char == '"':
                self._in_string = False
                if depth == 2:
                    self._string_done(piece)
                return
            if depth == 2:
                self._string.append(char)
            return
        if char == '"':
            self._in_string = True
            self._string = []
        elif char in "[{":
            self._depth += 1
            if self._depth == 2:
                self._call, self._key = None, None
            elif self._depth == 3 and self._key == "arguments":
                self._in_arguments = True
        elif char in "]}":
            self._depth -= 1
            if self._depth == 2:
                self._in_arguments = False
                self._key = None
        elif char == "," and depth == 2:
            self._key = None

    def _string_done(self, piece: ReadPiece) -> None:
        text = "".join(self._string)
        if self._key is None:
            self._key = text
            return
        if self._key == "name" and self._call is None:
            self._call = ToolCall(index=len(self.calls), id=new_call_id(), name=json.loads(f'"{text}"'))
            self.calls.append(self._call)
            piece.deltas.append(CallDelta(self._call.index, id=self._call.id, name=self._call.name))
            if self._orphan_arguments:
                self._add_arguments(piece, "")
        self._key = None

    def _add_arguments(self, piece: ReadPiece, fragment: str) -> None:
        if self._call is None:
            self._orphan_arguments += fragment
            return
        fragment, self._orphan_arguments = self._orphan_arguments + fragment, ""
        if not fragment:
            return
        self._call.arguments += fragment
        last = piece.deltas[-1] if piece.deltas else None
        if last is not None and last.index == self._call.index and last.name is None:
            last.arguments += fragment
        else:
            piece.deltas.append(CallDelta(self._call.index, fragment))
