"""What the tests share, so that no test module imports another.

Helpers:
  wait       `until` (and `until_blocking`): poll a condition with a deadline and a message
  ports      `free_port`, `closed_port`
  proc       PROBE, the installed console script; `module_command` for `python -m tests...`
  starved    `starved`: the `probe` command with no file descriptor left for a check's socket
  daemon     `ProbeProcess`: `probe run` as a subprocess; `Target`, the flaky HTTP target
  inloop     `Runner`: daemons in the test's own event loop
  helpdesk   `Helpdesk`: the local backend's tickets and notes, read from its tables
  configs    configuration variants from data (`merged`, `dumped`) or checked edits (`edited`)
  fixtures   `target`, `run`, `certs`: registered by tests/conftest.py, asked for by name

Peers, on loopback, that speak a protocol or a vendor's API:
  httpserver, tlsserver    aiohttp apps and raw TCP/TLS servers that misbehave on purpose
  dnsserver, rtpeer        dnsmasq, and a real Request Tracker (fixtures `dns_server`,
                           `rt_peer`, `rt_api`, registered by tests/conftest.py)
  fake_<helpdesk>          GitHub, Jira, Freshdesk, PagerDuty, ServiceNow, Zendesk
  desks                    every helpdesk backend with its peer (the fakes, an SMTP server, a
                           webhook receiver, RT, the state database), read back from the peer
  openapi                  GitHub's published API description, to check fake_github against
  hostile_helpdesk, hostile_certs, hostile_yaml   inputs made to break things
  labserver                the targets inside a network namespace (`python -m`)
  sites                    `topology`: a core network namespace (targets, helpdesks, served
                           by the test's loop) and site namespaces for agents (`SiteProbe`),
                           each site's uplink cut and healed with nftables
  voting                   `Voting`: agents of several sites that vote, on loopback or in sites
  certs                    a CA and the certificates it issues
"""
