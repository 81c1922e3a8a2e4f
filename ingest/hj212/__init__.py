"""HJ 212 over TCP: framing, CRC, parsing, the factor-code map and the gateway server.

shared/reference/standards.md §1 holds the protocol facts; docs/hj212.md the integrator's view.
"""
