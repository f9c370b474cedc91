"""Tickets: what probe does with helpdesks once the engine has decided — rendering a ticket from
an incident's facts (render), triage evidence (triage), delivering each action exactly once and
watching open tickets (outbox), and the operator's `probe tickets` and `probe test-ticket`
(admin). The helpdesks themselves are probe.helpdesks."""
