"""probe: health checks that open, update and close helpdesk tickets by themselves."""

__version__ = "0.2.0"
