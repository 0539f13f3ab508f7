"""Token bytes -> streamed text that never shows a stop sequence, even one split over tokens.

A token can end in the middle of a UTF-8 character, and a stop sequence such as "\\nUser:"
usually spans several tokens. So text is released only once it can no longer turn out to be
the start of a stop sequence; what is held back is released when generation ends otherwise.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass


@dataclass
class Step:
    text: str  # safe to send now; may be empty
    stopped: bool  # a stop sequence was found; `text` runs up to it and nothing follows


class StopStream:
    def __init__(self, stops: list[str]) -> None:
        self._stops = [s for s in dict.fromkeys(stops) if s]
        # errors="replace": a model may emit invalid UTF-8; a job must still produce text.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""

    def feed(self, data: bytes) -> Step:
        text = self._held + self._decoder.decode(data)
        cut = self._first_stop(text)
        if cut is not None:
            self._held = ""
            return Step(text[:cut], stopped=True)
        keep = self._partial_stop_length(text)
        self._held = text[len(text) - keep:] if keep else ""
        return Step(text[: len(text) - keep], stopped=False)

    def flush(self) -> str:
        """Everything still held back, for when generation ends without a stop sequence."""
        text = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        cut = self._first_stop(text)
        return text if cut is None else text[:cut]

    def _first_stop(self, text: str) -> int | None:
        found = [i for i in (text.find(s) for s in self._stops) if i >= 0]
        return min(found) if found else None

    def _partial_stop_length(self, text: str) -> int:
        """Length of the longest tail of `text` that is a proper prefix of some stop."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best
