"""The app layer: the Rack request cycle, protocol-neutral.  Never imports h11, h2 or a socket."""
