"""Connection I/O beneath the protocol drivers: TLS, the writer and deadlines, dispatch."""
