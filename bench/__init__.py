"""The benchmark of issue 6: probe's daemon side by side with blackbox_exporter, at scale, and
its time to ticket, against targets it starts on loopback. `python -m bench --help`."""
