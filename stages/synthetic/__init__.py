"""The embedded mini-APES generator: faces, voices, soundtracks and the rendered videos."""
