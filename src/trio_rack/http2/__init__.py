"""HTTP/2 (h2): the second driver under the protocol-neutral request cycle."""
