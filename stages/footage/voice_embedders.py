"""The speaker embedders `index` and `search` can use: CAM++ (default) and Resemblyzer, behind one interface.

CAM++ (3D-Speaker, 192-d, `stages/footage/voice_campplus.py`) embeds a whole segment in one pass; Resemblyzer
(256-d) averages its 1.6 s windows every 0.8 s. Both query sides run in numpy (`campplus_numpy.py`,
`voice_numpy.py`), so a query on an indexed video imports no torch.
docs/search.md gives the measurements behind the default. Speaker-change detection inside a speech region
always uses Resemblyzer's cheap windows (`speech.split_region`), whichever embedder embeds the segments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from stages.core.errors import ConfigError

DEFAULT_VOICE_EMBEDDER = "campplus"
# A CAM++ query embeds at most this much of the clip's speech (its start): about 0.35 s of CPU in numpy, so a
# query stays under a second; index segments are rarely longer.
QUERY_SECONDS = 10


@dataclass(frozen=True)
class VoiceEmbedder:
    """A named speaker embedder: 16 kHz float speech -> one unit vector."""

    name: str
    dim: int
    embed_segment: Callable[[np.ndarray], np.ndarray]   # for the index (may use torch)
    embed_query: Callable[[np.ndarray], np.ndarray]     # for a query clip (already trimmed to its speech)


def _resemblyzer_segment(audio: np.ndarray) -> np.ndarray:
    from stages.footage.speech import embed_audio
    return embed_audio(audio)


def _resemblyzer_query(audio: np.ndarray) -> np.ndarray:
    from stages.footage.speech import EMBED_HOP, _mel, _unit_mean, _windows
    _, embeddings = _windows(_mel(audio), EMBED_HOP, numpy=True)
    return _unit_mean(embeddings)


def _campplus_segment(audio: np.ndarray) -> np.ndarray:
    from stages.footage.voice_campplus import embed
    return embed(audio)


def _campplus_query(audio: np.ndarray) -> np.ndarray:
    from stages.footage.campplus_numpy import embed
    return embed(audio[:QUERY_SECONDS * 16000])


EMBEDDERS = {
    "campplus": VoiceEmbedder("campplus", 192, _campplus_segment, _campplus_query),
    "resemblyzer": VoiceEmbedder("resemblyzer", 256, _resemblyzer_segment, _resemblyzer_query),
}


def voice_embedder(name: str = DEFAULT_VOICE_EMBEDDER) -> VoiceEmbedder:
    """The embedder called `name`; ConfigError naming the option for an unknown one."""
    if name not in EMBEDDERS:
        raise ConfigError("--voice-embedder", f"expected one of {', '.join(sorted(EMBEDDERS))}, got {name!r}",
                          "command line")
    return EMBEDDERS[name]
