"""The demo: an agent trying the classic moves, with and without blastwall."""
