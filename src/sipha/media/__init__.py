"""RTP media for voice apps: G.711 play, RFC 4733 DTMF receive, port allocation."""
